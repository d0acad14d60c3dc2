r"""One settling loop's costliest op on LeNet, conv_1's transpose in x, by four routes, on CPU.

    .venv/bin/python benchmarks/settling_conv_transpose.py            # about a minute, 2 cores
    .venv/bin/python benchmarks/settling_conv_transpose.py --hlo      # and each route's conv

The settling rules send LeNet's error down through conv_1 every settling step (conv_0 sends
none down). This times that op alone, with the max pooling's derivative before it, as
activation relaxation runs it: T steps of ``s <- s - 0.1 (s - J^T (phi'(a) * e))`` in a jitted
``lax.fori_loop`` (``--unroll``: its ``unroll``; T unrolls it fully), on conv_1's shapes in
``configs/mnist_settling.py:model=lenet`` (a 12x12x6 input, a 5x5x6x16 VALID kernel, 2x2 max
pooling after ReLU, batch 64). ``e`` moves every step, so nothing is loop-invariant but W.

Routes (each gives the same values, printed as the largest difference to the first):

- ``jax.vjp``: ``jax.vjp`` of the conv and of the activation inside the loop body (the settling
  code before ``settling.network.Conv`` had its own transpose);
- ``jax.vjp built once``: both ``jax.vjp`` closures made once, outside the loop;
- ``lax.conv_transpose``: ``jax.lax.conv_transpose(..., transpose_kernel=True)``;
- ``Conv.transpose_x``: ``settling.network.Conv.transpose_x``, a forward convolution with the
  flipped kernel laid out HWIO (what the settling rules run now).

Timed, interleaved, median of ``--repeats`` calls (benchmarks/_timing.py), in ms per settling
step; the load average is printed before and after. ``--hlo`` prints the ``dim_labels`` of each
loop's convolutions as XLA:CPU compiled them (``01io``: the kernel laid out HWIO).
"""

import argparse
import re
import time

import _timing
import flax.linen as nn
import jax
import jax.numpy as jnp

from wtfree.settling import network

BATCH, INPUT, KERNEL = 64, (12, 12, 6), (5, 5, 6, 16)
ROUTES = ("jax.vjp", "jax.vjp built once", "lax.conv_transpose", "Conv.transpose_x")


def activation(a):
    return nn.max_pool(jax.nn.relu(a), (2, 2), strides=(2, 2))


def make_loop(route: str, steps: int, unroll: int):
    conv = network.make_conv()
    # The same op without its own transpose_x: network.transpose_x then takes jax.vjp's.
    plain = network.Layer(lambda x, w: conv(x, w), activation)

    def run(x, w, pre, top):
        if route == "jax.vjp built once":
            act_t = jax.vjp(activation, pre)[1]
            conv_t = jax.vjp(lambda x_: conv(x_, w), x)[1]

        def down(e):
            if route == "jax.vjp built once":
                return conv_t(act_t(e)[0])[0]
            g = network.activation_vjp(plain, pre, e)
            if route == "jax.vjp":
                return network.transpose_x(plain.f, x, w, g)
            if route == "lax.conv_transpose":
                return jax.lax.conv_transpose(
                    g,
                    w,
                    (1, 1),
                    "VALID",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    transpose_kernel=True,
                )
            return network.transpose_x(conv, x, w, g)

        def body(_, carry):
            s, e = carry
            s = s - 0.1 * (s - down(e))
            return s, 0.99 * e + 0.01 * jnp.mean(s)

        return jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(x), top), unroll=unroll)[0]

    return jax.jit(run)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, default=20, help="settling steps per call")
    parser.add_argument(
        "--unroll", default="1,4,20", help="fori_loop unroll values, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hlo", action="store_true", help="print each route's conv dim_labels")
    args = parser.parse_args()
    try:
        unrolls = [int(u) for u in args.unroll.split(",")]
    except ValueError:
        parser.error(f"--unroll={args.unroll!r}; allowed: comma-separated integers >= 1")
    if min(unrolls) < 1 or args.T < 1 or args.repeats < 1:
        parser.error("--T, --repeats and every --unroll: allowed: integers >= 1")

    print(f"before: {_timing.load_average()}")
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (BATCH, *INPUT))
    w = 0.1 * jax.random.normal(keys[1], KERNEL)
    pre = jax.random.normal(keys[2], network.make_conv()(x, w).shape)
    top = jax.random.normal(keys[3], activation(pre).shape)
    args_ = (x, w, pre, top)

    loops = {(r, u): make_loop(r, args.T, u) for r in ROUTES for u in unrolls}
    results = {k: jax.block_until_ready(f(*args_)) for k, f in loops.items()}
    reference = results[(ROUTES[0], unrolls[0])]
    scale = float(jnp.max(jnp.abs(reference)))

    def timed(f):
        def call():
            start = time.perf_counter()
            jax.block_until_ready(f(*args_))
            return time.perf_counter() - start

        return call

    names = {k: f"{k[0]}, unroll {k[1]}" for k in loops}
    times = _timing.interleaved({names[k]: timed(f) for k, f in loops.items()}, args.repeats)
    rows = [
        [
            names[k],
            f"{_timing.median(times[names[k]]) / args.T * 1e3:.2f}",
            f"{_timing.spread(times[names[k]]):.0%}",
            f"{float(jnp.max(jnp.abs(results[k] - reference))) / scale:.1e}",
        ]
        for k in loops
    ]
    print()
    print(
        f"conv_1's transpose and max pooling's derivative, T={args.T} steps a call, batch "
        f"{BATCH}: median of {args.repeats} interleaved calls"
    )
    print(_timing.table(["route", "ms/step", "spread", "max diff / max"], rows))
    if args.hlo:
        print()
        for k, f in loops.items():
            text = f.lower(*args_).compile().as_text()
            labels = sorted(set(re.findall(r"convolution\(.*?dim_labels=(\S+?),", text)))
            print(f"{names[k]}: convolution dim_labels {', '.join(labels)}")
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
