"""Faults a run survives: a kill after the last checkpoint, a torn log line, a full disk, a
workdir that is a file. Each ends in one line (or nothing) and the rerun ends where an
uninterrupted run ends."""

import errno
import json
import os
import struct
import subprocess

import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import event_pb2

from tests import fake_data
from tests.test_cli import run, tiny_flags
from tests.test_data import write_idx
from tests.test_train import tiny_config
from tests.test_workdirs import assert_same_state, final_state
from wtfree import checkpoints, errors, logs, loop


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=256):
        yield


def config(**overrides):
    values = dict(
        num_train_steps=8, log_every_steps=2, checkpoint_every_steps=4, keep_checkpoints=5
    )
    return tiny_config("fa", **{**values, **overrides})


def tensorboard_scalars(workdir) -> list[tuple[str, int]]:
    """(tag, step) of every scalar TensorBoard shows: events in file order, where a run's
    SessionLog START at step P hides the earlier events at steps >= P (``purge_step``)."""
    shown = []
    directory = os.path.join(workdir, "tensorboard")
    for name in sorted(os.listdir(directory)):
        raw = open(os.path.join(directory, name), "rb").read()
        at = 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at : at + 8])
            event = event_pb2.Event.FromString(raw[at + 12 : at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                shown = [(tag, step) for tag, step in shown if step < event.step]
            for value in event.summary.value:
                shown.append((value.tag, event.step))
    return shown


def test_a_kill_after_the_last_checkpoint_and_a_torn_line_log_every_step_once(tmp_path):
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    loop.train_and_evaluate(config(), whole)
    # The same run killed while writing the line after step 8's, before step 8's checkpoint
    # landed: steps 6 and 8 are logged, the newest checkpoint is step 4's.
    loop.train_and_evaluate(config(), resumed)
    (tmp_path / "resumed" / "checkpoints" / "8").rename(tmp_path / "step8_gone")
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
        f.write('{"step": 9, "epoch": 1.1, "train/lo')
    with pytest.raises(ValueError):  # what wtfree.plot met on such a file before
        [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]

    loop.train_and_evaluate(config(), resumed)

    lines = open(os.path.join(resumed, "metrics.jsonl")).read().splitlines()
    assert [json.loads(line) for line in lines] == logs.read_metrics(whole)
    steps = [json.loads(line)["step"] for line in lines if "train/loss" in line]
    assert steps == [2, 4, 6, 8]
    shown = tensorboard_scalars(resumed)
    assert len(shown) == len(set(shown)) and sorted(shown) == sorted(tensorboard_scalars(whole))
    assert_same_state(final_state(resumed, config()), final_state(whole, config()))


def test_a_torn_line_alone_is_dropped_and_read_metrics_skips_it(tmp_path):
    workdir = str(tmp_path)
    loop.train_and_evaluate(config(num_train_steps=4), workdir)
    before = logs.read_metrics(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "ep')
    assert logs.read_metrics(workdir) == before  # the torn last line is not a record
    loop.train_and_evaluate(config(num_train_steps=6), workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
    assert records[: len(before)] == before


def disk_full_at(step, monkeypatch):
    """Orbax's save of ``step`` fails as TensorStore reports ENOSPC, after leaving its partial
    write (``<step>.orbax-checkpoint-tmp``), as on a full disk."""
    original = ocp.CheckpointManager.save

    def save(self, at, *args, **kwargs):
        if at == step:
            partial = os.path.join(str(self.directory), f"{at}.orbax-checkpoint-tmp")
            os.makedirs(os.path.join(partial, "default"))
            open(os.path.join(partial, "default", "d"), "wb").write(b"\0" * 100)
            raise ValueError(
                f'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database at local file '
                f'"{partial}": Failed to write 5930 bytes to file 18: No space left on device '
                "[os_error_code='28']"
            )
        return original(self, at, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_a_full_disk_is_one_line_and_the_rerun_resumes_from_the_last_good_one(
    tmp_path, monkeypatch
):
    whole, full = str(tmp_path / "whole"), str(tmp_path / "full")
    loop.train_and_evaluate(config(), whole)
    with monkeypatch.context() as patch:
        disk_full_at(8, patch)
        with pytest.raises(errors.StorageFull) as info:
            loop.train_and_evaluate(config(), full)
    message = str(info.value)
    assert info.value.exit_code == 4 and "\n" not in message
    assert (
        "the checkpoint at step 8 in" in message and "the last good checkpoint is step 4" in message
    )
    assert "needs about" in message and "bytes" in message and "free" in message
    assert sorted(os.listdir(os.path.join(full, "checkpoints"))) == ["4"]  # partial removed
    loop.train_and_evaluate(config(), full)  # space freed
    assert_same_state(final_state(full, config()), final_state(whole, config()))
    assert logs.read_metrics(full) == logs.read_metrics(whole)


def test_is_disk_full_reads_both_spellings():
    assert checkpoints.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "disk")
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as wrapped:
        assert checkpoints.is_disk_full(wrapped)
    assert not checkpoints.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))
    assert not checkpoints.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    for workdir in (path, path / "run"):
        with pytest.raises(errors.RunError, match="is a file, or lies under one; allowed: a dir"):
            loop.train_and_evaluate(config(), str(workdir))
    assert path.read_text() == "mine"


def _mount_tmpfs(path, size) -> bool:
    path.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "400k"):
        pytest.skip("mounting a tmpfs needs root (the injected ENOSPC test covers the logic)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_on_the_command_line(small_disk, tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 256), ("t10k", 64)):
        write_idx(idx / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), False)
        write_idx(idx / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), False)
    workdir = small_disk / "run"
    args = ["train.py", "--config=configs/mnist_mlp.py", f"--workdir={workdir}"]
    flags = tiny_flags(str(idx), num_train_steps=40, log_every_steps=4, checkpoint_every_steps=4)
    proc = run(args + flags)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "no space left on device: the checkpoint at step" in proc.stderr
    left = os.listdir(workdir / "checkpoints")
    assert left and all(name.isdigit() for name in left)  # no partial write
    good = max(int(name) for name in left)
    assert f"the last good checkpoint is step {good}" in proc.stderr
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    proc = run(args + flags)  # space freed: resumes from the last good checkpoint
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    logged = [(r["step"], key) for r in records for key in r if key not in ("step", "epoch")]
    assert len(logged) == len(set(logged)) and max(step for step, _ in logged) == 40
