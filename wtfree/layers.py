"""Flax Dense and Conv layers trained by a learning rule: W in "params", B in "feedback"."""

import math
from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from wtfree import metrics, optim, rules

Array = jax.Array

# Collections, besides "params":
FEEDBACK = "feedback"  # B, for rules that store it
MIRROR = "mirror"  # sown Hebbian products, in mirror mode
ALIGNMENT = "alignment"  # sown angle of B to W and norm ratio, when measuring
TRAINED_FEEDBACK = "trained_feedback"  # sown at init where the optimizer moves B (KP, sa, ...)
PERTURBATIONS = "perturbations"  # zeros added to layer outputs, to read the error there
ALIGNMENT_LOSS = "alignment_loss"  # sown primitives of LOSS rules' alignment losses (training)
# Under TRAINED_FEEDBACK, this leaf (beside where "kernel" would be) marks a B that the optimizer
# moves along its alignment loss's gradient (LOSS rules), not with W.
BY_ALIGNMENT_LOSS = optim.BY_ALIGNMENT_LOSS

# Random streams: "feedback" for rules that draw in the backward pass (brSF); "mirror" switches
# a layer into mirror mode and draws its noise.
FEEDBACK_RNG = "feedback"
MIRROR_RNG = "mirror"
# The mirror step passes one of these streams: its name says the noise's distribution
# (``mirror.noise``; rules.draw_noise). "mirror" stays the normal noise's, as before.
MIRROR_NOISE_RNGS = {
    "normal": MIRROR_RNG,
    "rademacher": "mirror_rademacher",
    "uniform": "mirror_uniform",
}
# Either stream, when present, feeds the alignment losses unit-variance noise of that
# distribution instead of the layer's own input.
ALIGNMENT_NOISE_RNGS = {"normal": "alignment_normal", "uniform": "alignment_uniform"}
# What an alignment loss can take as its input x: the layer's own input, or noise.
ALIGNMENT_INPUTS = ("activations", *ALIGNMENT_NOISE_RNGS)


def init_std(scale: float, mode: str, shape: Sequence[int]) -> float:
    """The std of ``jax.nn.initializers.variance_scaling(scale, mode, ...)`` for a kernel."""
    receptive_field = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive_field, shape[-1] * receptive_field
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    return math.sqrt(scale / fan)


class _RuleLinear(nn.Module):
    """What Dense and Conv share: W, bias and B, and the rule's forward pass through f."""

    rule: str = "bp"
    use_bias: bool = True
    kernel_scale: float = 1.0
    kernel_mode: str = "fan_in"
    kernel_distribution: str = "truncated_normal"
    feedback_scale: float = 1.0  # B is drawn like W, times this (Lillicrap et al. draw B larger)
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    # The layer reads the network's input: the error it would send down reaches no parameter,
    # so its B is never used. It is not mirrored (wasted work) and not measured (meaningless).
    input_layer: bool = False

    def _apply(self, f, x: Array, kernel_shape: tuple[int, ...], features: int) -> Array:
        rule = rules.get(self.rule)
        kernel_init = nn.initializers.variance_scaling(
            self.kernel_scale, self.kernel_mode, self.kernel_distribution
        )
        w = self.param("kernel", kernel_init, kernel_shape, self.param_dtype)
        std = init_std(self.kernel_scale, self.kernel_mode, kernel_shape)
        if rule.stores_feedback and not rule.direct:
            # B is drawn independently of W, at W's scale.
            b = self.variable(
                FEEDBACK,
                "kernel",
                lambda: (
                    self.feedback_scale
                    * kernel_init(self.make_rng("params"), kernel_shape, self.param_dtype)
                ),
            ).value
            if self.is_initializing() and rule.feedback == rules.GRADIENT:
                self.sow(TRAINED_FEEDBACK, "kernel", jnp.ones((), bool), reduce_fn=_keep_last)
            if self.is_initializing() and rule.feedback == rules.LOSS and not self.input_layer:
                flag = jnp.ones((), bool)
                self.sow(TRAINED_FEEDBACK, BY_ALIGNMENT_LOSS, flag, reduce_fn=_keep_last)
        else:
            b = jnp.asarray(std, self.param_dtype)

        mirror = [d for d, stream in MIRROR_NOISE_RNGS.items() if self.has_rng(stream)]
        if mirror and not self.input_layer and rule.feedback == rules.MIRROR:
            (distribution,) = mirror
            rng = self.make_rng(MIRROR_NOISE_RNGS[distribution])
            noise = rules.draw_noise(rng, x.shape, w.dtype, distribution)
            self.sow(MIRROR, "kernel", rules.hebbian(f, w, noise), reduce_fn=_keep_last)
        aligned = rule.alignment is not None and not self.input_layer
        if aligned and self.is_mutable_collection(ALIGNMENT_LOSS):
            values = rules.alignment.primitives(
                f, self._alignment_input(x, w.dtype), w, b, rule.alignment.primitives
            )
            # Output positions (1 for dense), for the train step's per-position mean option.
            x_spec = jax.ShapeDtypeStruct(x.shape, w.dtype)
            positions = math.prod(jax.eval_shape(f, x_spec, w).shape[1:-1])
            values[rules.alignment.POSITIONS] = jnp.asarray(positions, jnp.float32)
            self.sow(ALIGNMENT_LOSS, rule.name, values, reduce_fn=_keep_last)
        measured = not self.input_layer and rule.matrix is not None
        if self.is_mutable_collection(ALIGNMENT) and measured:
            matrix = rule.matrix(w, b)
            self.sow(ALIGNMENT, "weight_angle", metrics.angle(matrix, w), reduce_fn=_keep_last)
            norm_ratio = jnp.linalg.norm(matrix) / jnp.linalg.norm(w)
            self.sow(ALIGNMENT, "norm_ratio", norm_ratio, reduce_fn=_keep_last)

        x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
        rng = None
        if rule.needs_rng:
            # Only the backward pass draws from it: forward-only applies (evaluation, mirror
            # mode) may come without the stream. Training always passes it (wtfree.steps).
            has = self.has_rng(FEEDBACK_RNG)
            rng = self.make_rng(FEEDBACK_RNG) if has else jax.random.PRNGKey(0)
        y = rule.apply(f, x, w, b, rng)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return self.perturb("delta", y, collection=PERTURBATIONS)

    def _alignment_input(self, x: Array, dtype) -> Array:
        """What the alignment loss is fed: unit-variance noise if a noise stream is given
        (``ALIGNMENT_NOISE_RNGS``; the train step scales by the noise's variance), else the
        layer's own input; gradient stopped either way."""
        if self.has_rng(ALIGNMENT_NOISE_RNGS["normal"]):
            rng = self.make_rng(ALIGNMENT_NOISE_RNGS["normal"])
            return jax.random.normal(rng, x.shape, dtype)
        if self.has_rng(ALIGNMENT_NOISE_RNGS["uniform"]):
            rng = self.make_rng(ALIGNMENT_NOISE_RNGS["uniform"])
            half_width = math.sqrt(3.0)  # U(-a, a) has variance a^2 / 3
            return jax.random.uniform(rng, x.shape, dtype, -half_width, half_width)
        return lax.stop_gradient(x).astype(dtype)


