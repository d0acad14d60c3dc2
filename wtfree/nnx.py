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

Rules whose B learns by the weight mirror (wm) or by an alignment loss (sa, aa, ia, wm_reg)
take one more call, as in the linen path. The mirror step moves B in place::

  wtfree.nnx.mirror_step(model, (x,), rng, wtfree.Mirror())   # before each train step

and the alignment losses are added to the task loss by wrapping it; the optimizer then moves an
aligned B (``AlignedFeedback``, in ``trainable``) along their gradient alone::

  loss = wtfree.nnx.with_alignment_loss(loss_fn, wtfree.Alignment())
  grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(model, batch)

The layers sow what these read through the same hooks the linen path uses (``kinds.Kind.sow``).
DFA is not offered here: it is refused with one line (convert a linen model for it).
"""

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from wtfree import kinds, layers, rules
from wtfree.kinds import Feedback
from wtfree.kinds import mirror as mirror_kind
from wtfree.kinds.fixed import FixedFeedback
from wtfree.kinds.gradient import TrainedFeedback
from wtfree.kinds.loss import AlignedFeedback, Alignment
from wtfree.kinds.mirror import Mirror, MirroredFeedback
from wtfree.linen import Options

Array = jax.Array


_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.Einsum)
# The layer whose op is running: the swapped op reads its B, rule and rng from it.
_CURRENT: contextvars.ContextVar = contextvars.ContextVar("wtfree_nnx_layer")


def trainable(model: nnx.Module) -> tuple:
    """The variable types an ``nnx.Optimizer`` of ``model`` trains: W, B where KP trains it
    (W's gradient) and B trained by an alignment loss (its gradient, with
    :func:`with_alignment_loss`; the task loss gives it none). For the aligned B's own
    transform, as ``wtfree.optimizer``'s ``alignment_tx``, give it an optimizer of its own
    (``wrt=AlignedFeedback``) and this one ``wrt=(nnx.Param, TrainedFeedback)``."""
    del model
    return (nnx.Param, TrainedFeedback, AlignedFeedback)


def convert(model: nnx.Module, rule: str, *, rngs: nnx.Rngs | int = 0, **options: Any):
    """Converts ``model``'s stock linear layers to ``rule``, in place, and returns it.

    Args:
      model: any NNX module.
      rule: the rule's name (any but dfa and dfa_block, and the settling rules).
      rngs: where B, brSF's magnitudes and the alignment losses' noise are drawn from (an int
        seeds ``nnx.Rngs``).
      **options: the fields of ``wtfree.Options`` besides ``rule`` (``output_rule``,
        ``feedback_scale``, ``keep_bp``, ``is_output``, ``is_input``, ``mirror_noise``,
        ``alignment_input``); paths are tuples of attribute names. A layer ``is_input`` marks
        is computed by backprop and stores no B (its B would send no error anywhere).

    Returns:
      ``model``.
    """
    for name in {rule, options.get("output_rule") or rule}:
        rule_ = rules.get(name)
        kind = kinds.get(rule_.feedback)
        if rule_.direct or (kind.stores_feedback and kind.nnx_variable is None):
            offered = [
                r.name
                for r in rules.RULES.values()
                if not r.direct
                and (not r.stores_feedback or kinds.get(r.feedback).nnx_variable is not None)
            ]
            raise ValueError(
                f"rule {name!r}: wtfree.nnx offers {', '.join(offered)}; use wtfree.convert for "
                "the others"
            )
    options = Options(rule, **options)
    if isinstance(rngs, int):
        rngs = nnx.Rngs(params=rngs, feedback=rngs + 1)
    for path, module in list(nnx.iter_graph(model)):
        if isinstance(module, _LAYERS) and not getattr(module, "wtfree_converted", False):
            path = tuple(map(str, path))
            name = "bp" if options.is_input(path) else options.rule_at(path)
            _convert_layer(module, name, options, rngs, path)
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


def _convert_layer(module, name: str, options: Options, rngs: nnx.Rngs, path: tuple) -> None:
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
    module.wtfree_path = "/".join(path)
    module.wtfree_mirror_noise = options.mirror_noise
    module.wtfree_alignment_input = options.alignment_input
    # The sign rules' scale: W's std under flax's default kernel_init (lecun_normal).
    module.wtfree_std = layers.init_std(1.0, "fan_in", flat)
    if rule.stores_feedback:
        b = nnx.initializers.lecun_normal()(rngs.params(), flat, w.dtype).reshape(w.shape)
        variable = kinds.get(rule.feedback).nnx_variable
        module.feedback_kernel = variable(options.feedback_scale * b)
    if rule.needs_rng or rule.alignment is not None:
        # brSF's draws, and the alignment losses' noise input (drawn at each call).
        module.wtfree_rngs = nnx.Rngs(feedback=rngs.feedback(), alignment=rngs.feedback())
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
    sowing = _SOWING.get()
    if sowing is not None:
        # What the rule's kind sows for its step (the mirror's Hebbian product, the alignment
        # primitives), through the hook the linen path calls (kinds.Kind.sow).
        mirroring = layers.MIRROR in sowing.collections
        settings = {
            "mirror_noise": layer.wtfree_mirror_noise if mirroring else None,
            "alignment_input": layer.wtfree_alignment_input,
        }
        sower = _Sower(layer, sowing)
        call = kinds.LayerCall(sower, rule, f, x, w, b, False, "feedback_kernel", True, settings)
        kinds.get(rule.feedback).sow(call)
        if mirroring:
            # The forward values of a mirror pass are unused: brSF draws nothing there (a
            # draw would advance the layer's rngs inside the abstract pass of per_layer_batch).
            return rule.apply(f, x, w, b, jax.random.key(0) if rule.needs_rng else None)
    rng = layer.wtfree_rngs.feedback() if rule.needs_rng else None
    return rule.apply(f, x, w, b, rng)


# -- what the layers sow for the mirror step and the alignment losses ------------------------


@dataclasses.dataclass
class _Sowing:
    """One pass in which the layers sow: the collections asked for, and what they sowed,
    ``{collection: {layer path: {name: value}}}``. ``rng``: the key the layers' draws fold
    from (the mirror step's); None: each layer's own ``wtfree_rngs``."""

    collections: frozenset
    rng: Array | None = None
    sown: dict = dataclasses.field(default_factory=dict)
    alignment_inputs: dict = dataclasses.field(default_factory=dict)
    draws: int = 0


_SOWING: contextvars.ContextVar = contextvars.ContextVar("wtfree_nnx_sowing", default=None)


@contextlib.contextmanager
def _sowing_into(sowing: _Sowing) -> Iterator[_Sowing]:
    token = _SOWING.set(sowing)
    try:
        yield sowing
    finally:
        _SOWING.reset(token)


class _Sower:
    """What a kind's ``sow`` hook calls on a linen module, for an NNX layer in a sowing pass."""

    def __init__(self, layer, sowing: _Sowing):
        self.layer, self.sowing = layer, sowing

    def is_mutable_collection(self, collection: str) -> bool:
        return collection in self.sowing.collections

    def make_rng(self, stream: str) -> Array:
        del stream
        if self.sowing.rng is None:
            return self.layer.wtfree_rngs.alignment()
        self.sowing.draws += 1
        return jax.random.fold_in(self.sowing.rng, self.sowing.draws)

    def sow(self, collection: str, name: str, value, reduce_fn=None) -> None:
        del reduce_fn  # a layer called twice in one pass keeps its last value, as in linen
        path = self.layer.wtfree_path
        self.sowing.sown.setdefault(collection, {}).setdefault(path, {})[name] = value
        self.sowing.alignment_inputs[path] = self.layer.wtfree_alignment_input


def _converted_layers(model: nnx.Module) -> dict[str, Any]:
    return {
        module.wtfree_path: module
        for _, module in nnx.iter_graph(model)
        if getattr(module, "wtfree_path", None) is not None
    }


def mirror_step(model: nnx.Module, inputs: tuple, rng: Array, mirror: Mirror | None = None) -> None:
    r"""One weight-mirror step, in place: every wm layer's B moves along the Hebbian product.

    .. math::
      B \leftarrow B + \eta\sigma^2 H - \lambda B, \qquad H = J_W f(z, \cdot)^\top f(z, W)
      \;(= z^\top z W \text{ for dense}),

    z unit-variance noise (the ``mirror_noise`` option's distribution) shaped like each layer's
    input in a pass of ``model`` over ``inputs`` (only their shapes matter), as
    ``wtfree.mirror_step`` does for a linen model (``mirror.per_layer_batch`` included).
    ``mirror.every`` is for the caller: run it before every ``every``-th train step.

    Args:
      model: a converted NNX model.
      inputs: the model's positional inputs (a batch).
      rng: the key the noise is drawn from.
      mirror: the settings (None: ``Mirror()``).

    References:
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019, eqs. 6-11.
    """
    mirror = mirror or Mirror()
    converted = _converted_layers(model)
    if not any(
        isinstance(getattr(m, "feedback_kernel", None), MirroredFeedback)
        for m in converted.values()
    ):
        return  # no wm layer: nothing to mirror, and no pass to run
    n = jax.tree.leaves(inputs)[0].shape[0]

    def apply():
        with _sowing_into(_Sowing(frozenset({layers.MIRROR}), rng)) as sowing:
            model(*inputs)
        return sowing.sown.get(layers.MIRROR, {})

    hebbian = mirror_kind.hebbian_products(apply, n, mirror.per_layer_batch)
    rate = mirror.learning_rate
    if rate is None:
        rate = mirror.decay / (n * mirror.noise_std**2)
    for path, sown in hebbian.items():
        layer = converted[path]
        layer.feedback_kernel[...] = rules.apply_hebbian(
            layer.feedback_kernel[...],
            sown["feedback_kernel"],
            learning_rate=rate,
            decay=mirror.decay,
            noise_std=mirror.noise_std,
        )


def with_alignment_loss(
    loss_fn: Callable[..., Array], alignment: Alignment | None = None
) -> Callable[..., Array]:
    r"""``loss_fn`` plus the alignment losses of the converted layers it calls (sa, aa, ia,
    wm_reg; Kunin et al. 2020).

    The returned ``loss(model, *args, **kwargs)`` is :math:`L_\text{task} + \sum_\text{layers}
    R_\text{rule}(B)`; each R sees W and its input with the gradient stopped, and the task loss
    gives B nothing, so in one ``nnx.grad`` W gets the task's gradient alone and B (an
    ``AlignedFeedback``) its alignment loss's alone, as ``wtfree.alignment_loss`` gives a linen
    model's. Noise input (the ``alignment_input`` option) is drawn from each layer's rngs.

    Args:
      loss_fn: ``loss_fn(model, *args, **kwargs) -> scalar``.
      alignment: the losses' settings (None: ``Alignment()``).

    Returns:
      The wrapped loss, of the same signature.
    """
    alignment = alignment or Alignment()

    def loss(model, *args, **kwargs):
        with _sowing_into(_Sowing(frozenset({layers.ALIGNMENT_LOSS}))) as sowing:
            task = loss_fn(model, *args, **kwargs)
        sown = sowing.sown.get(layers.ALIGNMENT_LOSS, {})
        total = jnp.zeros((), jnp.float32)
        for path, values in sown.items():
            noisy = sowing.alignment_inputs[path] != "activations"
            scale = alignment.noise_std**2 if noisy else 1.0
            total = total + rules.alignment.total_loss(
                values, alignment.coefficients, scale, alignment.positions
            )
        return task + total

    return loss


__all__ = [
    "AlignedFeedback",
    "Feedback",
    "FixedFeedback",
    "MirroredFeedback",
    "TrainedFeedback",
    "convert",
    "mirror_step",
    "trainable",
    "with_alignment_loss",
]
