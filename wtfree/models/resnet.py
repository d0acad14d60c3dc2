"""ResNet v1 (He et al. 2016) whose convs and classifier learn by a rule; ImageNet and CIFAR."""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wtfree import layers, rules

ModuleDef = Any


def _same(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # torchvision's symmetric k // 2 padding; "SAME" pads (0, 1) under stride 2 instead.
    return ((k // 2, k // 2), (k // 2, k // 2))


def _conv(features: int, size: int, strides: int = 1, **kwargs) -> layers.Conv:
    """A size x size conv without bias, He-initialized as in torchvision and Flax's example."""
    return layers.Conv(
        features=features,
        kernel_size=(size, size),
        strides=(strides, strides),
        padding=_same(size),
        use_bias=False,
        kernel_scale=2.0,
        kernel_mode="fan_out",
        kernel_distribution="normal",
        **kwargs,
    )


class _Shortcut(nn.Module):
    """The block's skip path: the identity, or where the shape changes option A or B.

    Option A (``"pad"``): subsample by the stride and pad the new channels with zeros; no
    parameters. Option B (``"projection"``): a 1x1 conv with the stride, then batch norm.
    """

    features: int
    strides: int
    shortcut: str
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] == self.features and self.strides == 1:
            return x
        if self.shortcut == "projection":
            x = self.conv(self.features, 1, self.strides, name="conv")(x)
            return self.norm(name="bn")(x)
        if self.shortcut == "pad":
            x = x[:, :: self.strides, :: self.strides, :]
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        raise ValueError(f"unknown shortcut {self.shortcut!r}; known: pad, projection")


class _Block(nn.Module):
    """What both blocks take: the conv, norm and activation to build from, and the shape.

    Called as ``block(x)``, or under per-layer DFA as ``block(x, carrier) -> (y, carrier)``:
    then the output of every conv inside the block but the last (after its batch norm and
    activation) receives the network's output error directly through its own B
    (``layers.DirectFeedback``), so that no error reaches it through the next conv's W^T.
    """

    features: int
    strides: int
    shortcut: str
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    zero_init_residual: bool = False

    def direct(self, y: jax.Array, carrier: jax.Array | None, name: str):
        """Marks an inner activation for per-layer DFA when a carrier is threaded through."""
        if carrier is None:
            return y, None
        return layers.DirectFeedback(name=name)(y, carrier)

    @staticmethod
    def finish(y: jax.Array, carrier: jax.Array | None):
        return y if carrier is None else (y, carrier)

    def residual_norm(self, name: str) -> nn.Module:
        """The batch norm before the addition; with a zero scale the block starts as identity."""
        if self.zero_init_residual:
            return self.norm(name=name, scale_init=nn.initializers.zeros_init())
        return self.norm(name=name)


class BasicBlock(_Block):
    """Two 3x3 convs, each with batch norm: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    @nn.compact
    def __call__(self, x: jax.Array, carrier: jax.Array | None = None):
        y = self.conv(self.features, 3, self.strides, name="conv_0")(x)
        y, carrier = self.direct(self.act(self.norm(name="bn_0")(y)), carrier, "direct_0")
        y = self.conv(self.features, 3, name="conv_1")(y)
        y = self.residual_norm("bn_1")(y)
        residual = _Shortcut(self.features, self.strides, self.shortcut, self.conv, self.norm)(x)
        return self.finish(self.act(y + residual), carrier)


class BottleneckBlock(_Block):
    """1x1 conv down to ``features``, 3x3 conv, 1x1 conv up to ``4 * features``, each with
    batch norm, plus the shortcut. The stride is on the 3x3 conv (torchvision's "v1.5")."""

    @nn.compact
    def __call__(self, x: jax.Array, carrier: jax.Array | None = None):
        out = 4 * self.features
        y = self.conv(self.features, 1, name="conv_0")(x)
        y, carrier = self.direct(self.act(self.norm(name="bn_0")(y)), carrier, "direct_0")
        y = self.conv(self.features, 3, self.strides, name="conv_1")(y)
        y, carrier = self.direct(self.act(self.norm(name="bn_1")(y)), carrier, "direct_1")
        y = self.conv(out, 1, name="conv_2")(y)
        y = self.residual_norm("bn_2")(y)
        residual = _Shortcut(out, self.strides, self.shortcut, self.conv, self.norm)(x)
        return self.finish(self.act(y + residual), carrier)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}

# Per-layer DFA keeps a fixed B of (classes x units) for every hidden layer, replicated on every
# device; above this many entries in all (8 GiB in float32) the model refuses to build.
MAX_DIRECT_FEEDBACK_ENTRIES = 2**31


class Model(nn.Module):
    """A ResNet v1: a stem, stages of residual blocks, global average pooling, a dense output.

    Stage i has ``stage_sizes[i]`` blocks of ``width * 2**i`` channels (times 4 at the output
    of a bottleneck block); every stage but the first halves the spatial size in its first
    block. Batch norm and the residual additions are differentiated by ordinary autodiff; the
    convs and the output layer by ``rule``.

    Under ``dfa`` every hidden layer gets the output error e directly through its own fixed B
    of ``num_classes`` times its output size: the stem's output, every block's output, and the
    output of every conv inside a block (after its batch norm and activation). No error goes
    down through any W^T: what arrives at a marked activation from above is dropped. A block's
    last conv and its projection shortcut share the block's output, so they share its B. Where
    these B would hold more than ``MAX_DIRECT_FEEDBACK_ENTRIES`` entries (ImageNet ResNet-50:
    9.0 billion) the model refuses to build. Under ``dfa_block`` only the stem's output and
    each block's output get e through a B (200M entries for ResNet-18's stem on 224x224 with
    1000 classes), and the convs inside a block get their error by backprop within the block
    from its output: Han et al.'s module-wise DFA.

    Attributes:
      num_classes: outputs.
      stage_sizes: blocks per stage.
      block: ``basic`` or ``bottleneck``.
      stem: ``imagenet`` (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or ``cifar`` (3x3 conv, BN,
        ReLU).
      width: the channels of the stem and of the first stage.
      shortcut: where a block changes shape, ``pad`` (option A of He et al.: strided identity,
        zero-padded channels; the CIFAR models of the paper) or ``projection`` (option B: 1x1
        conv and BN; the ImageNet models). Identity elsewhere.
      rule: the learning rule of the convs, and of the output layer unless ``output_rule``.
      output_rule: the rule of the output layer (None: ``rule``).
      zero_init_residual: start each block's last BN scale at zero, so that each block starts
        as the identity (Goyal et al. 2017).
      mirror_noise, alignment_input: the mirror noise's distribution and what the alignment
        losses read (``layers.Dense``'s; ``wtfree.convert``'s options of the same names).
      dtype: the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    stem: str = "imagenet"
    width: int = 64
    shortcut: str = "projection"
    rule: str = "bp"
    output_rule: str | None = None
    zero_init_residual: bool = False
    mirror_noise: str = "normal"
    alignment_input: str = "activations"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; known: {', '.join(BLOCKS)}")
        rule = rules.get(self.rule)
        direct = rule.direct
        per_layer = direct and not rule.block_wise
        if per_layer:
            check_direct_feedback(self, x.shape[1:])
        feedback = dict(mirror_noise=self.mirror_noise, alignment_input=self.alignment_input)
        conv = partial(_conv, rule=self.rule, dtype=self.dtype, **feedback)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        carrier = jnp.zeros((x.shape[0], self.num_classes), self.dtype or jnp.float32)

        if self.stem == "imagenet":
            x = conv(self.width, 7, 2, name="conv_init", input_layer=True)(x)
            x = nn.relu(norm(name="bn_init")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_same(3))
        elif self.stem == "cifar":
            x = conv(self.width, 3, name="conv_init", input_layer=True)(x)
            x = nn.relu(norm(name="bn_init")(x))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; known: cifar, imagenet")
        if direct:
            x, carrier = layers.DirectFeedback(name="direct_init")(x, carrier)

        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                block = BLOCKS[self.block](
                    conv=conv, norm=norm, name=f"stage{i}_block{j}", **block_fields(self, i, j)
                )
                if per_layer:
                    x, carrier = block(x, carrier)
                else:
                    x = block(x)
                if direct:
                    x, carrier = layers.DirectFeedback(name=f"direct_{i}_{j}")(x, carrier)

        x = jnp.mean(x, axis=(1, 2))
        x = layers.Dense(
            features=self.num_classes,
            rule=self.output_rule or self.rule,
            dtype=self.dtype,
            name="output",
            **feedback,
        )(x)
        if direct:
            x = rules.direct_feedback_output(x, carrier)
        return x


def block_fields(model: Model, i: int, j: int) -> dict:
    """The fields of ``model``'s block j of stage i, but its conv, norm and name: the one
    layout that the model and the settling kind's chain of its blocks both build."""
    return dict(
        features=model.width * 2**i,
        strides=2 if i > 0 and j == 0 else 1,
        shortcut=model.shortcut,
        act=nn.relu,
        zero_init_residual=model.zero_init_residual,
    )


def direct_feedback_entries(model: Model, image_shape: tuple[int, int, int]) -> int:
    """The number of entries of all B that per-layer DFA gives ``model`` on ``image_shape``.

    Counted from the architecture alone (no init): ``num_classes`` times the size of every
    activation that gets a B, as ``Model`` places them.
    """
    h, w, _ = image_shape
    if model.stem == "imagenet":  # 7x7/2 conv, 3x3/2 max pool, both with k // 2 padding
        h, w = (h + 1) // 2, (w + 1) // 2
        h, w = (h + 1) // 2, (w + 1) // 2
    units = h * w * model.width
    for i, num_blocks in enumerate(model.stage_sizes):
        features = model.width * 2**i
        for j in range(num_blocks):
            h_in, w_in = h, w
            if i > 0 and j == 0:
                h, w = (h + 1) // 2, (w + 1) // 2
            if model.block == "bottleneck":  # conv_0 at the input's size, the stride on conv_1
                units += h_in * w_in * features + h * w * features + h * w * 4 * features
            else:
                units += 2 * h * w * features
    return model.num_classes * units


def check_direct_feedback(model: Model, image_shape: tuple[int, int, int]) -> None:
    """Raises ValueError, naming the size, if per-layer DFA's B would not fit."""
    entries = direct_feedback_entries(model, tuple(image_shape))
    if entries > MAX_DIRECT_FEEDBACK_ENTRIES:
        raise ValueError(
            f"rule={model.rule!r}: per-layer DFA on this ResNet with {tuple(image_shape)} inputs "
            f"needs {entries:,} feedback entries ({4 * entries / 2**30:.1f} GiB in float32), "
            f"more than the {MAX_DIRECT_FEEDBACK_ENTRIES:,} allowed; "
            "rule=dfa_block (module-wise DFA) fits"
        )


# He et al. 2016, Table 6 (CIFAR-10, option A) and Table 1 (ImageNet, option B); ResNet-8 is
# the same family with n = 1 (one block per stage), small enough for a CPU.
ResNet8 = partial(Model, stage_sizes=(1, 1, 1), stem="cifar", width=16, shortcut="pad")
ResNet20 = partial(Model, stage_sizes=(3, 3, 3), stem="cifar", width=16, shortcut="pad")
ResNet56 = partial(Model, stage_sizes=(9, 9, 9), stem="cifar", width=16, shortcut="pad")
ResNet18 = partial(Model, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet50 = partial(Model, stage_sizes=(3, 4, 6, 3), block="bottleneck")