def _keep_last(previous, value):
    del previous
    return value


class Dense(_RuleLinear):
    """A dense layer, ``y = x W + bias``, trained by ``rule``.

    Attributes:
      features: the number of outputs.
      rule: the learning rule's name (``wtfree.rules.names()``).
      kernel_scale, kernel_mode, kernel_distribution: W (and B) are drawn from
        ``variance_scaling(kernel_scale, kernel_mode, kernel_distribution)``.
      feedback_scale: a stored B is drawn like W, then multiplied by this.
      input_layer: the layer reads the network's input, so its B sends no error anywhere:
        it gets no mirror batch and no alignment measurement.
    """

    features: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self._apply(_dense, x, (x.shape[-1], self.features), self.features)


def _dense(x, w):
    return jnp.dot(x, w)


class Conv(_RuleLinear):
    """A 2-D convolution over NHWC inputs with an HWIO kernel, trained by ``rule``.

    Attributes:
      features: the number of output channels.
      kernel_size: (height, width) of the kernel.
      strides: (height, width) strides.
      padding: "SAME", "VALID" or explicit pairs, as in ``lax.conv_general_dilated``.
    """

    features: int = 0
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
        f = partial(_conv, strides=tuple(self.strides), padding=padding)
        kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
        return self._apply(f, x, kernel_shape, self.features)


def _conv(x, w, *, strides, padding):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class DirectFeedback(nn.Module):
    """Routes the output error straight to a hidden activation through a fixed random B (DFA).

    ``h, carrier = DirectFeedback()(h, carrier)``; see ``wtfree.rules.direct_feedback``. B has
    shape ``(outputs, units)``, units = ``prod(h.shape[1:])``, and std ``1/sqrt(units)``: the
    scale of the matrix backprop would send the output error through (a dense layer from these
    units to the outputs, initialized fan-in), so the error a unit gets has backprop's size at
    init however wide the layer. (With std ``1/sqrt(outputs)`` instead, a wide conv layer's
    error is orders of magnitude larger and DFA needs a learning rate 100-1000x below bp's.)
    """

    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: Array, carrier: Array) -> tuple[Array, Array]:
        shape = (carrier.shape[-1], math.prod(h.shape[1:]))
        init = nn.initializers.variance_scaling(1.0, "fan_out", "normal")
        b = self.variable(
            FEEDBACK, "kernel", lambda: init(self.make_rng("params"), shape, self.param_dtype)
        ).value
        return rules.direct_feedback(h, carrier, b)
