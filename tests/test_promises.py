"""What README promises and nothing else checks: brsf's fresh M, the eval mask, exact resume with
a full optimizer state, init_from, evaluate at a step, schedules, top-5, mirror.every."""

import math

import jax
import numpy as np
import pytest

from tests import fake_data
from tests.test_train import interrupt_at_step_6, tiny_config
from wtfree import checkpoints, logs, loop, metrics, optim, sharding, steps
from wtfree import trainer as trainer_lib


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=256):
        yield


def states(workdir, config):
    """Every checkpoint of a run: step -> state (host arrays)."""
    trainer = trainer_lib.Trainer(config)
    with checkpoints.make_manager(workdir, keep=100) as manager:
        return {
            s: jax.device_get(checkpoints.restore(manager, trainer.abstract_state, s))
            for s in manager.all_steps()
        }


def leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize("rule, fresh", [("brsf", True), ("fa", False)])
def test_brsf_draws_a_new_m_every_step(rule, fresh):
    # The same state and batch at two step numbers: brsf's update differs (a new random M),
    # fa's does not (its B is fixed).
    trainer = trainer_lib.Trainer(tiny_config(rule))
    batch = sharding.put_batch(next(trainer.train_batches(0)), trainer.mesh)
    state = jax.device_get(trainer.fresh_state())
    after = []
    for step in (0, 1):
        s = jax.device_put({**state, "step": np.int32(step)}, sharding.replicated(trainer.mesh))
        after.append(jax.device_get(trainer.train_step(s, batch)[0]["params"]))
    assert leaves_equal(*after) != fresh


def test_eval_mask_ignores_the_padding_of_the_last_batch():
    config = tiny_config("fa", eval_batch_size=96)  # 256 test examples: 96 + 96 + 64 (+ 32 pad)
    trainer = trainer_lib.Trainer(config)
    assert trainer.ds.num_examples("test") % 96
    state = trainer.fresh_state()
    got = trainer.evaluate(state)
    images, labels = trainer.ds.arrays("test")
    variables = {k: state[k] for k in ("params", "feedback")}
    logits = np.asarray(trainer.model.apply(variables, images.astype(np.float32) / 255))
    loss = metrics.get_loss(config.loss)(logits, labels)
    assert got["test/accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-7)
    assert got["test/loss"] == pytest.approx(float(np.mean(loss)), rel=1e-5)


def test_top5_accuracy_against_numpy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(64, 12)), rng.integers(0, 12, 64)
    rank = (logits > logits[np.arange(64), labels][:, None]).sum(-1)  # 0: the top logit
    np.testing.assert_array_equal(metrics.correct(logits, labels, 5), (rank < 5).astype(float))
    np.testing.assert_array_equal(metrics.correct(logits, labels, 1), (rank < 1).astype(float))
    assert 0 < (rank < 1).mean() < (rank < 5).mean() < 1  # the data separate the two
    # eval_step sums the masked top-5 hits.
    step = steps.make_eval_step(
        type("M", (), {"apply": lambda self, v, x, train, rngs, mutable: x})(),
        "softmax_xent",
        top_k=(1, 5),
    )
    mask = (np.arange(64) < 50).astype(np.float32)
    state = {"params": {}, "feedback": {}, "batch_stats": {}}
    sums = step(state, {"image": logits, "label": labels, "mask": mask})
    assert float(sums["accuracy_top5"]) == ((rank < 5) * mask).sum()
    assert float(sums["count"]) == 50


def test_schedules_against_closed_forms():
    lr, total, warm = 0.4, 100, 10
    cosine = optim.make_schedule("cosine", lr, total_steps=total, warmup_steps=warm)
    for t in (0, 5, 10, 40, 77, 100):
        expected = (
            lr * t / warm if t < warm else lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / 90))
        )
        assert float(cosine(t)) == pytest.approx(expected, rel=1e-5, abs=1e-7), t
    step = optim.make_schedule("step", lr, total_steps=total, boundaries=(0.3, 0.6, 0.8))
    for t, k in ((0, 0), (29, 0), (30, 1), (59, 1), (60, 2), (80, 3), (99, 3)):
        assert float(step(t)) == pytest.approx(lr * 0.1**k, rel=1e-5), t
    warm_step = optim.make_schedule(
        "step", lr, total_steps=total, warmup_steps=warm, boundaries=(0.5,)
    )
    for t, expected in ((0, 0.0), (5, lr / 2), (10, lr), (49, lr), (50, lr / 10)):
        assert float(warm_step(t)) == pytest.approx(expected, rel=1e-5, abs=1e-7), t
    assert float(optim.make_schedule("constant", lr, total_steps=total)(77)) == lr


