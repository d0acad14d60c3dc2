r"""Where one ResNet-20 train step's time goes on XLA:CPU, and convolutions written other ways.

    .venv/bin/python benchmarks/resnet_profile.py                  # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/resnet_profile.py --batch_size=128 --repeats=3

Parts of the step (configs/cifar10_resnet20.py, bp, one device, a synthetic batch held on the
device), each jitted alone and timed interleaved with the others (benchmarks/_timing.py):

- ``step``: the train step (forward, backward, optimizer update, batch-norm statistics).
- ``forward``: the train-mode forward pass and the loss; ``forward+backward``: with the
  gradient of every parameter (``jax.grad``), no update.
- ``update``: the optimizer's update alone (SGD, momentum, weight decay) on a gradient tree.
- ``batch norm``: the 19 batch norms of the net (train mode) on activations of their shapes,
  forward and the gradient of their inputs and parameters.
- ``convs <op> <impl>``: the net's 19 convolutions alone, as one jitted call per op: ``fwd``
  y = f(x, W), ``dx`` the input gradient (the transposed convolution, what a rule sends down
  through B), ``dw`` the kernel gradient; each written as ``impl``:

  - ``xla``: ``lax.conv_general_dilated`` in NHWC / HWIO (layers.Conv's own);
  - ``nchw``: the same in NCHW / OIHW, with the inputs already in that layout;
  - ``split2``: the batch in two halves, one convolution each (what two simulated devices do);
  - ``chunks32``: the batch in chunks of 32 examples, one convolution each;
  - ``im2col``: the 9 shifted (strided) slices of the padded input concatenated on the channel
    axis, times the kernel as a (9 C) x O matrix; its gradients by autodiff.

  Every variant's outputs are checked against ``xla``'s before timing (relative error printed).

Columns: wall ms per call, CPU ms per call (user + system of this process, all threads; under
load the cores are shared, and the CPU time still says how much work a part is), both medians
over ``--repeats`` interleaved repeats of ``--calls`` calls. The load average is printed.
"""

import argparse
import time

import _timing
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import resnet_rules
from jax import lax

from wtfree import sharding

# ResNet-20's convolutions: (input height = width, input channels, output channels, stride,
# how many of them), all 3x3 with padding 1.
CONVS = [
    (32, 3, 16, 1, 1),
    (32, 16, 16, 1, 6),
    (32, 16, 32, 2, 1),
    (16, 32, 32, 1, 5),
    (16, 32, 64, 2, 1),
    (8, 64, 64, 1, 5),
]
# Its batch norms: (height = width, channels, how many).
NORMS = [(32, 16, 7), (16, 32, 6), (8, 64, 6)]
PAD = ((1, 1), (1, 1))


def conv_xla(x, w, stride):
    return lax.conv_general_dilated(
        x, w, (stride, stride), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_nchw(x, w, stride):
    return lax.conv_general_dilated(
        x, w, (stride, stride), PAD, dimension_numbers=("NCHW", "OIHW", "NCHW")
    )


def conv_split2(x, w, stride):
    half = x.shape[0] // 2
    return jnp.concatenate([conv_xla(x[:half], w, stride), conv_xla(x[half:], w, stride)])


def conv_chunks32(x, w, stride):
    n = x.shape[0]
    return jnp.concatenate([conv_xla(x[i : i + 32], w, stride) for i in range(0, n, 32)])


def conv_im2col(x, w, stride):
    kh, kw, c, o = w.shape
    n, h, width, _ = x.shape
    xp = jnp.pad(x, ((0, 0), *PAD, (0, 0)))
    ho, wo = (h + 2 - kh) // stride + 1, (width + 2 - kw) // stride + 1
    patches = jnp.concatenate(
        [
            xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )
    y = patches.reshape(-1, kh * kw * c) @ w.reshape(kh * kw * c, o)
    return y.reshape(n, ho, wo, o)


IMPLS = {
    "xla": conv_xla,
    "nchw": conv_nchw,
    "split2": conv_split2,
    "chunks32": conv_chunks32,
    "im2col": conv_im2col,
}


def conv_inputs(batch_size: int, rng: np.random.Generator):
    """Per conv of the net: (x, W, the output's cotangent g, stride), NHWC / HWIO."""
    out = []
    for h, c, o, stride, count in CONVS:
        for _ in range(count):
            x = rng.standard_normal((batch_size, h, h, c), dtype=np.float32)
            w = rng.standard_normal((3, 3, c, o), dtype=np.float32) / np.sqrt(9 * c)
            g = rng.standard_normal((batch_size, h // stride, h // stride, o), dtype=np.float32)
            out.append((x, w, g, stride))
    return out


def conv_op(impl: str, op: str, convs):
    """One jitted call computing ``op`` of every conv of ``convs`` written as ``impl``."""
    f = IMPLS[impl]
    nchw = impl == "nchw"

    def layout(x, w, g):
        if nchw:
            return x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2)
        return x, w, g

    args = [layout(jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)) for x, w, g, _ in convs]
    strides = [s for *_, s in convs]

    def run(args):
        outs = []
        for (x, w, g), s in zip(args, strides, strict=True):
            if op == "fwd":
                outs.append(f(x, w, s))
            elif op == "dx":
                if x.shape[-1 if not nchw else 1] == 3:
                    continue  # the input layer's dx is never needed
                outs.append(jax.vjp(lambda x_, w=w, s=s: f(x_, w, s), x)[1](g)[0])
            else:
                outs.append(jax.vjp(lambda w_, x=x, s=s: f(x, w_, s), w)[1](g)[0])
        if nchw:  # back to NHWC / HWIO for the check
            outs = [
                o.transpose(0, 2, 3, 1) if o.ndim == 4 and op != "dw" else o.transpose(2, 3, 1, 0)
                for o in outs
            ]
        return outs

    return jax.jit(run), args


def max_relative_error(outs, refs) -> float:
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(outs, refs, strict=True)
    )


def norm_op(batch_size: int, rng: np.random.Generator):
    """The net's batch norms (train mode): forward and the gradients, one jitted call."""
    xs, gs, variables = [], [], []
    norm = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    for h, c, count in NORMS:
        for _ in range(count):
            x = jnp.asarray(rng.standard_normal((batch_size, h, h, c), dtype=np.float32))
            xs.append(x)
            gs.append(jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32)))
            variables.append(norm.init(jax.random.PRNGKey(0), x))

    def run(xs, variables):
        outs = []
        for x, g, v in zip(xs, gs, variables, strict=True):

            def f(x, params, v=v):
                y, _ = norm.apply({**v, "params": params}, x, mutable=["batch_stats"])
                return y

            y, vjp = jax.vjp(f, x, v["params"])
            outs.append((y, vjp(g)))
        return outs

    return jax.jit(run), (xs, variables)


