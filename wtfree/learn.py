"""Training a converted model in one's own loop: the optimizer, the mirror step, the alignment
loss and one train step that does all a rule needs. Plain functions: no mesh, no config."""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from wtfree import kinds, layers, optim
from wtfree.kinds.loss import Alignment, alignment_loss
from wtfree.kinds.mirror import Mirror, mirror_step
from wtfree.linen import ALIGNMENT_RNG, Converted

BATCH_STATS = "batch_stats"  # flax.linen.BatchNorm's collection

Array = jax.Array
Variables = Mapping[str, Any]


def optimizer(
    tx: optax.GradientTransformation,
    variables: Variables,
    *,
    alignment_tx: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    r"""``tx`` for W, and for each B what its rule declares.

    The transform acts on ``{"params": ..., "feedback": ...}``:

    - W (``params``) and a B trained with W (Kolen-Pollack: ``trained_feedback`` names it) go
      through ``tx`` together, so B gets exactly W's update rule: same schedule, momentum and
      weight decay, and with KP's equal gradients :math:`B - W` only decays.
    - A B trained by its alignment loss (sa, aa, ia, wm_reg) goes through ``alignment_tx``
      (default ``tx``; give one without weight decay, as the losses carry their own).
    - Every other B (fixed, or moved by :func:`mirror_step`) gets no update.

    Args:
      tx: any optax transform, for W.
      variables: the converted model's ``init`` output (only the paths matter: the output of
        ``jax.eval_shape`` serves).
      alignment_tx: the transform for B trained by an alignment loss.

    Returns:
      An optax transform for ``{"params": ..., "feedback": ...}``.

    References:
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019 (matched weight decay for W and B).
    """
    flags = traverse_util.flatten_dict(dict(variables.get(layers.TRAINED_FEEDBACK, {})))

    def label(path):
        if (*path[:-1], optim.BY_GRADIENT) in flags:
            return optim.TRAIN
        if (*path[:-1], optim.BY_ALIGNMENT_LOSS) in flags:
            return optim.ALIGN
        return optim.FROZEN

    def labels(tree):
        feedback = traverse_util.flatten_dict(dict(tree.get("feedback", {})))
        return {
            "params": jax.tree.map(lambda _: optim.TRAIN, tree["params"]),
            "feedback": traverse_util.unflatten_dict({k: label(k) for k in feedback}),
        }

    transforms = {
        optim.TRAIN: tx,
        optim.ALIGN: alignment_tx or tx,
        optim.FROZEN: optax.set_to_zero(),
    }
    return optax.partition(transforms, labels)


def _image(batch):
    return (batch["image"],)


def make_train_step(
    model: Converted,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], Array],
    *,
    inputs: Callable[[Any], tuple] = _image,
    mirror: Mirror | None = None,
    alignment: Alignment | None = None,
    apply_kwargs: dict | None = None,
    **settings: Any,
) -> Callable:
    """Returns ``train_step(state, batch, rng) -> (state, measurements)``, pure and jittable.

    It does everything the model's rules need: the mirror step first (wm), for dfa a first
    forward pass for the error at the output, the task loss's
    gradient for W (and for KP's B), the alignment loss's gradient for B (sa, aa, ia, wm_reg),
    brSF's draw of feedback magnitudes, then ``tx``'s update. ``state`` is
    ``{"step", "variables", "opt_state"}`` (:func:`init_train_state`); ``tx`` is the output of
    :func:`optimizer`.

    Args:
      model: a converted model.
      tx: the optimizer for ``{"params", "feedback"}``.
      loss_fn: ``loss_fn(outputs, batch) -> scalar``.
      inputs: ``inputs(batch) -> tuple``, the model's positional inputs (default
        ``(batch["image"],)``).
      mirror: the mirror step's settings (used when a layer's rule is wm; None: ``Mirror()``).
      alignment: the alignment losses' settings (used when a rule is sa, aa, ia or wm_reg;
        None: ``Alignment()``).
      apply_kwargs: keyword arguments of every ``model.apply`` of the step, e.g.
        ``{"train": True}`` for a model whose batch norm or dropout reads such a flag.
      **settings: the settings of any other kind, under its ``kinds.Kind.settings_name``
        (``mirror`` and ``alignment`` are these for the weight mirror's and the alignment
        losses' kinds); a kind given none uses its ``default_settings()``.

    Raises:
      ValueError: a keyword in ``settings`` that no kind takes (one line).

    A model with batch norm keeps its ``batch_stats`` in ``state["variables"]``
    (:func:`init_train_state` keeps them); the step updates them as the model's apply does in
    training (the collection is mutable), and the optimizer never sees them.
    """
    apply_kwargs = dict(apply_kwargs or {})
    used = [kinds.get(name) for name in sorted(model.options.kinds())]
    direct = model.options.needs_output_error()
    mutable = [c for kind in used for c in kind.mutable]
    given = {"mirror": mirror, "alignment": alignment, **settings}
    known = {k.settings_name for k in kinds.registered() if k.settings_name}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"make_train_step got {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    # Each used kind's settings, in the order of ``used``.
    chosen = [_settings(kind, given) for kind in used]

    def train_step(state, batch, rng):
        variables = dict(state["variables"])
        rng_before, rng_feedback, rng_alignment = jax.random.split(rng, 3)
        for kind, kind_settings in zip(used, chosen, strict=True):
            variables = kind.before_step(
                model, variables, inputs(batch), rng_before, kind_settings, state["step"]
            )
        trainable = {"params": variables["params"], "feedback": variables.get("feedback", {})}
        stats = [BATCH_STATS] if BATCH_STATS in variables else []

        rngs = {layers.FEEDBACK_RNG: rng_feedback, ALIGNMENT_RNG: rng_alignment}
        kwargs = dict(apply_kwargs)
        if direct:
            # DFA's first pass: the loss's gradient at the output, sent to every layer.
            outputs, _ = model.apply(variables, *inputs(batch), rngs=rngs, mutable=stats, **kwargs)
            kwargs["output_error"] = jax.grad(loss_fn)(outputs, batch)

        def total_loss(trainable):
            outputs, sown = model.apply(
                {**variables, **trainable},
                *inputs(batch),
                rngs=rngs,
                mutable=mutable + stats,
                **kwargs,
            )
            task = loss_fn(outputs, batch)
            aligning = sum(
                kind.loss(model, sown, kind_settings)
                for kind, kind_settings in zip(used, chosen, strict=True)
            )
            updated = {c: sown[c] for c in stats}
            return task + aligning, ({"loss": task, "alignment_loss": aligning}, updated)

        grads, (measurements, updated) = jax.grad(total_loss, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        variables.update(trainable)
        variables.update(updated)
        new_state = {"step": state["step"] + 1, "variables": variables, "opt_state": opt_state}
        return new_state, measurements

    return train_step


def _settings(kind: kinds.Kind, given: Mapping[str, Any]) -> Any:
    """The settings ``kind``'s hooks get: the user's, under the kind's keyword, or its
    defaults (None for a kind without settings)."""
    value = given.get(kind.settings_name) if kind.settings_name else None
    if value is None and kind.default_settings is not None:
        value = kind.default_settings()
    return value


def init_train_state(variables: Variables, tx: optax.GradientTransformation) -> dict:
    """``{"step", "variables", "opt_state"}`` for :func:`make_train_step`: ``params``,
    ``feedback`` and (a model with batch norm) ``batch_stats`` of ``variables`` are kept; the
    optimizer's state covers ``params`` and ``feedback``."""
    kept = {k: v for k, v in variables.items() if k in ("params", "feedback", BATCH_STATS)}
    kept.setdefault("feedback", {})
    trainable = {"params": kept["params"], "feedback": kept["feedback"]}
    return {
        "step": jnp.zeros((), jnp.int32),
        "variables": kept,
        "opt_state": tx.init(trainable),
    }


__all__ = [
    "Alignment",
    "Mirror",
    "alignment_loss",
    "init_train_state",
    "make_train_step",
    "mirror_step",
    "optimizer",
]
