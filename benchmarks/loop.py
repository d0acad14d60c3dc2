r"""The train loop against hand-written JAX: seed MLP, bp, real MNIST in memory, on CPU.

    .venv/bin/python benchmarks/loop.py                  # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/loop.py --repeats=7 --steps_per_dispatch=1

Five runs, each timed once per repeat, interleaved in a fresh random order every repeat; every
ratio is the median over repeats of the two runs' times of the same repeat (``_timing``):

- ``loop``: 468 train steps (an epoch of batch 128) of wtfree's own train loop code path,
  ``wtfree.dispatch.train_chunks``, on the real MNIST batches of ``Trainer.train_batches``: the
  batches stacked and put one call ahead, ``steps_per_dispatch`` steps per jitted call, the NaN
  watch in the scan, two calls in flight. No log, evaluation or checkpoint falls in the window
  (it starts and ends at chunk ends, blocked on the state; times are scaled to 468 steps).
- ``scan``: the same seed-MLP step written here in plain JAX (784-500-10 sigmoid, softmax
  cross-entropy, SGD 0.2, the loss and accuracy returned per step), one ``lax.scan`` over one
  epoch of batches already on the device: one call an epoch, no input pipeline.
- ``scan u8``: the same, over the epoch's uint8 batches (as the loop puts them), each
  normalized inside the step by ``Dataset.normalize`` as the loop's step does: the reference
  for the same input.
- ``matmuls``: bp's five matmuls a step alone, at the same shapes (forward 128x784x500 and
  128x500x10; backward h^T g, g W2^T, x^T dh; the input layer sends no error down), one
  ``lax.scan`` over the same device-resident epoch, each step's weight gradients taking the
  weights' place so that nothing is hoisted or dropped.
- ``epoch``: a real ``wtfree.loop.train_and_evaluate`` run of mnist_mlp (bp, defaults: logs with
  alignment measurements every 100 steps, evaluation on the 10,000 test images at every epoch's
  end, a checkpoint every 1000 steps) for 3 epochs in a fresh workdir; the times between the
  evaluation lines written at the ends of epochs 1 and 2 (epoch 2: steps, logs, measurements,
  its evaluation) and of epochs 2 and 3 (epoch 3 also holds step 1000's checkpoint).

Targets (issue 11), on wall time: loop / scan <= 1.05 (printed against both references);
loop / matmuls <= 1.3; epoch / loop <= 1.15. The timings are of a shared 2-core machine: the
load average is printed before and after, and beside each wall time the process's CPU time (all
its threads), which other jobs inflate far less: the wall-time ratios mean something on a quiet
machine only.
"""

import argparse
import contextlib
import io
import tempfile
import time

import _timing
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from wtfree import dispatch, logs
from wtfree import loop as loop_lib
from wtfree import trainer as trainer_lib

STEPS_PER_EPOCH = 60000 // 128
LEARNING_RATE = 0.2
TARGETS = {
    "loop / scan": 1.05,
    "loop / scan u8": 1.05,
    "loop / matmuls": 1.3,
    "epoch 2 / loop": 1.15,
}


def bp_config(steps_per_dispatch: int, **overrides):
    config = _timing.load_config("mnist_mlp", "rule=bp")
    config.steps_per_dispatch = steps_per_dispatch
    for key, value in overrides.items():
        config[key] = value
    return config


class LoopRun:
    """Consumes ``dispatch.train_chunks`` ``steps`` steps at a time (to the next chunk end);
    returns the seconds, scaled to exactly ``steps``. ``batches``: default the trainer's own."""

    def __init__(
        self, trainer: trainer_lib.Trainer, batches=None, state=None, steps=STEPS_PER_EPOCH
    ):
        batches = trainer.train_batches(0, raw=True) if batches is None else batches
        first = next(batches)
        self.k = trainer.steps_per_dispatch(first)
        state = trainer.fresh_state() if state is None else state
        self.chunks = dispatch.train_chunks(trainer, state, batches, 0, 10**9, self.k, first)
        self.step, self.state, self.steps = 0, None, steps
        self.cpu: list[float] = []

    def __call__(self) -> float:
        steps = self.steps
        jax.block_until_ready(self.state)
        start_step, start, cpu = self.step, time.perf_counter(), time.process_time()
        for step, state, *_ in self.chunks:
            self.step, self.state = step, state
            if step - start_step >= steps:
                break
        jax.block_until_ready(self.state)
        scale = steps / (self.step - start_step)
        self.cpu.append((time.process_time() - cpu) * scale)
        return (time.perf_counter() - start) * scale


def device_epoch(trainer: trainer_lib.Trainer, raw: bool = False) -> dict[str, jax.Array]:
    """One epoch of real batches, stacked [468, 128, ...], on the device (``raw``: uint8)."""
    batches = trainer.train_batches(0, raw=raw)
    epoch = [next(batches) for _ in range(STEPS_PER_EPOCH)]
    return jax.device_put({k: np.stack([b[k] for b in epoch]) for k in epoch[0]})


def init_params(rng) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(rng)
    return {
        "w1": jax.random.normal(k1, (784, 500)) / np.sqrt(1284),
        "b1": jnp.zeros(500),
        "w2": jax.random.normal(k2, (500, 10)) / np.sqrt(510),
        "b2": jnp.zeros(10),
    }


