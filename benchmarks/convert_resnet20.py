r"""A stock Flax ResNet-20 converted by ``wtfree.convert`` against wtfree's own ResNet-20, per rule.

    .venv/bin/python benchmarks/convert_resnet20.py               # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/convert_resnet20.py --rules=bp,fa --batch_size=32 --repeats=5

Both models are CIFAR ResNet-20 (He et al. 2016, option A shortcuts, BN momentum 0.9): the
native one is ``wtfree.models.resnet.Model`` (wtfree's layers, the model train.py trains); the
converted one is ``StockResNet20`` below, written with ``nn.Conv``, ``nn.BatchNorm`` and
``nn.Dense`` only, then ``wtfree.convert(StockResNet20(), rule)``. Each is timed on the same
step: softmax cross-entropy on one random 32x32x3 batch kept on the device, its gradient with
respect to ``params`` and ``feedback`` (as ``wtfree.make_train_step``: KP's B gets
W's gradient there) with the batch statistics updated, and
an SGD-with-momentum update, jitted. Per rule, the median over ``--repeats`` of ``--steps``
steps; native and converted interleaved in a fresh random order each repeat, and
``converted / native`` the median of the per-repeat ratios. Target (issue 17): at most 1.02.
The load average is printed before and after: the machine is shared.
"""

import argparse
import functools

import _timing
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import wtfree
from wtfree.models import resnet

TARGET = 1.02
RULES = ("bp", "fa", "usf", "kp", "frsf")


class StockBlock(nn.Module):
    features: int
    strides: int

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            nn.Conv,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        )
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5
        )
        y = conv(self.features, strides=(self.strides,) * 2, name="conv_0")(x)
        y = nn.relu(norm(name="bn_0")(y))
        y = norm(name="bn_1")(conv(self.features, name="conv_1")(y))
        if x.shape[-1] != self.features or self.strides != 1:  # option A: subsample, zero-pad
            x = x[:, :: self.strides, :: self.strides, :]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        return nn.relu(y + x)


class StockResNet20(nn.Module):
    """CIFAR ResNet-20 in stock Flax: nothing in it knows about wtfree."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(
            16,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="conv_init",
        )(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        for stage in range(3):
            for block in range(3):
                strides = 2 if stage and not block else 1
                x = StockBlock(16 * 2**stage, strides, name=f"stage{stage}_{block}")(x, train)
        return nn.Dense(self.num_classes, name="output")(x.mean(axis=(1, 2)))


def make_stepper(model, images, labels, steps_rng):
    # Whole batch: the "perturbations" collection (delta-angle probes) is shaped by it.
    variables = model.init(jax.random.key(0), images, train=False)
    names = [c for c in ("params", "feedback") if c in variables]
    trainable = {c: variables[c] for c in names}
    rest = {c: v for c, v in variables.items() if c not in names}
    tx = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(carry):
        trainable, rest, opt_state = carry

        def loss_fn(trainable):
            logits, updated = model.apply(
                {**rest, **trainable},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"feedback": steps_rng},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updated

        (loss, updated), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return (trainable, {**rest, **updated}, opt_state), loss

    return _timing.Stepper(step, (trainable, rest, tx.init(trainable)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rules")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rules = args.rules.split(",")
    print(f"load average before: {_timing.load_average()}", flush=True)
    images = jax.random.normal(jax.random.key(1), (args.batch_size, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(2), (args.batch_size,), 0, 10)
    runs = {}
    for rule in rules:
        native = resnet.Model(
            num_classes=10, stage_sizes=(3, 3, 3), stem="cifar", width=16, shortcut="pad",
            rule=rule,
        )  # fmt: skip
        converted = wtfree.convert(StockResNet20(), rule)
        for name, model in (("native", native), ("converted", converted)):
            stepper = make_stepper(model, images, labels, jax.random.key(3))
            stepper(2)  # compile and warm up
            runs[f"{rule} {name}"] = functools.partial(stepper, args.steps)
    times = _timing.interleaved(runs, args.repeats)
    rows, ok = [], True
    for rule in rules:
        pair = {k: times[f"{rule} {k}"] for k in ("native", "converted")}
        ratio = _timing.median(_timing.paired_ratios(pair, "native")["converted"])
        ok &= ratio <= TARGET
        rows.append(
            [
                rule,
                f"{1e3 * _timing.median(pair['native']) / args.steps:.1f}",
                f"{1e3 * _timing.median(pair['converted']) / args.steps:.1f}",
                f"{ratio:.3f}",
                f"{_timing.spread(pair['converted']):.2f}",
            ]
        )
    header = ["rule", "native ms/step", "converted ms/step", "converted / native", "spread"]
    print(_timing.table(header, rows))
    print(f"target converted / native <= {TARGET}: {_timing.verdict(ok)}")
    print(f"load average after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
