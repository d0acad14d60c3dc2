"""The command lines as a user meets them: exit codes and one-line messages, SIGKILL and resume.

Each test starts `python train.py` (or `-m wtfree.evaluate`) on small IDX files written here,
so no TFDS data and no network are needed.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_data import write_idx
from tests.test_train import ROOT
from wtfree import checkpoints, train_lib, workdir

ENV = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
}


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 256), ("t10k", 100)):
        labels = rng.integers(0, 10, n)
        # Learnable: each class lights its own rows.
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 3] += 150
        write_idx(path / f"{prefix}-images-idx3-ubyte", images, False)
        write_idx(path / f"{prefix}-labels-idx1-ubyte", labels, False)
    return str(path)


def tiny_flags(idx_dir, **overrides):
    values = {
        "idx_dir": idx_dir,
        "model_kwargs.widths": "(16,)",
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_train_steps": 6,
        "log_every_steps": 3,
        "checkpoint_every_steps": 3,
        **overrides,
    }
    return [f"--config.{k}={v}" for k, v in values.items()]


def run(args, timeout=240):
    return subprocess.run(
        ["timeout", "-k", "10", str(timeout), sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )


def train(workdir_path, idx_dir, rule="kp", **overrides):
    return run(
        [
            "train.py",
            f"--config=configs/mnist_mlp.py:rule={rule}",
            f"--workdir={workdir_path}",
            *tiny_flags(idx_dir, **overrides),
        ]
    )


def one_error_line(proc, code):
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_diverged_run_exits_3_with_one_line(tmp_path, idx_dir):
    proc = train(tmp_path, idx_dir, "bp", **{"optimizer.learning_rate": 1e38})
    line = one_error_line(proc, 3)
    assert "train.py: error: train/loss is" in line and " at step " in line
    assert "last good checkpoint" in line or "no checkpoint was saved" in line


def test_changed_experiment_and_unreadable_step_exit_2(tmp_path, idx_dir):
    assert train(tmp_path, idx_dir).returncode == 0
    line = one_error_line(train(tmp_path, idx_dir, "fa"), 2)
    assert "holds another experiment: changed " in line and "rule ('kp' -> 'fa')" in line

    ckpt = tmp_path / "checkpoints" / "3"
    for name in os.listdir(ckpt / "default"):  # the array data, gone
        if name.startswith("ocdbt"):
            for root, _, files in os.walk(ckpt / "default" / name):
                for f in files:
                    os.truncate(os.path.join(root, f), 3)
    proc = run(["-m", "wtfree.evaluate", f"--workdir={tmp_path}", "--step=3"])
    assert "checkpoint at step 3" in one_error_line(proc, 2)
    proc = run(["-m", "wtfree.evaluate", f"--workdir={tmp_path}", "--step=6"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["step"] == 6


def final_state(path, idx_dir, steps):
    config = json.loads((path / "config.json").read_text())
    assert config["num_train_steps"] == steps
    import ml_collections

    trainer = train_lib.Trainer(ml_collections.ConfigDict(config))
    with checkpoints.make_manager(path) as manager:
        assert manager.latest_step() == steps
        return jax.device_get(checkpoints.restore(manager, trainer.abstract_state))


def test_sigkill_at_any_moment_resumes_and_ends_where_an_uninterrupted_run_does(tmp_path, idx_dir):
    steps = 120
    flags = dict(num_train_steps=steps, checkpoint_every_steps=2, log_every_steps=10)
    flags.update({"mirror.pretrain_batches": 2, "mirror.batch_size": 8})
    assert train(tmp_path / "whole", idx_dir, "wm", **flags).returncode == 0
    broken = tmp_path / "broken"
    command = [
        sys.executable,
        "train.py",
        "--config=configs/mnist_mlp.py:rule=wm",
        f"--workdir={broken}",
        *tiny_flags(idx_dir, **flags),
    ]
    for kill_at in ("step 50/",):
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
        )
        for line in proc.stdout:
            if line.startswith(kill_at):
                proc.send_signal(signal.SIGKILL)  # saves every 2 steps: likely mid-write
                break
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert (broken / workdir.LOCK).exists()  # left behind by the killed run
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = final_state(tmp_path / "whole", idx_dir, steps), final_state(broken, idx_dir, steps)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