def reference_step(params, batch):
    """The seed MLP's bp step in plain JAX."""
    x = batch["image"].reshape(batch["image"].shape[0], -1)

    def loss_fn(p):
        h = jax.nn.sigmoid(x @ p["w1"] + p["b1"])
        logits = h @ p["w2"] + p["b2"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return params, {"loss": loss, "accuracy": accuracy}


def matmul_step(weights, batch):
    """bp's matmuls alone; the gradients replace the weights (same shapes)."""
    w1, w2 = weights
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    h = x @ w1
    g = h @ w2
    dw2 = h.T @ g
    dh = g @ w2.T
    dw1 = x.T @ dh
    return (dw1, dw2), None


class ScanRun:
    """``lax.scan(step)`` over the device-resident epoch: one call; returns the seconds."""

    def __init__(self, step, carry, epoch):
        self.run = jax.jit(lambda c, e: lax.scan(step, c, e), donate_argnums=0)
        self.carry, self.epoch = carry, epoch
        self.cpu: list[float] = []
        self()  # compiles
        self.cpu.clear()

    def __call__(self) -> float:
        start, cpu = time.perf_counter(), time.process_time()
        self.carry, ys = self.run(self.carry, self.epoch)
        jax.block_until_ready((self.carry, ys))
        self.cpu.append(time.process_time() - cpu)
        return time.perf_counter() - start


class EpochRun:
    """A 3-epoch train_and_evaluate run; the seconds of its epochs 2 and 3 (eval to eval)."""

    def __init__(self, steps_per_dispatch: int):
        self.config = bp_config(steps_per_dispatch, num_epochs=3)
        self.epoch3: list[float] = []
        self.cpu: list[float] = []
        self.cpu3: list[float] = []

    def __call__(self) -> float:
        stamps = {}
        write = logs.MetricWriter.write

        def stamped(writer, step, epoch, values):
            write(writer, step, epoch, values)
            if "test/accuracy" in values:
                stamps[step] = time.perf_counter(), time.process_time()

        logs.MetricWriter.write = stamped
        try:
            with (
                tempfile.TemporaryDirectory() as workdir,
                contextlib.redirect_stdout(io.StringIO()),
            ):
                loop_lib.train_and_evaluate(self.config, workdir)
        finally:
            logs.MetricWriter.write = write
        (w1, c1), (w2, c2), (w3, c3) = (stamps[n * STEPS_PER_EPOCH] for n in (1, 2, 3))
        self.epoch3.append(w3 - w2)
        self.cpu.append(c2 - c1)
        self.cpu3.append(c3 - c2)
        return w2 - w1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--steps_per_dispatch", type=int, default=0, help="config.steps_per_dispatch (0: auto)"
    )
    args = parser.parse_args()
    logs.quiet()
    print(f"before: {_timing.load_average()}")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)")

    trainer = trainer_lib.Trainer(bp_config(args.steps_per_dispatch, log_every_steps=10**9))
    loop = LoopRun(trainer)
    loop()  # compiles (one program for every chunk length: chunks are padded to k)
    loop.cpu.clear()
    epoch = device_epoch(trainer)
    scan = ScanRun(reference_step, init_params(jax.random.PRNGKey(0)), epoch)

    def normalizing_step(params, batch):
        return reference_step(params, {**batch, "image": trainer.ds.normalize(batch["image"])})

    raw_epoch = device_epoch(trainer, raw=True)
    assert raw_epoch["image"].dtype == jnp.uint8
    scan_u8 = ScanRun(normalizing_step, init_params(jax.random.PRNGKey(0)), raw_epoch)
    w1, w2 = (init_params(jax.random.PRNGKey(1))[k] for k in ("w1", "w2"))
    matmuls = ScanRun(matmul_step, (w1, w2), epoch)
    full = EpochRun(args.steps_per_dispatch)
    runs = {"loop": loop, "scan": scan, "scan u8": scan_u8, "matmuls": matmuls, "epoch 2": full}
    times = _timing.interleaved(runs, args.repeats)
    times["epoch 3"] = full.epoch3
    cpu = {name: run.cpu for name, run in runs.items()}
    cpu["epoch 3"] = full.cpu3

    print()
    print(
        f"bp, seed MLP, batch 128, real MNIST: seconds per epoch ({STEPS_PER_EPOCH} steps), "
        f"median of {args.repeats} interleaved repeats; the loop ran {loop.k} steps per call. "
        "cpu s: this process's CPU time (all threads), which other jobs on the machine do not "
        "inflate as they do the wall time"
    )
    rows = [
        [
            name,
            f"{_timing.median(ts):.3f}",
            f"{_timing.spread(ts):.0%}",
            f"{_timing.median(cpu[name]):.3f}",
        ]
        for name, ts in times.items()
    ]
    print(_timing.table(["run", "s/epoch", "spread", "cpu s/epoch"], rows))
    print()
    rows = []
    for name, (a, b) in {
        "loop / scan": ("loop", "scan"),
        "loop / scan u8": ("loop", "scan u8"),
        "loop / matmuls": ("loop", "matmuls"),
        "epoch 2 / loop": ("epoch 2", "loop"),
        "epoch 3 / loop": ("epoch 3", "loop"),
    }.items():
        ratio = _timing.median([x / y for x, y in zip(times[a], times[b], strict=True)])
        cpu_ratio = _timing.median([x / y for x, y in zip(cpu[a], cpu[b], strict=True)])
        target = TARGETS.get(name)
        rows.append(
            [
                name,
                f"{ratio:.3f}",
                f"{cpu_ratio:.3f}",
                f"<= {target}" if target else "",
                _timing.verdict(ratio <= target) if target else "",
            ]
        )
    header = ["ratio (paired per repeat)", "wall", "cpu", "target (wall)", ""]
    print(_timing.table(header, rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
