r"""Train-step time per learning rule for ResNet-20 on CIFAR-shaped batches, on CPU, against bp.

    .venv/bin/python benchmarks/resnet_rules.py              # about 6 minutes on 2 quiet cores
    .venv/bin/python benchmarks/resnet_rules.py --batch_size=64 --steps=20 --repeats=5
    .venv/bin/python benchmarks/resnet_rules.py --mirror_every=10 --rules=bp,wm

What it measures: configs/cifar10_resnet20.py (SGD with momentum and weight decay, the
per-rule settings) at ``--batch_size`` on one device, built under ``tfds.testing.mock_data``
(no CIFAR-10 is read: one synthetic 32x32x3 batch of 10 classes stays on the device). Per rule,
the median over ``--repeats`` runs of ``--steps`` train steps, after a warm-up, blocking every
8 steps as the train loop does; rules interleaved in a fresh random order each repeat.
``x bp`` is the median over repeats of the rule's time over bp's of the same repeat; ``spread``
is (max - min) / median. ``wm`` runs the train loop's work with ``mirror.every =
--mirror_every`` (default 1: a mirror batch of ``--batch_size`` noise inputs after every step,
fused with it into one dispatch; with k > 1 amortized over k steps, so ``--steps`` should be a
multiple of k), with the config's noise (Rademacher since issue 20); ``wm normal`` the same
with ``mirror.noise = normal``; ``wm mirror`` is one mirror step alone. ``bp loop`` is bp
through the train loop's own code path (``trainer_lib.train_chunks``: chunks of
``steps_per_dispatch`` steps, automatic, stacked and put a call ahead, the NaN watch; the same
batch every step), per step: on XLA:CPU a conv net's chunk is unrolled, since a convolution's
gradient inside a ``lax.scan`` runs 20x slower there (``wtfree.dispatch.conv_loop_is_slow``).

Init uses the ``rbg`` PRNG (compiling ResNet init with threefry takes ~15 s a rule here); the
steps run with the default threefry keys, as training does (``rbg`` draws are 5x slower on CPU,
which would penalize wm's noise and brsf).

Targets (issue 11): fa, usf, kp, dfa, frsf, brsf within 1.1x of bp; wm with a mirror batch
every step within 1.5x; the loop within 1.05x of bp's bare steps. The load average is printed
before and after: the machine is shared.
"""

import argparse
import functools
import itertools
import time

import _timing
import jax
import numpy as np
import tensorflow_datasets as tfds
from loop import LoopRun

from wtfree import sharding
from wtfree import steps as steps_lib
from wtfree import trainer as trainer_lib

ALL_RULES = ("bp", "fa", "usf", "kp", "wm", "dfa", "frsf", "brsf")
TARGETS = {r: 1.1 for r in ("fa", "usf", "kp", "dfa", "frsf", "brsf")} | {"wm": 1.5}
LOOP_TARGET = 1.05


def make_config(
    rule: str, batch_size: int, num_devices: int | None = None, mirror_every=1, noise=None
):
    """configs/cifar10_resnet20.py for ``rule`` at ``batch_size`` (and mirror batch)."""
    if _timing.config_exists("cifar10_resnet20"):
        config = _timing.load_config("cifar10_resnet20", f"rule={rule}")
    else:
        config = _timing.load_config("mnist_mlp", f"rule={rule}")
        config.dataset, config.model, config.loss = "cifar10", "resnet20", "softmax_xent"
        config.model_kwargs = {}
        config.optimizer.momentum = 0.9
    config.batch_size = batch_size
    config.mirror.batch_size = batch_size // (num_devices or 1)
    config.mirror.every = mirror_every
    if noise is not None:
        config.mirror.noise = noise
    config.num_devices = num_devices
    return config


def make_trainer(config) -> tuple[trainer_lib.Trainer, dict]:
    """The Trainer (under mock CIFAR-10) and a fresh state, initialized with rbg keys."""
    with tfds.testing.mock_data(
        num_examples=max(2 * config.batch_size, 64), policy=tfds.testing.MockPolicy.USE_CODE
    ):
        trainer = trainer_lib.Trainer(config)
    default = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        state = trainer.init_state(jax.random.PRNGKey(config.seed))
    finally:
        jax.config.update("jax_default_prng_impl", default)
    # The steps trace later, with the default (threefry) keys; so must the state's key be.
    state = {**state, "rng": jax.random.PRNGKey(config.seed)}
    return trainer, state


