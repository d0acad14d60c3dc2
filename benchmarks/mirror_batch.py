r"""LeNet's mirror batch sized per layer from B's closed-form error, against 640 in every layer.

    .venv/bin/python benchmarks/mirror_batch.py                    # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/mirror_batch.py --noise=rademacher --repeats=7

configs/mnist_lenet.py's stable mirror (decay 0.5, a batch of 640 noise vectors for every
mirrored layer) is sized by its widest dense layer: dense_0 (d = 256 inputs) needs 640 for B
to sit 20 degrees from W. ``rules.mirror_error`` gives each layer's error,
lambda / (2 - lambda) (d + kappa - 2) / (n P), so ``rules.mirror_batch_size`` sizes each
layer's batch for that same error: the narrower dense layers need fewer vectors, and conv_1,
whose Hebbian product averages over its 8 x 8 output positions, far fewer (P = 64; for this
VALID conv the closed form with n P vectors matches a simulated mirror, tests/test_mirror_batch.py;
the table prints the closed form's angle per layer). The input layer (conv_0) gets no mirror batch.

Timed, interleaved, median of ``--repeats`` runs of ``--calls`` calls (benchmarks/_timing.py),
LeNet's train step at batch 128 (the config's) on random images held on the device:

- ``bp step``: the bp train step;
- ``wm step, 640 every layer``: the wm train step with its mirror batch, one dispatch
  (``Trainer.train_mirror_step``, as the train loop runs it), ``mirror.per_layer_batch=False``;
- ``wm step, per-layer n``: the same with ``mirror.per_layer_batch=True`` (the config's).

Each is also given in CPU time per step (user + system of this process over its repeats): on a
shared machine the wall time moves with the load, printed before and after.
"""

import argparse
import functools
import math
import time

import _timing

from wtfree import data, rules, sharding
from wtfree import trainer as trainer_lib

# LeNet's mirrored layers on 28x28x1 (VALID convs, 2x2 pools): (name, input shape without the
# batch, kernel shape, output positions P).
LAYERS = [
    ("conv_1", (12, 12, 6), (5, 5, 6, 16), 64),
    ("dense_0", (256,), (256, 120), 1),
    ("dense_1", (120,), (120, 84), 1),
    ("output", (84,), (84, 10), 1),
]


def make_trainer(rule: str, noise: str, per_layer_batch: bool = False):
    config = _timing.load_config("mnist_lenet", f"rule={rule}")
    config.mirror.noise = noise
    config.mirror.per_layer_batch = per_layer_batch
    config.num_devices = 1
    # Random in-memory images under the config's dataset name: no data on disk needed.
    synthetic = functools.partial(data.synthetic, config.dataset, 256)
    with data.registered(config.dataset, synthetic):
        trainer = trainer_lib.Trainer(config)
        batch = next(iter(trainer.train_batches(0)))
    return trainer, sharding.put_batch(batch, trainer.mesh)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", default="normal", help="the mirror noise (LeNet's: normal)")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"before: {_timing.load_average()}")
    config = _timing.load_config("mnist_lenet", "rule=wm")
    decay, uniform = config.mirror.decay, config.mirror.batch_size
    error = max(
        rules.mirror_error(decay, math.prod(k[:-1]), uniform, positions=p, noise=args.noise)
        for _, _, k, p in LAYERS
    )
    per_layer = {}
    rows = []
    for name, _, kernel, positions in LAYERS:
        d = math.prod(kernel[:-1])
        n = rules.mirror_batch_size(decay, d, error, positions=positions, noise=args.noise)
        per_layer[name] = n
        angle = lambda e: math.degrees(math.atan(math.sqrt(e)))  # noqa: E731
        at_uniform = rules.mirror_error(decay, d, uniform, positions=positions, noise=args.noise)
        at_n = rules.mirror_error(decay, d, n, positions=positions, noise=args.noise)
        rows.append([name, d, positions, f"{angle(at_uniform):.1f}", n, f"{angle(at_n):.1f}"])
    print(f"decay {decay}, {args.noise} noise: B's angle to W from the closed form")
    header = ["layer", "d", "P", f"angle at {uniform}", "per-layer n", "angle at n"]
    print(_timing.table(header, rows))

    runs, cpu = {}, {}
    variants = [
        ("bp step", "bp", False),
        (f"wm step, {uniform} every layer", "wm", False),
        ("wm step, per-layer n", "wm", True),
    ]
    for name, rule, per_layer in variants:
        trainer, batch = make_trainer(rule, args.noise, per_layer)
        state = trainer.fresh_state()
        step = trainer.train_mirror_step if rule == "wm" else trainer.train_step
        stepper = _timing.Stepper(lambda s, step=step, batch=batch: step(s, batch), state)
        stepper(2)
        cpu[name] = []

        def run(stepper=stepper, name=name):
            start = time.process_time()
            seconds = stepper(args.calls) / args.calls
            cpu[name].append((time.process_time() - start) / args.calls)
            return seconds

        runs[name] = run

    times = _timing.interleaved(runs, args.repeats)
    ratios = _timing.paired_ratios(times, "bp step")
    rows = [
        [
            name,
            f"{_timing.median(ts) * 1e3:.1f}",
            f"{_timing.spread(ts):.0%}",
            f"{_timing.median(ratios[name]):.2f}",
            f"{_timing.median(cpu[name]) * 1e3:.1f}",
            f"{_timing.median(cpu[name]) / _timing.median(cpu['bp step']):.2f}",
        ]
        for name, ts in times.items()
    ]
    print(f"\nLeNet, batch 128: median of {args.repeats} interleaved runs x {args.calls} calls")
    header = ["run", "ms", "spread", "x bp step", "CPU ms", "CPU x bp"]
    print(_timing.table(header, rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
