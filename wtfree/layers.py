"""Flax Dense and Conv layers trained by a learning rule: W in "params", B in "feedback"."""

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from wtfree import kinds, metrics, optim, rules

Array = jax.Array

# Collections, besides "params":
FEEDBACK = "feedback"  # B, for rules that store it
# B's leaf name in FEEDBACK: never W's "kernel", so that one module can hold both under
# nnx.bridge (wtfree.linen names it so too). Checkpoints written while wtfree's own layers
# named B "kernel" are read and renamed (wtfree.checkpoints).
FEEDBACK_KERNEL = "feedback_kernel"
MIRROR = "mirror"  # sown Hebbian products, in mirror mode
ALIGNMENT = "alignment"  # sown angle of B to W and norm ratio, when measuring
TRAINED_FEEDBACK = "trained_feedback"  # sown at init where the optimizer moves B (KP, sa, ...)
PERTURBATIONS = "perturbations"  # zeros added to layer outputs, to read the error there
ALIGNMENT_LOSS = "alignment_loss"  # sown primitives of LOSS rules' alignment losses (training)
# Under TRAINED_FEEDBACK, beside B's name: BY_GRADIENT marks a B the optimizer moves with W (KP),
# BY_ALIGNMENT_LOSS one it moves along its alignment loss's gradient (LOSS rules).
BY_ALIGNMENT_LOSS = optim.BY_ALIGNMENT_LOSS
BY_GRADIENT = optim.BY_GRADIENT

# Random streams, one per purpose and used only for randomness: "feedback" for rules that draw
# in the backward pass (brSF), "mirror" for the mirror noise, "alignment" for the alignment
# losses' noise input. Which distribution each draws is a value (a layer's ``mirror_noise`` and
# ``alignment_input``, ``wtfree.convert``'s options of the same names), never a stream's name.
FEEDBACK_RNG = "feedback"
MIRROR_RNG = "mirror"
ALIGNMENT_RNG = "alignment"
# In a mirror apply, how many noise vectors each mirrored layer draws (``mirror_batch_sizes``).
_MIRROR_BATCH_SIZE = contextvars.ContextVar("wtfree_mirror_batch_size", default=None)
# What an alignment loss can take as its input x: the layer's own input, or unit-variance noise
# of that distribution.
ALIGNMENT_INPUTS = ("activations", "normal", "uniform")


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
    # The mirror noise's distribution in a mirror apply (``rules.MIRROR_NOISES``) and what the
    # alignment losses read (``ALIGNMENT_INPUTS``): values, as ``wtfree.convert``'s options.
    mirror_noise: str = "normal"
    alignment_input: str = "activations"

    def __post_init__(self):
        check_noise_options(self.mirror_noise, self.alignment_input)
        super().__post_init__()

    def _apply(self, f, x: Array, kernel_shape: tuple[int, ...], features: int) -> Array:
        kernel_init = nn.initializers.variance_scaling(
            self.kernel_scale, self.kernel_mode, self.kernel_distribution
        )
        w = self.param("kernel", kernel_init, kernel_shape, self.param_dtype)
        y = apply_rule(
            self,
            f,
            x,
            w,
            rule=rules.get(self.rule),
            # B is drawn independently of W, at W's scale.
            init_feedback=lambda: (
                self.feedback_scale
                * kernel_init(self.make_rng("params"), kernel_shape, self.param_dtype)
            ),
            std=init_std(self.kernel_scale, self.kernel_mode, kernel_shape),
            input_layer=self.input_layer,
            mirror_noise=self.mirror_noise if mirroring(self) else None,
            alignment_input=self.alignment_input,
            dtype=self.dtype,
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return self.perturb("delta", y, collection=PERTURBATIONS)


def mirroring(module: nn.Module) -> bool:
    """Whether ``module`` is in a mirror apply: one with the ``MIRROR`` collection mutable
    (``wtfree.mirror_step``, ``steps.make_mirror_step``), not an init."""
    return module.is_mutable_collection(MIRROR) and not module.is_initializing()


def check_noise_options(mirror_noise: str, alignment_input: str) -> None:
    """Raises ValueError, one line, for a mirror noise or an alignment input that is not one
    of ``rules.MIRROR_NOISES`` or ``ALIGNMENT_INPUTS``."""
    if mirror_noise not in rules.MIRROR_NOISES:
        allowed = ", ".join(rules.MIRROR_NOISES)
        raise ValueError(f"mirror_noise={mirror_noise!r}; allowed: {allowed}")
    if alignment_input not in ALIGNMENT_INPUTS:
        allowed = ", ".join(ALIGNMENT_INPUTS)
        raise ValueError(f"alignment_input={alignment_input!r}; allowed: {allowed}")


def apply_rule(
    module: nn.Module,
    f: rules.LinearFn,
    x: Array,
    w: Array,
    *,
    rule: rules.Rule,
    init_feedback,
    std: float,
    input_layer: bool = False,
    feedback_name: str = FEEDBACK_KERNEL,
    dtype=None,
    sow_at_init: bool = True,
    **settings,
) -> Array:
    r"""``f(x, W)`` computed by ``rule`` inside ``module``: the one path every layer takes.

    It keeps B (``FEEDBACK/feedback_name``, made by ``init_feedback()`` at init) for rules that
    store it, and, as the collections asked for are mutable, sows what the step and the
    optimizer read: which B the optimizer trains (``TRAINED_FEEDBACK``, at init), what the
    rule's kind sows for its step (``kinds.Kind.sow``: the mirror mode's Hebbian product in
    ``MIRROR``, when ``mirror_noise`` is given; the alignment loss's primitives in
    ``ALIGNMENT_LOSS``) and B's angle to W (``ALIGNMENT``).

    Args:
      module: the bound layer the variables belong to.
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      rule: the learning rule.
      init_feedback: ``() -> B``, shaped like W.
      std: W's init std, the scale the sign rules give sign(W).
      input_layer: the layer reads the network's input: its B sends no error anywhere, so it is
        not mirrored and not measured and has no alignment loss.
      feedback_name: B's leaf name in ``FEEDBACK`` (and of what is sown for it).
      dtype: the computation dtype (None: promote x, W and B).
      sow_at_init: whether an init sows the measurements and the alignment loss too.
      **settings: what the kinds' ``sow`` hooks read (``kinds.LayerCall.settings``):
        ``mirror_noise``, in a mirror apply (:func:`mirroring`) the noise's distribution
        (``rules.MIRROR_NOISES``), drawn from ``MIRROR_RNG``, else None; ``alignment_input``,
        ``activations`` (the default) or a noise distribution (``ALIGNMENT_INPUTS``), drawn
        from ``ALIGNMENT_RNG``.

    Returns:
      ``f(x, W)``, without bias.
    """
    kind = kinds.get(rule.feedback)
    if kind.stores_feedback and not rule.direct:
        b = module.variable(FEEDBACK, feedback_name, init_feedback).value
        # What the optimizer does with B (wtfree.optim reads these flags).
        if module.is_initializing() and kind.label == kinds.TRAIN:
            module.sow(TRAINED_FEEDBACK, BY_GRADIENT, jnp.ones((), bool), reduce_fn=keep_last)
        if module.is_initializing() and kind.label == kinds.ALIGN and not input_layer:
            flag = jnp.ones((), bool)
            module.sow(TRAINED_FEEDBACK, BY_ALIGNMENT_LOSS, flag, reduce_fn=keep_last)
    else:
        b = jnp.asarray(std, w.dtype)

    sowing = sow_at_init or not module.is_initializing()
    call = kinds.LayerCall(module, rule, f, x, w, b, input_layer, feedback_name, sowing, settings)
    kind.sow(call)
    measured = not input_layer and rule.matrix is not None
    if module.is_mutable_collection(ALIGNMENT) and measured and sowing:
        matrix = rule.matrix(w, b)
        module.sow(ALIGNMENT, "weight_angle", metrics.angle(matrix, w), reduce_fn=keep_last)
        norm_ratio = jnp.linalg.norm(matrix) / jnp.linalg.norm(w)
        module.sow(ALIGNMENT, "norm_ratio", norm_ratio, reduce_fn=keep_last)

    x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=dtype)
    rng = None
    if rule.needs_rng:
        # Only the backward pass draws from it: forward-only applies (evaluation, mirror
        # mode) may come without the stream. Training always passes it (wtfree.steps).
        has = module.has_rng(FEEDBACK_RNG)
        rng = module.make_rng(FEEDBACK_RNG) if has else jax.random.PRNGKey(0)
    return rule.apply(f, x, w, b, rng)


