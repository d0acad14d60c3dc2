"""Data parallelism: 4 simulated devices and 2 processes give one device's results; SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests import fake_data
from tests.test_train import tiny_config
from wtfree import layers, rules, sharding
from wtfree import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=256):
        yield


def _train(config, steps):
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    batches = trainer.train_batches(0)
    for _ in range(steps):
        state, _ = trainer.train_step(state, sharding.put_batch(next(batches), trainer.mesh))
    return trainer, jax.device_get(state)


@pytest.mark.parametrize("rule", ["bp", "fa", "ss", "kp"])
def test_four_devices_match_one(rule):
    assert len(jax.devices()) >= 4
    _, one = _train(tiny_config(rule, num_devices=1), 5)
    trainer, four = _train(tiny_config(rule, num_devices=4), 5)
    assert trainer.mesh.size == 4
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mirror_step_per_device_keeps_b_identical_and_averages_the_hebbian_updates():
    config = tiny_config("wm", num_devices=4, **{"mirror.batch_size": 4, "mirror.noise_std": 0.5})
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    before = jax.device_get(state)
    rng = jax.random.PRNGKey(3)
    after = trainer.mirror_step(state, rng)

    # Every device holds the same B.
    for leaf in jax.tree.leaves(after["feedback"]):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 4
        for s in shards[1:]:
            np.testing.assert_array_equal(s, shards[0])

    # The step is the mean over devices of each device's own Hebbian update.
    x = np.zeros((4, *trainer.ds.image_shape), np.float32)
    variables = {"params": before["params"], "feedback": before["feedback"]}
    per_device = []
    for d in range(4):
        _, sown = trainer.model.apply(
            variables,
            x,
            rngs={layers.MIRROR_RNG: jax.random.fold_in(rng, d)},
            mutable=[layers.MIRROR],
        )
        per_device.append(traverse_util.flatten_dict(sown[layers.MIRROR]))
    got = traverse_util.flatten_dict(jax.device_get(after["feedback"]))
    old = traverse_util.flatten_dict(before["feedback"])
    m = config.mirror
    # The input layer's B is never used, so it is not mirrored: it stays as it was.
    input_b = ("hidden_0", layers.FEEDBACK_KERNEL)
    assert set(per_device[0]) == set(old) - {input_b}
    np.testing.assert_array_equal(got[input_b], old[input_b])
    for path, b in old.items():
        if path not in per_device[0]:
            continue
        updates = [
            rules.apply_hebbian(
                b, h[path], learning_rate=m.learning_rate, decay=m.decay, noise_std=m.noise_std
            )
            for h in per_device
        ]
        np.testing.assert_allclose(got[path], np.mean(updates, axis=0), rtol=1e-5, atol=1e-7)
        assert not np.allclose(updates[0], updates[1])  # each device drew its own noise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(workdir, *extra):
    return [sys.executable, WORKER, f"--workdir={workdir}", *extra]


def _run(cmds, timeout=240):
    """Runs commands side by side; `timeout -k` because a hung JAX run ignores SIGTERM."""
    procs = [
        subprocess.Popen(
            ["timeout", "-k", "10", str(timeout), *cmd],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cmd in cmds
    ]
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_same(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("local_devices", [1, 2])
def test_two_processes_match_one_process_with_the_same_devices(local_devices, tmp_path):
    port = _free_port()
    args = ["--rule=kp", "--steps=6", f"--local_devices={local_devices}"]
    single = tmp_path / "single.npz"
    _run(
        [
            _worker(
                tmp_path / "one",
                *args[:2],
                f"--local_devices={2 * local_devices}",
                f"--out={single}",
            )
        ]
    )
    multi = tmp_path / "multi.npz"
    _run(
        [
            _worker(
                tmp_path / "two",
                *args,
                "--num_processes=2",
                f"--process_id={i}",
                f"--coordinator=127.0.0.1:{port}",
                f"--out={multi}",
                f"--prepare_log={tmp_path / 'prepare.log'}",
            )
            for i in range(2)
        ]
    )
    _assert_same(_load(single), _load(multi))
    # Process 0 prepared the data (a shared data dir) alone; process 1 waited for it. Every
    # Trainer prepares: the worker builds two, the train run's and the restoring one.
    events = (tmp_path / "prepare.log").read_text().splitlines()
    assert events[:4] == ["start 0", "end 0", "start 1", "end 1"], events


def test_sigterm_checkpoints_at_the_agreed_step_and_the_rerun_matches(tmp_path):
    steps = 3000
    args = ["--rule=wm", f"--steps={steps}", "--checkpoint_every=100000"]
    whole = tmp_path / "whole.npz"
    resumed = tmp_path / "resumed.npz"
    _run([_worker(tmp_path / "a", *args, f"--out={whole}")], timeout=400)

    workdir = tmp_path / "b"
    proc = subprocess.Popen(
        _worker(workdir, *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 100/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    preempted = [line for line in out.splitlines() if line.startswith("Preempted")]
    assert preempted, out[-3000:]
    saved_step = int(preempted[0].split("step ")[1].split(";")[0])
    assert 100 <= saved_step < steps
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [
        saved_step
    ]

    started = time.time()
    _run([_worker(workdir, *args, f"--out={resumed}")], timeout=400)
    assert time.time() - started < 400
    _assert_same(_load(whole), _load(resumed), rtol=0)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_the_rerun_matches(tmp_path):
    """wm across two processes: each device draws its own mirror noise (so the result equals
    one process with two devices), only process 0 logs, and a SIGTERM to process 1 alone makes
    both checkpoint at the same step and stop; the rerun then ends where it would have."""
    # Long enough that JAX's preemption notice (sent between the processes through the
    # coordination service) reaches both before the run ends, even on a loaded machine: with
    # 200 steps a loaded run once finished first.
    steps = 1000
    args = ["--rule=wm", f"--steps={steps}", "--checkpoint_every=100000"]
    single = tmp_path / "single.npz"
    _run([_worker(tmp_path / "one", *args, "--local_devices=2", f"--out={single}")])

    workdir = tmp_path / "two"
    port = _free_port()
    # The SIGTERM goes to `timeout`, which passes it on and kills the worker -k seconds later:
    # from the signal to its exit (checkpoint, restore, distributed shutdown) a worker took
    # 9.2-9.4 s at load 7, so -k 10 killed it under more load.
    multi = [
        ["timeout", "-k", "60", "300"]
        + _worker(
            workdir,
            *args,
            "--num_processes=2",
            f"--process_id={i}",
            f"--coordinator=127.0.0.1:{port}",
        )
        for i in range(2)
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in multi
    ]
    lines = []
    for line in procs[0].stdout:
        lines.append(line)
        if line.startswith("step 20/"):
            procs[1].send_signal(signal.SIGTERM)
            break
    outputs = ["".join(lines) + procs[0].communicate(timeout=120)[0]]
    outputs.append(procs[1].communicate(timeout=120)[0])
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    preempted = [line for line in outputs[0].splitlines() if line.startswith("Preempted")]
    assert preempted, outputs[0][-3000:]
    saved_step = int(preempted[0].split("step ")[1].split(";")[0])
    assert 20 <= saved_step < steps
    assert f"done at step {saved_step}" in outputs[1]  # process 1 stopped at the same step
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [
        saved_step
    ]

    resumed = tmp_path / "resumed.npz"
    port = _free_port()
    _run(
        [
            _worker(
                workdir,
                *args,
                "--num_processes=2",
                f"--process_id={i}",
                f"--coordinator=127.0.0.1:{port}",
                f"--out={resumed}",
            )
            for i in range(2)
        ]
    )
    _assert_same(_load(single), _load(resumed))
    # Only process 0 logged: every train step once per run, one events file per run.
    logged = [
        json.loads(line)["step"]
        for line in (workdir / "metrics.jsonl").open()
        if "train/loss" in line
    ]
    assert logged == sorted(set(logged)) and logged[-1] == steps
    assert len(os.listdir(workdir / "tensorboard")) == 2
