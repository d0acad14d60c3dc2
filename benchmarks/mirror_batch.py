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

Timed, interleaved, median of ``--repeats`` runs of ``--calls`` calls (benchmarks/_timing.py):

- ``bp step``: LeNet's bp train step, batch 128 (the config's), mock MNIST held on the device;
- ``wm step (640 every layer)``: the wm train step with its mirror batch, one dispatch
  (``Trainer.train_mirror_step``), as the train loop runs it;
- ``mirror 640``, ``mirror per layer``: the mirror's own work alone, one jitted call: every
  mirrored layer's ``rules.mirror_update`` (draw the noise, Hebbian product, update) with 640
  noise vectors or with its own batch.

``wm per layer (est.)`` = wm step - mirror 640 + mirror per layer: the wm step once the mirror
step takes per-layer batches (not wired into the train step yet; an estimate). The load
average is printed.
"""

import argparse
import functools
import math
import time

import _timing
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax import lax

from wtfree import rules, sharding
from wtfree import trainer as trainer_lib

# LeNet's mirrored layers on 28x28x1 (VALID convs, 2x2 pools): (name, input shape without the
# batch, kernel shape, output positions P).
LAYERS = [
    ("conv_1", (12, 12, 6), (5, 5, 6, 16), 64),
    ("dense_0", (256,), (256, 120), 1),
    ("dense_1", (120,), (120, 84), 1),
    ("output", (84,), (84, 10), 1),
]


def linear_op(kernel_shape):
    if len(kernel_shape) == 2:
        return jnp.dot
    return functools.partial(
        lambda x, w: lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )


def make_mirror(batches: dict[str, int], decay: float, noise: str):
    """One jitted call: every layer's mirror update with its own batch size."""

    def mirror(bs, rng):
        out = []
        for (name, in_shape, _, _), b, key in zip(
            LAYERS, bs, jax.random.split(rng, len(LAYERS)), strict=True
        ):
            w = b  # B = W at the fixed point: the work is the same
            n = batches[name]
            out.append(
                rules.mirror_update(
                    linear_op(w.shape),
                    w,
                    b,
                    key,
                    (n, *in_shape),
                    learning_rate=decay / n,
                    decay=decay,
                    noise=noise,
                )
            )
        return out

    return jax.jit(mirror)


def make_trainer(rule: str, noise: str):
    config = _timing.load_config("mnist_lenet", f"rule={rule}")
    config.mirror.noise = noise
    config.num_devices = 1
    with tfds.testing.mock_data(num_examples=256, policy=tfds.testing.MockPolicy.USE_CODE):
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

    rng = np.random.default_rng(0)
    kernels = [jnp.asarray(rng.standard_normal(k, dtype=np.float32) * 0.1) for _, _, k, _ in LAYERS]
    runs = {}

    def add(name, fn, fn_args):
        jax.block_until_ready(fn(*fn_args))

        def run():
            start = time.perf_counter()
            for _ in range(args.calls):
                out = fn(*fn_args)
            jax.block_until_ready(out)
            return (time.perf_counter() - start) / args.calls

        runs[name] = run

    key = jax.random.PRNGKey(0)
    add(
        f"mirror {uniform}",
        make_mirror(dict.fromkeys(per_layer, uniform), decay, args.noise),
        (kernels, key),
    )
    add("mirror per layer", make_mirror(per_layer, decay, args.noise), (kernels, key))
    for rule in ("bp", "wm"):
        trainer, batch = make_trainer(rule, args.noise)
        state = trainer.fresh_state()
        step = trainer.train_mirror_step if rule == "wm" else trainer.train_step
        stepper = _timing.Stepper(lambda s, step=step, batch=batch: step(s, batch), state)
        stepper(2)
        name = "bp step" if rule == "bp" else f"wm step ({uniform} every layer)"
        runs[name] = lambda stepper=stepper: stepper(args.calls) / args.calls

    times = _timing.interleaved(runs, args.repeats)
    ratios = _timing.paired_ratios(times, "bp step")
    wm = f"wm step ({uniform} every layer)"
    estimate = [
        (w - m + p) / b
        for w, m, p, b in zip(
            times[wm],
            times[f"mirror {uniform}"],
            times["mirror per layer"],
            times["bp step"],
            strict=True,
        )
    ]
    rows = [
        [
            name,
            f"{_timing.median(ts) * 1e3:.2f}",
            f"{_timing.spread(ts):.0%}",
            f"{_timing.median(ratios[name]):.2f}",
        ]
        for name, ts in times.items()
    ]
    rows.append(["wm per layer (est.)", "", "", f"{_timing.median(estimate):.2f}"])
    print(f"\nLeNet, batch 128: median of {args.repeats} interleaved runs x {args.calls} calls")
    print(_timing.table(["run", "ms", "spread", "x bp step"], rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
