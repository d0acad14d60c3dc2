"""wtfree.linen.convert (wtfree.convert): any linen model's Dense, DenseGeneral, Conv and Einsum
layers computed by a learning rule.

``wtfree.convert(model, "fa")`` returns the same model: the same parameters at the same paths,
the same forward values, but every stock linear layer sends the error down by the rule. It
works through ``flax.linen.intercept_methods``: when a layer is called, its linear op
(``dot_general`` of Dense and DenseGeneral, ``conv_general_dilated`` of Conv, the einsum of
Einsum) is replaced, for that call only, by the rule's ``apply(f, x, W, B, rng)``
(``wtfree.layers.apply_rule``), so the stock layer still draws W, adds its bias and promotes
dtypes itself.

The model contract (what a model must do to be converted): its linear layers are
``nn.Dense``, ``nn.DenseGeneral``, ``nn.Conv`` (shared weights; ``nn.ConvLocal`` and
``nn.ConvTranspose`` stay on backprop), ``nn.Einsum`` or wtfree's own ``layers.Dense`` /
``layers.Conv``, called through ``__call__``; the model's output layer is recognized by a
predicate on its path (default: named ``output``) where ``output_rule`` is used; nothing else.

Variables (``init``'s collections), for a layer at path ``p``:

- ``params/p/kernel``, ``params/p/bias``: W and its bias, as the stock layer makes them.
- ``feedback/p/direct_kernel``: for dfa, B from the model's ``outputs`` to the layer's input
  units; a train step passes the output error (``output_error=``) and each layer's input gets
  e B as its error, never anything through W^T (Nokland's DFA without a threaded carrier).
- ``feedback/p/feedback_kernel``: B, shaped like W, drawn with the layer's ``kernel_init``
  times ``feedback_scale``, for rules that store one (``Rule.stores_feedback``). Its leaf name
  differs from W's, so ``nnx.bridge`` can hold both.
- ``trained_feedback``: flags for ``wtfree.optim`` (B trained with W, or by its alignment loss).
- ``perturbations``: zeros added to each converted layer's output, to read the error there.
"""

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from wtfree import layers, rules

Array = jax.Array
Path = tuple[str, ...]

# B's leaf name beside W's "kernel" (W and B must not share a leaf name: nnx.bridge).
FEEDBACK_KERNEL = layers.FEEDBACK_KERNEL
# DFA's B of a layer, shape (outputs, units of the layer's input).
DIRECT_KERNEL = "direct_kernel"
# The streams a converted model draws from: brSF's feedback magnitudes (``layers.FEEDBACK_RNG``),
# the mirror noise and the alignment losses' noise. Which distribution is an option, not a name.
MIRROR_RNG = layers.MIRROR_RNG
ALIGNMENT_RNG = layers.ALIGNMENT_RNG
ALIGNMENT_INPUTS = layers.ALIGNMENT_INPUTS


def _named(name: str) -> Callable[[Path], bool]:
    def predicate(path: Path) -> bool:
        return bool(path) and path[-1] == name

    return predicate


def _never(path: Path) -> bool:
    del path
    return False


@dataclasses.dataclass(frozen=True)
class Options:
    """How a converted model learns.

    Attributes:
      rule: the rule of every converted layer (``wtfree.rules.names()``).
      output_rule: the output layer's rule (default: ``rule``).
      feedback_scale: a stored B is drawn like W, times this.
      keep_bp: ``keep_bp(path) -> bool``: layers kept on backprop (e.g. a paper's first layer).
      is_output: ``is_output(path) -> bool``: the output layer (default: named ``output``).
      is_input: ``is_input(path) -> bool``: layers that read the network's input; their B sends
        no error anywhere, so they are computed by backprop (the same W gradient) and store no
        B. Default: none is known (a layer fed one of the model's arguments unchanged is
        recognized anyway).
      mirror_noise: the mirror noise's distribution (``rules.MIRROR_NOISES``).
      alignment_input: what the alignment losses read: ``activations`` (the layer's input) or a
        noise distribution (``normal``, ``uniform``).
      outputs: for dfa, the width of the model's output (each layer's B maps it to the layer's
        input).
    """

    rule: str
    output_rule: str | None = None
    feedback_scale: float = 1.0
    keep_bp: Callable[[Path], bool] = _never
    is_output: Callable[[Path], bool] = _named("output")
    is_input: Callable[[Path], bool] = _never
    mirror_noise: str = "normal"
    alignment_input: str = "activations"
    outputs: int | None = None

    def __post_init__(self):
        for name in {self.rule, self.output_rule or self.rule}:
            rules.get(name)
        layers.check_noise_options(self.mirror_noise, self.alignment_input)
        for name in {self.rule, self.output_rule or self.rule}:
            if rules.get(name).block_wise:
                raise ValueError(
                    f"rule {name!r}: a converted model has no residual blocks to route the error "
                    "between; use dfa"
                )
            if rules.get(name).direct and not self.outputs:
                raise ValueError(f"rule {name!r} needs outputs=<the model's output width>")

    def rule_at(self, path: Path) -> str:
        """The rule name of the layer at ``path``."""
        if self.keep_bp(path):
            return "bp"
        if self.is_output(path):
            return self.output_rule or self.rule
        return self.rule

    def needs_output_error(self) -> bool:
        """Whether a train step must first compute the error at the output and pass it as
        ``output_error`` (dfa: the hidden layers get it through their own B)."""
        return any(rules.get(name).direct for name in {self.rule, self.output_rule or self.rule})

    def kinds(self) -> set[str]:
        """How the model's B learn (``rules.Rule.feedback``)."""
        return rules.feedback_kinds(self.rule, self.output_rule)