@contextlib.contextmanager
def mirror_batch_sizes(size: Callable[[int, int, str], int] | None) -> Iterator[None]:
    r"""Within it, a mirror apply gives each mirrored layer its own number of noise vectors.

    A layer of fan-in d (W's entries per output feature: a dense layer's inputs, a conv's
    kernel height x width x input channels) and P output positions (1 for dense) draws
    :math:`n_l = \min(n, \max(1, \mathrm{size}(d, P, \mathrm{noise})))` noise vectors, n the
    apply's batch (the mirror batch), and sows its Hebbian product on them times
    :math:`n / n_l`: H as if measured on n vectors, so the mirror's learning rate
    :math:`\lambda / (n\sigma^2)` still settles B at W (B's fixed point does not move) while B's
    noise is that of :math:`n_l` vectors (``rules.mirror_error``). ``size`` is called while
    tracing, with Python ints and the noise's name; ``None`` (as outside it): every layer draws n.

    Args:
      size: ``size(fan_in, positions, noise) -> n_l``, or None.

    Yields:
      Nothing; the sizes hold until the block ends.
    """
    token = _MIRROR_BATCH_SIZE.set(size)
    try:
        yield
    finally:
        _MIRROR_BATCH_SIZE.reset(token)


def _mirror_hebbian(f, x: Array, w: Array, rng: Array, noise: str) -> Array:
    """The mirror mode's Hebbian product on the layer's own number of noise vectors (see
    ``mirror_batch_sizes``), scaled to the apply's batch."""
    n = x.shape[0]
    size = _MIRROR_BATCH_SIZE.get()
    n_layer = n
    if size is not None:
        fan_in, positions = rules.fan_in_and_positions(f, x.shape, w)
        n_layer = min(n, max(1, int(size(fan_in, positions, noise))))
    z = rules.draw_noise(rng, (n_layer, *x.shape[1:]), w.dtype, noise)
    h = rules.hebbian(f, w, z)
    return h if n_layer == n else h * (n / n_layer)


def keep_last(previous, value):
    """A ``reduce_fn`` for ``sow``: the last value sown replaces any before it."""
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
      mirror_noise: the mirror noise's distribution in a mirror apply (``rules.MIRROR_NOISES``;
        drawn from the ``MIRROR_RNG`` stream).
      alignment_input: what the alignment losses read, ``activations`` (the layer's input) or
        unit-variance ``normal`` / ``uniform`` noise (drawn from the ``ALIGNMENT_RNG`` stream).
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
