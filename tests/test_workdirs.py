"""Workdirs on cloud storage, damaged checkpoints, changed configs, a second run, a NaN."""

import json
import logging
import os
import sys

import jax
import numpy as np
import pytest

from tests import fake_data
from tests.fake_gcs import fake_gcs
from tests.test_train import tiny_config
from wtfree import checkpoints, errors, logs, loop, workdir
from wtfree import trainer as trainer_lib


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=256):
        yield


def final_state(path, config):
    trainer = trainer_lib.Trainer(config)
    with checkpoints.make_manager(path) as manager:
        return jax.device_get(checkpoints.restore(manager, trainer.abstract_state))


def assert_same_state(a, b):
    assert int(a["step"]) == int(b["step"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_gcs_workdir_trains_resumes_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URL made local would land in ./gs:/...
    root = tmp_path / "bucket_root"
    config = tiny_config("kp", num_train_steps=6, checkpoint_every_steps=3)
    loop.train_and_evaluate(config, str(tmp_path / "local"))
    with fake_gcs(str(root)):
        url = "gs://bucket/run"
        # Two runs: 3 steps, then (a longer run is an allowed change) on to 6.
        loop.train_and_evaluate(tiny_config("kp", num_train_steps=3), url)
        loop.train_and_evaluate(config, url)
        assert_same_state(final_state(url, config), final_state(str(tmp_path / "local"), config))
        lines = logs.read_metrics(url)
        assert [line["step"] for line in lines if "train/loss" in line] == [3, 6]
        result = loop.evaluate_checkpoint(url)
    assert not os.path.exists(tmp_path / "gs:")
    run = root / "bucket" / "run"
    assert json.loads((run / "eval_6.json").read_text()) == result
    assert json.loads((run / "config.json").read_text())["num_train_steps"] == 6
    assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"]
    events = os.listdir(run / "tensorboard")
    assert len(events) == 2 and all(e.startswith("events.out.tfevents") for e in events)
    assert all((run / "tensorboard" / e).stat().st_size > 0 for e in events)
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [c["changes"] for c in changes] == [{"num_train_steps": [3, 6]}]


def damage(checkpoint_dir):
    """Truncates the largest file of a checkpoint to half, as a host dying mid-write would."""
    files = [os.path.join(r, f) for r, _, fs in os.walk(checkpoint_dir) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def test_unreadable_checkpoint_is_set_aside_and_the_run_ends_where_it_would(tmp_path, capsys):
    config = tiny_config("kp", num_train_steps=9, checkpoint_every_steps=3, log_every_steps=3)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    loop.train_and_evaluate(config, str(whole))
    loop.train_and_evaluate(config, str(broken))
    damage(broken / "checkpoints" / "9")
    # A save killed before orbax renamed its temporary directory: never a step.
    partial = broken / "checkpoints" / "12.orbax-checkpoint-tmp-1234567"
    partial.mkdir()
    (partial / "_CHECKPOINT_METADATA").write_text("{")
    capsys.readouterr()

    loop.train_and_evaluate(config, str(broken))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "checkpoint at step 9 is unreadable (" in warnings[0]
    assert str(broken / "unreadable_checkpoints" / "9") in warnings[0]
    assert (broken / "unreadable_checkpoints" / "9").is_dir()  # set aside, not deleted
    assert_same_state(final_state(str(broken), config), final_state(str(whole), config))


def test_no_readable_checkpoint_stops_with_one_line(tmp_path):
    config = tiny_config("kp", num_train_steps=6, checkpoint_every_steps=3, keep_checkpoints=2)
    loop.train_and_evaluate(config, str(tmp_path))
    for step in ("3", "6"):
        damage(tmp_path / "checkpoints" / step)
    with pytest.raises(errors.RunError, match=r"no readable checkpoint .* steps \[6, 3\]"):
        loop.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "unreadable_checkpoints")) == ["3", "6"]


def test_a_checkpoint_of_another_state_layout_is_refused_and_left_in_place(tmp_path):
    """Another version of wtfree wrote it (seen: the optimizer state gained a leaf): that is
    no damage, so no checkpoint is set aside, and the one line names the differing leaves."""
    config = tiny_config("kp", num_train_steps=6, checkpoint_every_steps=3)
    loop.train_and_evaluate(config, str(tmp_path))
    trainer = trainer_lib.Trainer(config)
    grown = {**trainer.abstract_state, "extra": jax.ShapeDtypeStruct((), np.int32)}
    shrunk = {k: v for k, v in trainer.abstract_state.items() if k != "rng"}
    for state, only in ((grown, "only in the state: extra)"), (shrunk, "checkpoint: rng;")):
        with checkpoints.make_manager(tmp_path) as manager:
            with pytest.raises(errors.RunError, match="holds another state layout") as info:
                checkpoints.restore_newest_readable(manager, state)
        assert only in str(info.value) and "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    assert not (tmp_path / checkpoints.UNREADABLE).exists()
    # An evaluation reads the model's variables alone, whatever the rest's layout.
    with checkpoints.make_manager(tmp_path) as manager:
        parts = checkpoints.restore_parts(manager, grown, ("params", "step"), 3)
        whole = checkpoints.restore(manager, trainer.abstract_state, 3)
    assert sorted(parts) == ["params", "step"]
    assert_same_state(parts, {"params": whole["params"], "step": whole["step"]})
    assert loop.evaluate_checkpoint(str(tmp_path), 6)["step"] == 6


def test_evaluate_an_unreadable_step_is_one_line(tmp_path):
    config = tiny_config("kp", num_train_steps=6, checkpoint_every_steps=3)
    loop.train_and_evaluate(config, str(tmp_path))
    damage(tmp_path / "checkpoints" / "3")
    with pytest.raises(errors.RunError, match="checkpoint at step 3 .* is unreadable"):
        loop.evaluate_checkpoint(str(tmp_path), 3)
    with pytest.raises(errors.RunError, match=r"no checkpoint at step 4 .* have \[3, 6\]"):
        loop.evaluate_checkpoint(str(tmp_path), 4)
    assert loop.evaluate_checkpoint(str(tmp_path), 6)["step"] == 6


def test_a_changed_experiment_stops_before_touching_the_workdir(tmp_path):
    loop.train_and_evaluate(tiny_config("kp"), str(tmp_path))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = tiny_config("fa", **{"model_kwargs.widths": (8,), "num_train_steps": 9})
    with pytest.raises(errors.RunError) as info:
        loop.train_and_evaluate(changed, str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "model_kwargs.widths ([16] -> [8])" in message and "rule ('kp' -> 'fa')" in message
    assert "num_train_steps" not in message  # allowed to change
    assert "use a new workdir, or --config.init_from=" in message
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_allowed_changes_are_exactly_the_documented_ones():
    old = workdir.as_json(tiny_config("kp"))
    new = workdir.as_json(
        tiny_config("kp", num_train_steps=9, eval_steps=1, **{"optimizer.momentum": 0.9})
    )
    assert workdir.changed_keys(old, new) == {
        "eval_steps": (0, 1),
        "num_train_steps": (6, 9),
        "optimizer.momentum": (0.0, 0.9),
    }
    assert "optimizer.momentum" not in workdir.MAY_CHANGE
    assert {"num_train_steps", "eval_steps"} <= workdir.MAY_CHANGE


def test_a_second_run_on_a_workdir_in_use_stops(tmp_path):
    first = workdir.Lock(tmp_path, heartbeat=0.05)
    first.acquire()
    with pytest.raises(errors.RunError, match="is in use by another run"):
        loop.train_and_evaluate(tiny_config("kp"), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
    # The first run's heartbeat sees another run take the lock over (its holder died).
    stolen = workdir.Lock(tmp_path, stale_after=0.0)
    stolen.acquire()
    import time

    time.sleep(0.3)
    assert first.lost
    first.release()
    stolen.release()
    assert not (tmp_path / "lock").exists()


def test_a_dead_holder_does_not_keep_the_workdir(tmp_path):
    (tmp_path / "lock").write_text(
        json.dumps({"token": "x", "host": os.uname().nodename, "pid": 2**22 + 7, "time": 1e12})
    )
    loop.train_and_evaluate(tiny_config("kp"), str(tmp_path))
    assert not (tmp_path / "lock").exists()


def test_a_diverged_run_stops_and_never_saves_after_the_first_nonfinite_loss(tmp_path):
    config = tiny_config(
        "bp",
        num_train_steps=12,
        checkpoint_every_steps=1,
        log_every_steps=100,
        **{"optimizer.learning_rate": 1e38},
    )
    with pytest.raises(errors.Diverged) as info:
        loop.train_and_evaluate(config, str(tmp_path))
    message = str(info.value)
    step = int(message.split(" at step ")[1].split(";")[0])
    with checkpoints.make_manager(tmp_path) as manager:
        saved = manager.all_steps()
    assert max(saved) == step - 1, (message, saved)
    assert f"last good checkpoint: step {step - 1}" in message
    assert message.startswith(("train/loss is nan", "train/loss is inf"))


def _failed_in(function_name: str):
    def fail():
        raise ValueError("OUT_OF_RANGE")

    fail.__code__ = fail.__code__.replace(co_name=function_name)
    try:
        fail()
    except ValueError:
        return sys.exc_info()


def test_only_asyncio_reports_of_abandoned_orbax_reads_are_dropped():
    def record(message, exc_info):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), exc_info)

    lost = "Future exception was never retrieved\nfuture: <Future finished exception=...>"
    abandoned = _failed_in("_read_array_index_and_device_put")
    assert not checkpoints._is_not_an_abandoned_read(record(lost, abandoned))
    # Anything else asyncio reports still gets through: another failure, another message.
    assert checkpoints._is_not_an_abandoned_read(record(lost, _failed_in("train_step")))
    assert checkpoints._is_not_an_abandoned_read(record("Unclosed client session", abandoned))
    assert checkpoints._is_not_an_abandoned_read(record(lost, None))


@pytest.mark.parametrize("key, value", [("seed", 1), ("batch_size", 64)])
def test_a_changed_seed_or_batch_size_is_another_experiment(tmp_path, key, value):
    """The seed sets the initial weights, every B and the data order: a resume with another
    seed would continue a run it did not start."""
    workdir.record_config(tiny_config("kp"), tmp_path, {})
    with pytest.raises(errors.RunError, match=rf"changed {key} \(\S+ -> {value}\)"):
        workdir.check_config(tiny_config("kp", **{key: value}), tmp_path)
    assert workdir.check_config(tiny_config("kp", num_train_steps=9), tmp_path) == {
        "num_train_steps": (6, 9)
    }


def test_a_checkpoint_with_bs_old_leaf_name_resumes(tmp_path):
    """wtfree's own layers named B "kernel", as W, until it became "feedback_kernel" (nnx.bridge
    needs distinct names). A checkpoint saved under the old name, the optimizer's momentum of B
    included, is read into the new layout leaf for leaf, evaluated, and the run goes on."""
    config = tiny_config("kp", num_train_steps=3, checkpoint_every_steps=3)
    config.optimizer.momentum = 0.9  # B's momentum lives in the optimizer state, under its name
    loop.train_and_evaluate(config, str(tmp_path))
    trainer = trainer_lib.Trainer(config)
    saved = final_state(tmp_path, config)
    old = checkpoints._old_feedback_names(saved)
    paths = checkpoints._leaf_paths(old)
    assert "feedback/output/kernel" in paths and "feedback/output/feedback_kernel" not in paths
    assert any(p.startswith("opt_state/") and p.endswith("feedback/output/kernel") for p in paths)
    with checkpoints.make_manager(tmp_path) as manager:
        manager.delete(3)
        checkpoints.save(manager, old, force=True)
        manager.wait_until_finished()
    with checkpoints.make_manager(tmp_path) as manager:
        assert "feedback/output/kernel" in checkpoints._saved_paths(checkpoints._item(manager, 3))
        assert_same_state(checkpoints.restore(manager, trainer.abstract_state), saved)
        parts = checkpoints.restore_parts(manager, trainer.abstract_state, ("feedback", "step"))
    assert_same_state(parts, {"feedback": saved["feedback"], "step": saved["step"]})
    assert loop.evaluate_checkpoint(str(tmp_path))["step"] == 3
    config.num_train_steps = 6
    loop.train_and_evaluate(config, str(tmp_path))
    assert int(final_state(tmp_path, config)["step"]) == 6


def test_a_run_resumed_within_the_same_second_keeps_the_earlier_runs_events(tmp_path, monkeypatch):
    """tensorboardX names its event file by the second and the host; a resume in the same
    second (a fast run, a crash loop) must not write, or on an object store replace, the file
    of the run before it."""
    import tensorboardX.event_file_writer as event_file_writer

    monkeypatch.setattr(event_file_writer.time, "time", lambda: 1796396674.5)
    first = logs.MetricWriter(tmp_path)
    first.write(3, 0.5, {"train/loss": 1.0})
    first.close()
    (written_first,) = os.listdir(tmp_path / "tensorboard")
    second = logs.MetricWriter(tmp_path, resume_step=3)
    second.write(6, 1.0, {"train/loss": 0.5})
    second.close()
    events = sorted(os.listdir(tmp_path / "tensorboard"))
    assert len(events) == 2 and all(e.startswith("events.out.tfevents.1796396674.") for e in events)
    assert events[0] == written_first  # TensorBoard reads them in name order: the run order