def convert(model: nn.Module, rule: str, **options: Any) -> "Converted":
    """Returns ``model`` with its linear layers computed by ``rule``.

    Example::

      model = wtfree.convert(MyCNN(), "kp")
      variables = model.init(rng, x)   # {"params", "feedback", "trained_feedback", ...}
      logits = model.apply(variables, x)

    Args:
      model: any linen module (see this module's docstring for the contract).
      rule: the learning rule's name.
      **options: the fields of :class:`Options` besides ``rule``.

    Returns:
      A linen module with ``model``'s variables at the same paths, plus ``feedback``.
    """
    return Converted(model, Options(rule, **options))


class Converted(nn.Module):
    """``model`` whose linear layers are computed by ``options.rule`` (see :func:`convert`)."""

    model: nn.Module
    options: Options

    def setup(self):
        # The model's variables stay where the model puts them, not under "model/".
        nn.share_scope(self, self.model)

    def __call__(self, *args, output_error: Array | None = None, **kwargs):
        """Calls the model. ``output_error``: for dfa, the loss's gradient at the model's output
        (``wtfree.make_train_step`` computes it with a first forward pass); without it the
        forward pass is the same and no error reaches the hidden layers."""
        inputs = [a for a in jax.tree.leaves((args, kwargs)) if isinstance(a, jax.Array)]
        interceptor = partial(_intercept, self.options, inputs, output_error)
        with nn.intercept_methods(interceptor):
            return self.model(*args, **kwargs)


# -- the interceptor ----------------------------------------------------------------------------


