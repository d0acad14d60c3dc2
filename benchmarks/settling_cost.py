r"""Cost of the settling rules' train step against T, beside bp's step on the same model, on CPU.

    .venv/bin/python benchmarks/settling_cost.py --rules=ar --T=0,10 --steps=3 --repeats=3
    .venv/bin/python benchmarks/settling_cost.py                 # the table in docs/settling.md
    .venv/bin/python benchmarks/settling_cost.py --model=lenet --rules=ar,pc --T=0,10,100
    .venv/bin/python benchmarks/settling_cost.py --model=resnet8 --rules=ar --T=0,10 --steps=3 \
        --repeats=3

The first line is the smallest run (seconds after compiling; about a minute on 2 shared cores).

What it measures (configs/mnist_settling.py, one device, a synthetic device-resident batch of
the setting's size: the step's time does not depend on the values):

- Per rule and T (``config.settling.steps``): the Trainer's jitted train step at the rule's
  paper setting (``rule=R``; ``--model=lenet``: wtfree's LeNet with the setting's activation,
  loss and batch; ``--model=resnet8``: configs/fashion_mnist_resnet.py's ResNet-8, one state per
  block, batch 128, on MNIST, and bp's step there), and bp's step at the same setting and model
  (``rule=bp,setting=R``), each the median over ``--repeats`` timed runs of ``--steps`` steps
  after a warm-up, all runs interleaved in a fresh random order every repeat. ``x bp`` is the
  median over repeats of the rule's time over bp's time of the same repeat; ``per settling
  step`` is (time at T - time at the smallest T) / (T - smallest T), in bp steps.
- di runs its Euler dynamics (``settling.dynamic=True``; alpha 0.1 so that the loop is stable
  at a random B); NDI, its direct solve, has no T (``--ndi`` adds its row).
- The settling step includes the forward pass for the loss and accuracy the loop logs, as
  the train loop calls it; bp's step is wtfree's ``steps.make_train_step``.

Target (issue 18): T settling steps cost at most (T + 1) x bp's step. The timings are of a
shared machine: the load average is printed before and after.
"""

import argparse
import functools

import _timing
import jax
import numpy as np

from wtfree import sharding
from wtfree import trainer as trainer_lib

RULES = ("ar", "pc", "di", "pal")


def synthetic_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch_size, 28, 28, 1), dtype=np.float32),
        "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }


def make_config(rule: str, setting: str, model: str, steps: int | None, ndi: bool = False):
    if model == "resnet8":  # every rule at the one ResNet-8 setting
        config = _timing.load_config("fashion_mnist_resnet", f"rule={rule},dataset=mnist")
    else:
        args = f"rule={rule},setting={setting},model={model}"
        config = _timing.load_config("mnist_settling", args)
    config.num_devices = 1
    if steps is not None:
        config.settling.steps = steps
        if rule == "di" and not ndi:
            config.settling.dynamic = True
            config.settling.alpha = 0.1
    return config


def stepper(config, batch_np) -> _timing.Stepper:
    trainer = trainer_lib.Trainer(config)
    batch = sharding.put_batch(batch_np, trainer.mesh)
    step = functools.partial(lambda s, b: trainer.train_step(s, b), b=batch)
    return _timing.Stepper(step, trainer.fresh_state())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default=",".join(RULES), help="of " + ", ".join(RULES))
    parser.add_argument("--model", default="mlp", choices=("mlp", "lenet", "resnet8"))
    parser.add_argument("--T", default="0,10,100", help="settling steps, comma-separated")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ndi", action="store_true", help="add di's direct solve (NDI)")
    args = parser.parse_args()
    rules = args.rules.split(",")
    for rule in rules:
        if rule not in RULES:
            parser.error(f"--rules: {rule!r}; allowed: {', '.join(RULES)}")
    if args.model == "resnet8" and not set(rules) <= {"ar", "pc"}:
        parser.error(f"--rules={args.rules!r} with --model=resnet8; allowed: ar, pc")
    try:
        ts = sorted({int(t) for t in args.T.split(",")})
    except ValueError:
        parser.error(f"--T={args.T!r}; allowed: comma-separated integers >= 0")
    if ts[0] < 0:
        parser.error(f"--T={args.T!r}; allowed: comma-separated integers >= 0")

    print(f"before: {_timing.load_average()}")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, model={args.model}")
    steppers, bp_of = {}, {}
    for rule in rules:
        batch_np = synthetic_batch(make_config(rule, rule, args.model, None).batch_size)
        bp = f"bp (setting={rule})"
        steppers[bp] = stepper(make_config("bp", rule, args.model, None), batch_np)
        for t in ts:
            name = f"{rule} T={t}"
            steppers[name] = stepper(make_config(rule, rule, args.model, t), batch_np)
            bp_of[name] = bp
        if rule == "di" and args.ndi:
            steppers["di NDI"] = stepper(make_config(rule, rule, args.model, 0, True), batch_np)
            bp_of["di NDI"] = bp
    for s in steppers.values():
        s(args.warmup)
    runs = {name: functools.partial(s, args.steps) for name, s in steppers.items()}
    times = _timing.interleaved(runs, args.repeats)

    rows = []
    for name in steppers:
        per_step = _timing.median(times[name]) / args.steps
        if name not in bp_of:  # a bp row
            rows.append([name, f"{per_step * 1e3:.2f}", f"{_timing.spread(times[name]):.0%}"])
            rows[-1] += ["1", "", "", ""]
            continue
        ref = times[bp_of[name]]
        ratio = _timing.median([t / r for t, r in zip(times[name], ref, strict=True)])
        t = int(name.split("T=")[1]) if "T=" in name else 0
        base = f"{name.split()[0]} T={ts[0]}"
        per_settling = ""
        if "T=" in name and t > ts[0]:
            extra = [
                (a - b) / r / (t - ts[0])
                for a, b, r in zip(times[name], times[base], ref, strict=True)
            ]
            per_settling = f"{_timing.median(extra):.3f}"
        target = t + 1
        rows.append(
            [
                name,
                f"{per_step * 1e3:.2f}",
                f"{_timing.spread(times[name]):.0%}",
                f"{ratio:.2f}",
                per_settling,
                f"<= {target}",
                _timing.verdict(ratio <= target),
            ]
        )
    print()
    print(
        f"Train step, model={args.model}: median of {args.repeats} interleaved runs x "
        f"{args.steps} steps; x bp paired per repeat with bp at the rule's setting"
    )
    header = ["step", "ms/step", "spread", "x bp", "per settling step (x bp)", "target", ""]
    print(_timing.table(header, rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
