r"""Train-step rate at 1, 2 and 4 simulated CPU devices, same global batch: the cost of sharding.

    .venv/bin/python benchmarks/devices.py                  # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/devices.py --resnet         # adds ResNet-20 (about 3 more)
    .venv/bin/python benchmarks/devices.py --devices=1,2 --rule=fa --repeats=9

What it measures: the seed MLP (configs/mnist_mlp.py, ``--rule``, global batch 128) and with
``--resnet`` ResNet-20 (configs/cifar10_resnet20.py, global batch ``--resnet_batch``, under mock
CIFAR-10, see resnet_rules.py), each on a "data" mesh of N of the ``--devices`` simulated CPU
devices (``jax_num_cpu_devices``): the batch split N ways, the state replicated, the gradient
all-reduced by the compiler. One synthetic batch stays on the devices. Per N, the median over
``--repeats`` runs of ``--steps`` steps after a warm-up, the device counts interleaved in a
fresh random order each repeat; ``x 1 device`` is the median over repeats of N devices' time
over 1 device's time of the same repeat, ``spread`` is (max - min) / median.

The loop blocks on a step's result every 8 steps, as the train loop does: on a 2-core machine,
dozens of collective steps queued without waiting deadlock XLA's CPU rendezvous.

What the numbers mean: simulated devices are threads of one process sharing the machine's
cores. On a 2-core machine no speed-up is expected from more compute; a ratio above 1 is the
overhead of the sharded program (the all-reduce of the gradient, the per-device launches and
their rendezvous, smaller per-device matmuls). A ratio below 1 means one device's program
left a core idle (XLA:CPU runs some ops on one thread), which N concurrent programs fill.
On real accelerators, each device brings its own compute and the ratio should fall towards
1/N.
"""

import jax

# Before any JAX use: the number of CPU devices is fixed when the backend starts.
jax.config.update("jax_num_cpu_devices", 4)

import argparse  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402

import _timing  # noqa: E402
import numpy as np  # noqa: E402
import resnet_rules  # noqa: E402

from wtfree import sharding  # noqa: E402
from wtfree import trainer as trainer_lib  # noqa: E402


def mlp_stepper(rule: str, num_devices: int) -> _timing.Stepper:
    config = _timing.load_config("mnist_mlp", f"rule={rule}")
    config.num_devices = num_devices
    trainer = trainer_lib.Trainer(config)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((config.batch_size, 28, 28, 1), dtype=np.float32),
        "label": rng.integers(0, 10, config.batch_size).astype(np.int32),
    }
    batch = sharding.put_batch(batch, trainer.mesh)
    return _timing.Stepper(resnet_rules.make_step(trainer, batch), trainer.fresh_state())


def resnet_stepper(rule: str, num_devices: int, batch_size: int) -> _timing.Stepper:
    config = resnet_rules.make_config(rule, batch_size, num_devices)
    trainer, state = resnet_rules.make_trainer(config)
    batch = sharding.put_batch(resnet_rules.synthetic_batch(batch_size), trainer.mesh)
    return _timing.Stepper(resnet_rules.make_step(trainer, batch), state)


def report(title: str, times: dict[int, list[float]], steps: int, batch_size: int) -> None:
    one = times[min(times)]
    rows = []
    for n, ts in times.items():
        per_step = _timing.median(ts) / steps
        ratio = _timing.median([t / o for t, o in zip(ts, one, strict=True)])
        rows.append(
            [
                str(n),
                f"{per_step * 1e3:.2f}",
                f"{_timing.spread(ts):.0%}",
                f"{1 / per_step:.1f}",
                f"{batch_size / per_step:.0f}",
                f"{ratio:.2f}",
            ]
        )
    print()
    print(title)
    header = ["devices", "ms/step", "spread", "steps/s", "images/s", f"x {min(times)} device"]
    print(_timing.table(header, rows))


def measure(make, counts, steps: int, warmup: int, repeats: int) -> dict[int, list[float]]:
    steppers = {n: make(n) for n in counts}
    for stepper in steppers.values():
        stepper(warmup)
    runs = {n: functools.partial(s, steps) for n, s in steppers.items()}
    return _timing.interleaved(runs, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2,4", help="device counts, each <= 4")
    parser.add_argument("--rule", default="bp")
    parser.add_argument("--steps", type=int, default=200, help="MLP steps per timed run")
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resnet", action="store_true", help="also time ResNet-20")
    parser.add_argument("--resnet_batch", type=int, default=32)
    parser.add_argument("--resnet_steps", type=int, default=8)
    parser.add_argument("--resnet_repeats", type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]

    print(f"before: {_timing.load_average()}")
    print(f"{jax.device_count()} simulated CPU devices on {os.cpu_count()} cores")
    times = measure(
        functools.partial(mlp_stepper, args.rule), counts, args.steps, args.warmup, args.repeats
    )
    report(
        f"Seed MLP, rule {args.rule}, global batch 128: median of {args.repeats} interleaved "
        f"runs x {args.steps} steps",
        times,
        args.steps,
        128,
    )
    if args.resnet:
        times = measure(
            functools.partial(resnet_stepper, args.rule, batch_size=args.resnet_batch),
            counts,
            args.resnet_steps,
            2,
            args.resnet_repeats,
        )
        report(
            f"ResNet-20, rule {args.rule}, global batch {args.resnet_batch}: median of "
            f"{args.resnet_repeats} interleaved runs x {args.resnet_steps} steps",
            times,
            args.resnet_steps,
            args.resnet_batch,
        )
    print()
    print(
        f"Note: the simulated devices share this machine's {os.cpu_count()} cores, so no "
        "speed-up is expected from more compute; a ratio above 1 is the overhead of the "
        "sharded step (all-reduce, per-device launches and rendezvous, smaller per-device "
        "matmuls), one below 1 means one device's program left a core idle (XLA:CPU runs "
        "some ops, e.g. small convolutions, on one thread; N devices run N programs at once)."
    )
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