def _intercept(options: Options, inputs: Sequence[Array], error, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or getattr(module, "_wtfree_converting", False):
        return next_fun(*args, **kwargs)
    own = isinstance(module, layers._RuleLinear)
    layer = None if own else _layer_type(module)
    if not own and layer is None:
        return next_fun(*args, **kwargs)
    path = tuple(module.path)
    x = args[0] if args else None
    is_input = options.is_input(path) or any(x is a for a in inputs)
    name = "bp" if is_input else options.rule_at(path)
    if rules.get(name).direct:
        # DFA: x's error is e B, nothing through W. The rule's own op is backprop's (W learns
        # locally) and it stores no B shaped like W, so no angle of W to itself is measured.
        args = (_direct_input(module, options, x, error), *args[1:])
    if own:
        fields = {
            "rule": name,
            "feedback_scale": options.feedback_scale,
            "input_layer": is_input,
            "mirror_noise": options.mirror_noise,
            "alignment_input": options.alignment_input,
        }
        with _swapped(module, **fields):
            return next_fun(*args, **kwargs)
    rule = rules.get(name)
    if layer is _EINSUM:
        return _einsum(module, options, rule, is_input, next_fun, *args, **kwargs)
    base = layer.base_op(module)

    def op(lhs, rhs, *op_args, **op_kwargs):
        f = lambda x_, w_: base(x_, w_, *op_args, **op_kwargs)  # noqa: E731
        return _apply(module, options, rule, layer, f, lhs, rhs, is_input)

    with _swapped(module, _wtfree_converting=True, **layer.hook(op)):
        y = next_fun(*args, **kwargs)
    return y


def _direct_input(module: nn.Module, options: Options, x: Array, error: Array | None) -> Array:
    """x, whose error in the backward pass is ``error @ B`` (DFA); B, shape
    ``(outputs, units)``, is drawn with std 1/sqrt(units), as ``layers.DirectFeedback``'s."""
    shape = (options.outputs, math.prod(x.shape[1:]))
    init = nn.initializers.variance_scaling(1.0, "fan_out", "normal")
    b = module.variable(
        layers.FEEDBACK, DIRECT_KERNEL, lambda: init(module.make_rng("params"), shape)
    ).value
    if error is None:
        # No output error given: the layers below get none (never one through W^T).
        error = jnp.zeros((x.shape[0], options.outputs), x.dtype)
    return rules.direct_feedback_input(x, lax.stop_gradient(error), b)


@contextlib.contextmanager
def _swapped(module: nn.Module, **fields):
    """Sets a bound module's fields for one call. Its dataclass is frozen, and a clone would
    need a scope of its own; the call's variables must stay the module's."""
    old = {k: module.__dict__.get(k, _MISSING) for k in fields}
    try:
        for k, v in fields.items():
            object.__setattr__(module, k, v)
        yield
    finally:
        for k, v in old.items():
            if v is _MISSING:
                object.__delattr__(module, k)
            else:
                object.__setattr__(module, k, v)


_MISSING = object()


@dataclasses.dataclass(frozen=True)
class _Layer:
    """What a stock layer type needs: its linear op, how to swap it, how its kernel is drawn."""

    base_op: Callable[[nn.Module], Callable]
    hook: Callable[[Callable], dict]
    # The shape kernel_init is called with, given W's shape and the module (DenseGeneral
    # draws a flat matrix and reshapes it).
    init_shape: Callable[[nn.Module, tuple[int, ...]], tuple[int, ...]]


def _dot_general(module):
    if module.dot_general_cls is not None:
        return module.dot_general_cls()
    return module.dot_general or lax.dot_general


def _conv_general_dilated(module):
    if module.conv_general_dilated_cls is not None:
        return module.conv_general_dilated_cls()
    return module.conv_general_dilated or lax.conv_general_dilated


def _same(module, shape):
    del module
    return shape


def _dense_general_shape(module, shape):
    # Batch and contracted axes flattened together, features together, as DenseGeneral draws W.
    n_in = len(shape) - len(_tuple(module.features))
    return (math.prod(shape[:n_in]), math.prod(shape[n_in:]))


def _tuple(x):
    return tuple(x) if isinstance(x, Sequence) else (x,)


def _dot_general_hook(op):
    return {"dot_general_cls": lambda: op}


_DENSE = _Layer(_dot_general, _dot_general_hook, _same)
_DENSE_GENERAL = _Layer(_dot_general, _dot_general_hook, _dense_general_shape)
_CONV = _Layer(_conv_general_dilated, lambda op: {"conv_general_dilated_cls": lambda: op}, _same)
_EINSUM = _Layer(lambda module: jnp.einsum, lambda op: {}, _same)


def _layer_type(module: nn.Module) -> _Layer | None:
    if isinstance(module, nn.Dense):
        return _DENSE
    if isinstance(module, nn.DenseGeneral):
        return _DENSE_GENERAL
    if isinstance(module, nn.Conv) and module.shared_weights:
        return _CONV
    if isinstance(module, nn.Einsum):
        return _EINSUM
    return None


def _apply(
    module, options: Options, rule: rules.Rule, layer: _Layer, f, x, w, is_input: bool
) -> Array:
    """The rule's ``f(x, W)`` for a stock layer whose (promoted) kernel is ``w``. An input
    layer (``is_input``) is on backprop and has no B: its weight angle, W's to itself, is not
    measured, as wtfree's own input layers' is not."""
    shape = layer.init_shape(module, w.shape)

    def init_feedback():
        b = module.kernel_init(module.make_rng("params"), shape, module.param_dtype)
        b = options.feedback_scale * jnp.reshape(b, w.shape)
        return b

    mask = getattr(module, "mask", None)
    if mask is not None:
        # A masked conv's W is kernel * mask (the stock layer does it); its B is masked alike.
        f = _masked_feedback(f, mask)
    y = layers.apply_rule(
        module,
        f,
        x,
        w,
        rule=rule,
        init_feedback=init_feedback,
        # The sign rules' scale: W's std under flax's default kernel_init (lecun_normal).
        std=layers.init_std(1.0, "fan_in", shape),
        input_layer=is_input,
        feedback_name=FEEDBACK_KERNEL,
        mirror_noise=options.mirror_noise if layers.mirroring(module) else None,
        alignment_input=options.alignment_input,
        dtype=w.dtype,
        sow_at_init=False,
    )
    return module.perturb("delta", y, collection=layers.PERTURBATIONS)


def _masked_feedback(f, mask):
    # Masking the kernel argument is idempotent on W (already masked) and masks B.
    return lambda x, w: f(x, w * jnp.asarray(mask, w.dtype))


def _einsum(
    module: nn.Einsum, options: Options, rule, is_input: bool, next_fun, inputs, einsum_str=None
):
    """``nn.Einsum.__call__`` with its einsum computed by the rule (it has no op to swap)."""
    einsum_str = nn.merge_param("einsum_str", module.einsum_str, einsum_str)
    einsum_str = einsum_str.replace(" ", "")
    if "->" not in einsum_str or einsum_str.count(",") != 1:
        return next_fun(inputs, einsum_str)  # the stock layer's own checks and messages
    kernel = module.param("kernel", module.kernel_init, module.shape, module.param_dtype)
    if module.use_bias:
        bias_shape, broadcasted_bias_shape = module._get_bias_shape(einsum_str, inputs, kernel)
        bias = module.param("bias", module.bias_init, bias_shape, module.param_dtype)
    else:
        bias = None
    inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
    f = partial(
        _einsum_op,
        einsum_str,
        precision=module.precision,
        preferred_element_type=module.preferred_element_type,
    )
    y = _apply(module, options, rule, _EINSUM, f, inputs, kernel, is_input)
    if bias is not None:
        y += jnp.reshape(bias, broadcasted_bias_shape)
    return y


def _einsum_op(einsum_str, x, w, *, precision, preferred_element_type):
    return jnp.einsum(
        einsum_str, x, w, precision=precision, preferred_element_type=preferred_element_type
    )


__all__ = ["DIRECT_KERNEL", "FEEDBACK_KERNEL", "Converted", "Options", "convert"]
