"""wtfree.nnx.convert: an NNX model's Linear, LinearGeneral, Conv and Einsum layers computed by a
learning rule.

NNX modules are mutable, so conversion happens in place: each stock layer gets its B as an
attribute ``feedback_kernel`` (a :class:`Feedback` variable, of the subtype that says how it
learns) and its linear op (``dot_general``, ``conv_general_dilated``, ``einsum_op``, all
injectable in NNX) is replaced by the rule's. Train W and a KP B with one optimizer::

  model = wtfree.nnx.convert(MyModel(rngs=nnx.Rngs(0)), "kp")
  wrt = wtfree.nnx.trainable(model)            # (nnx.Param, TrainedFeedback)
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=wrt)
  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, batch)
  optimizer.update(model, grads)

Rules whose B learns by a mirror step or an alignment loss (wm, sa, aa, ia, wm_reg) and DFA are
not offered here yet: they are refused with one line (for them, convert the linen model, or a
linen model inside ``nnx.bridge.ToNNX``).
"""

import contextvars
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from wtfree import kinds, layers, rules
from wtfree.kinds import Feedback
from wtfree.kinds.fixed import FixedFeedback
from wtfree.kinds.gradient import TrainedFeedback
from wtfree.linen import Options

Array = jax.Array


_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.Einsum)
# The layer whose op is running: the swapped op reads its B, rule and rng from it.
_CURRENT: contextvars.ContextVar = contextvars.ContextVar("wtfree_nnx_layer")


def trainable(model: nnx.Module) -> tuple:
    """The variable types an ``nnx.Optimizer`` of ``model`` trains: W, and B where KP trains it."""
    del model
    return (nnx.Param, TrainedFeedback)


def convert(model: nnx.Module, rule: str, *, rngs: nnx.Rngs | int = 0, **options: Any):
    """Converts ``model``'s stock linear layers to ``rule``, in place, and returns it.

    Args:
      model: any NNX module.
      rule: the rule's name (``bp``, ``fa``, ``usf``, ``frsf``, ``brsf``, ``kp``, ``shallow``).
      rngs: where B and brSF's magnitudes are drawn from (an int seeds ``nnx.Rngs``).
      **options: the fields of ``wtfree.Options`` besides ``rule`` (``output_rule``,
        ``feedback_scale``, ``keep_bp``, ``is_output``); paths are tuples of attribute names.

    Returns:
      ``model``.
    """
    options = Options(rule, **options)
    for name in {options.rule, options.output_rule or options.rule}:
        kind = kinds.get(rules.get(name).feedback)
        if kind.stores_feedback and kind.nnx_variable is None:
            raise ValueError(
                f"rule {name!r}: wtfree.nnx offers rules whose B is none, fixed or trained with W "
                "(bp, fa, usf, frsf, brsf, kp, shallow); use wtfree.convert for the others"
            )
    if isinstance(rngs, int):
        rngs = nnx.Rngs(params=rngs, feedback=rngs + 1)
    for path, module in list(nnx.iter_graph(model)):
        if isinstance(module, _LAYERS) and not getattr(module, "wtfree_converted", False):
            _convert_layer(module, options.rule_at(tuple(map(str, path))), options, rngs)
    return model


_CLASSES: dict[type, type] = {}


def _converted_class(cls: type) -> type:
    """``cls`` whose ``__call__`` makes the layer current for its swapped op (a subclass with
    the same layout, so an instance's class can be switched in place)."""
    if cls not in _CLASSES:

        def __call__(self, *args, **kwargs):
            token = _CURRENT.set(self)
            try:
                return super(converted, self).__call__(*args, **kwargs)
            finally:
                _CURRENT.reset(token)

        namespace = {"__module__": cls.__module__, "__slots__": (), "__call__": __call__}
        converted = type(cls.__name__, (cls,), namespace)
        converted.wtfree_converted = True
        _CLASSES[cls] = converted
    return _CLASSES[cls]


def _convert_layer(module, name: str, options: Options, rngs: nnx.Rngs) -> None:
    rule = rules.get(name)
    if name == "bp":
        return
    w = module.kernel[...]
    if isinstance(module, nnx.LinearGeneral):
        n_out = len(module.out_features)
        flat = (math.prod(w.shape[:-n_out]), math.prod(w.shape[-n_out:]))
    else:
        flat = w.shape
    module.wtfree_rule = name
    # The sign rules' scale: W's std under flax's default kernel_init (lecun_normal).
    module.wtfree_std = layers.init_std(1.0, "fan_in", flat)
    if rule.stores_feedback:
        b = nnx.initializers.lecun_normal()(rngs.params(), flat, w.dtype).reshape(w.shape)
        variable = kinds.get(rule.feedback).nnx_variable
        module.feedback_kernel = variable(options.feedback_scale * b)
    if rule.needs_rng:
        module.wtfree_rngs = nnx.Rngs(feedback=rngs.feedback())
    if isinstance(module, (nnx.Linear, nnx.LinearGeneral)):
        cls = getattr(module, "dot_general_cls", None)
        module.wtfree_op = cls() if cls is not None else (module.dot_general or lax.dot_general)
        if cls is not None:
            module.dot_general_cls = None
        module.dot_general = _rule_op
    elif isinstance(module, nnx.Conv):
        module.wtfree_op = module.conv_general_dilated
        module.conv_general_dilated = _rule_op
    else:
        module.wtfree_op = module.einsum_op
        module.einsum_op = _rule_einsum
    module.__class__ = _converted_class(type(module))


def _rule_op(lhs, rhs, *args, **kwargs):
    layer = _CURRENT.get()

    def f(x, w):
        return layer.wtfree_op(x, w, *args, **kwargs)

    return _apply(layer, f, lhs, rhs)


def _rule_einsum(einsum_str, lhs, rhs, **kwargs):
    layer = _CURRENT.get()

    def f(x, w):
        return layer.wtfree_op(einsum_str, x, w, **kwargs)

    return _apply(layer, f, lhs, rhs)


def _apply(layer, f, x, w) -> Array:
    rule = rules.get(layer.wtfree_rule)
    if rule.stores_feedback:
        b = jnp.asarray(layer.feedback_kernel[...], w.dtype)
        mask = getattr(layer, "mask", None)
        if mask is not None:
            b = b * jnp.asarray(mask, w.dtype)  # a masked conv's B is masked as its W
    else:
        b = jnp.asarray(layer.wtfree_std, w.dtype)
    rng = layer.wtfree_rngs.feedback() if rule.needs_rng else None
    return rule.apply(f, x, w, b, rng)


__all__ = ["Feedback", "FixedFeedback", "TrainedFeedback", "convert", "trainable"]