def test_exact_resume_with_momentum_weight_decay_and_a_schedule(tmp_path, monkeypatch):
    config = tiny_config(
        "kp",
        num_train_steps=12,
        checkpoint_every_steps=4,
        log_every_steps=2,
        **{
            "optimizer.momentum": 0.9,
            "optimizer.nesterov": True,
            "optimizer.weight_decay": 1e-3,
            "optimizer.schedule": "cosine",
            "optimizer.warmup_epochs": 0.5,  # 4 of the 8 steps an epoch
        },
    )
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    loop.train_and_evaluate(config, str(whole))
    interrupt_at_step_6(monkeypatch, config, str(broken))
    loop.train_and_evaluate(config, str(broken))
    a, b = states(whole, config)[12], states(broken, config)[12]
    trace = [x for x in jax.tree.leaves(a["opt_state"]) if np.ndim(x) > 0]
    assert trace and any(np.abs(x).max() > 0 for x in trace)  # momentum is really there
    assert leaves_equal(a, b)
    assert logs.read_metrics(str(broken))[-1]["step"] == 12


def test_init_from_starts_from_another_runs_checkpoint_at_step_0(tmp_path):
    source = tiny_config("fa", num_train_steps=6)
    loop.train_and_evaluate(source, str(tmp_path / "a"))
    last = states(tmp_path / "a", source)[6]
    config = tiny_config("fa", num_train_steps=3, init_from=str(tmp_path / "a"))
    loop.train_and_evaluate(config, str(tmp_path / "b"))
    first = logs.read_metrics(str(tmp_path / "b"))[0]
    assert first["step"] == 0
    # The output layer's B is the one measured (the input layer's is never used).
    w, b = last["params"]["output"]["kernel"], last["feedback"]["output"]["feedback_kernel"]
    assert first["align/weight_angle/output"] == pytest.approx(float(metrics.angle(w, b)), 1e-4)
    fresh = trainer_lib.Trainer(config).fresh_state()
    assert not np.allclose(w, fresh["params"]["output"]["kernel"])
    assert sorted(states(tmp_path / "b", config)) == [3]  # its own steps, from 0


def test_evaluate_at_a_step_reproduces_that_steps_logged_test_metrics(tmp_path):
    config = tiny_config("kp", eval_every_steps=3)
    loop.train_and_evaluate(config, str(tmp_path))
    logged = [line for line in logs.read_metrics(str(tmp_path)) if "test/accuracy" in line]
    at_3 = next(line for line in logged if line["step"] == 3)
    result = loop.evaluate_checkpoint(str(tmp_path), 3)
    assert result["step"] == 3
    assert result["test/loss"] == pytest.approx(at_3["test/loss"], rel=1e-6)
    assert result["test/loss"] != pytest.approx(logged[-1]["test/loss"], rel=1e-6)


def test_mirror_every_2_mirrors_after_every_second_step(tmp_path):
    config = tiny_config(
        "wm",
        num_train_steps=4,
        checkpoint_every_steps=1,
        keep_checkpoints=10,
        **{"mirror.every": 2, "mirror.pretrain_batches": 0},
    )
    loop.train_and_evaluate(config, str(tmp_path))
    saved = states(tmp_path, config)
    b0 = jax.device_get(trainer_lib.Trainer(config).fresh_state()["feedback"])
    b = [b0] + [saved[s]["feedback"] for s in (1, 2, 3, 4)]
    assert [leaves_equal(b[i], b[i + 1]) for i in range(4)] == [True, False, True, False]