def timed(fn, args, calls: int, cpu: list):
    def run():
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        cpu.append((time.process_time() - cpu_start) / calls)
        return (time.perf_counter() - start) / calls

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--calls", type=int, default=3, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", default=",".join(IMPLS))
    args = parser.parse_args()
    print(f"before: {_timing.load_average()}")
    rng = np.random.default_rng(0)
    runs, cpu = {}, {}

    def add(name, fn, fn_args):
        jax.block_until_ready(fn(*fn_args))  # compile
        cpu[name] = []
        runs[name] = timed(fn, fn_args, args.calls, cpu[name])

    # The step and its parts.
    trainer, state = resnet_rules.make_trainer(resnet_rules.make_config("bp", args.batch_size))
    batch = sharding.put_batch(resnet_rules.synthetic_batch(args.batch_size), trainer.mesh)
    model = trainer.model
    trainable = {"params": state["params"], "feedback": state["feedback"]}

    def loss(trainable, batch_stats, batch):
        variables = {**trainable, "batch_stats": batch_stats}
        logits, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    add("forward", jax.jit(loss), (trainable, state["batch_stats"], batch))
    add("forward+backward", jax.jit(jax.grad(loss)), (trainable, state["batch_stats"], batch))

    def update(grads, opt_state, trainable):
        updates, opt_state = trainer.tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    add("update", jax.jit(update), (trainable, state["opt_state"], trainable))
    # The step donates its state: its own copy, so that the parts above keep theirs.
    stepper = _timing.Stepper(
        resnet_rules.make_step(trainer, batch), jax.tree.map(lambda x: x.copy(), state)
    )
    stepper(2)
    cpu["step"] = []

    def step_run():
        start = time.process_time()
        seconds = stepper(args.calls) / args.calls
        cpu["step"].append((time.process_time() - start) / args.calls)
        return seconds

    runs["step"] = step_run
    norm_fn, norm_args = norm_op(args.batch_size, rng)
    add("batch norm", norm_fn, norm_args)

    convs = conv_inputs(args.batch_size, rng)
    errors = {}
    for op in ("fwd", "dx", "dw"):
        ref_fn, ref_args = conv_op("xla", op, convs)
        refs = ref_fn(ref_args)
        for impl in args.impls.split(","):
            fn, fn_args = conv_op(impl, op, convs)
            errors[f"convs {op} {impl}"] = max_relative_error(fn(fn_args), refs)
            add(f"convs {op} {impl}", fn, (fn_args,))

    times = _timing.interleaved(runs, args.repeats)
    rows = []
    for name, ts in times.items():
        err = errors.get(name)
        rows.append(
            [
                name,
                f"{_timing.median(ts) * 1e3:.1f}",
                f"{_timing.median(cpu[name]) * 1e3:.1f}",
                f"{_timing.spread(ts):.0%}",
                "" if err is None else f"{err:.1e}",
            ]
        )
    print(
        f"\nResNet-20 (bp) on XLA:CPU, batch {args.batch_size}: median of {args.repeats} "
        f"interleaved runs x {args.calls} calls"
    )
    print(_timing.table(["part", "ms", "CPU ms", "spread", "rel. error vs xla"], rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