def synthetic_batch(batch_size: int, num_classes: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch_size, 32, 32, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


def make_step(trainer: trainer_lib.Trainer, batch):
    """``step(state) -> (state, measurements)`` as the train loop runs it, mirror included."""
    if not trainer.uses_mirror:
        return functools.partial(lambda s, f, b: f(s, b), f=trainer.train_step, b=batch)
    counter = {"step": 0}
    every = trainer.config.mirror.every

    def step(state):
        i = counter["step"]
        if (i + 1) % every == 0:
            if hasattr(trainer, "train_mirror_step"):  # one dispatch (the Trainer since 63b29a5)
                state, measurements = trainer.train_mirror_step(state, batch)
            else:
                state, measurements = trainer.train_step(state, batch)
                state = trainer.mirror_step(state, steps_lib._mirror_rng(state, 1, i))
        else:
            state, measurements = trainer.train_step(state, batch)
        counter["step"] += 1
        return state, measurements

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default=",".join(ALL_RULES))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mirror_every", type=int, default=1, help="wm: a mirror batch every k")
    args = parser.parse_args()
    rules = args.rules.split(",")
    if "bp" not in rules:
        rules = ["bp", *rules]

    print(f"before: {_timing.load_average()}")
    batch_np = synthetic_batch(args.batch_size)
    steppers, compile_s = {}, {}
    variants = [(rule, rule, None) for rule in rules]
    if "wm" in rules and "noise" in make_config("wm", args.batch_size).mirror:
        variants.append(("wm normal", "wm", "normal"))  # mirror.noise since issue 11
    for name, rule, noise in variants:
        t0 = time.perf_counter()
        config = make_config(rule, args.batch_size, mirror_every=args.mirror_every, noise=noise)
        trainer, state = make_trainer(config)
        batch = sharding.put_batch(batch_np, trainer.mesh)
        stepper = _timing.Stepper(make_step(trainer, batch), state)
        # Warm-up: at least one full mirror period, so the mirror step is compiled too.
        stepper(max(args.warmup, trainer.config.mirror.every if trainer.uses_mirror else 0))
        compile_s[name] = time.perf_counter() - t0
        steppers[name] = stepper
        if trainer.uses_mirror and noise is None:
            key = jax.random.PRNGKey(1)
            # Its own copy of the state: both steps donate theirs.
            steppers["wm mirror"] = _timing.Stepper(
                lambda s, t=trainer, k=key: (lambda n: (n, n["step"]))(t.mirror_step(s, k)),
                jax.tree.map(lambda x: x.copy(), stepper.carry),
            )
            steppers["wm mirror"](1)
    t0 = time.perf_counter()
    trainer, state = make_trainer(make_config("bp", args.batch_size))
    loop = LoopRun(trainer, itertools.repeat(batch_np), state, steps=args.steps)
    loop()  # compiles every call length
    compile_s["bp loop"] = time.perf_counter() - t0
    print(
        f"built and warmed up in {sum(compile_s.values()):.0f} s; "
        f"the loop ran {loop.k} steps a call"
    )

    runs = {}
    for name, s in steppers.items():
        runs[name] = functools.partial(s, 1 if name == "wm mirror" else args.steps)
    runs["bp loop"] = loop
    times = _timing.interleaved(runs, args.repeats)

    bp = [t / args.steps for t in times["bp"]]
    rows = []
    for name, ts in times.items():
        n = 1 if name == "wm mirror" else args.steps
        per_step = [t / n for t in ts]
        ratio = _timing.median([a / b for a, b in zip(per_step, bp, strict=True)])
        target = {"wm mirror": None, "bp loop": LOOP_TARGET}.get(name, TARGETS.get(name.split()[0]))
        rows.append(
            [
                name,
                f"{_timing.median(per_step) * 1e3:.1f}",
                f"{_timing.spread(ts):.0%}",
                f"{args.batch_size / _timing.median(per_step):.0f}",
                f"{ratio:.3f}",
                f"<= {target}" if target else "",
                _timing.verdict(ratio <= target) if target else "",
            ]
        )
    print()
    print(
        f"ResNet-20 train step, batch {args.batch_size} of 32x32x3, 1 CPU device: median of "
        f"{args.repeats} interleaved runs x {args.steps} steps (wm: a mirror batch every "
        f"{args.mirror_every} step(s))"
    )
    header = ["rule", "ms/step", "spread", "images/s", "x bp", "target", ""]
    print(_timing.table(header, rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
