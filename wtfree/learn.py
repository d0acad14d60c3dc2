"""Training a converted model in one's own loop: the optimizer, the mirror step, the alignment
loss and one train step that does all a rule needs. Plain functions: no mesh, no config."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from wtfree import layers, optim, rules
from wtfree.linen import ALIGNMENT_RNG, MIRROR_RNG, Converted

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
        if path in flags:
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


@dataclasses.dataclass(frozen=True)
class Mirror:
    """The weight-mirror step's settings (Akrout et al. 2019, eqs. 6-11).

    Attributes:
      learning_rate: :math:`\\eta`; None: :math:`\\lambda / (n\\sigma^2)` for a mirror batch of
        n examples, which settles B at W itself in every layer (B's fixed point is
        :math:`\\eta n \\sigma^2 / \\lambda` times W).
      decay: :math:`\\lambda`; B averages W over the last ``every / decay`` steps.
      noise_std: :math:`\\sigma`, the noise's std (its distribution is the model's
        ``mirror_noise`` option).
      every: one mirror step before every ``every``-th train step.
    """

    learning_rate: float | None = None
    decay: float = 0.1
    noise_std: float = 1.0
    every: int = 1


def mirror_step(
    model: Converted, variables: Variables, inputs: tuple, rng: Array, mirror: Mirror = Mirror()
) -> dict:
    r"""One mirror step: every wm layer's B moves along the Hebbian product of noise and echo.

    .. math::
      B \leftarrow B + \eta\sigma^2 H - \lambda B, \qquad H = J_W f(z, \cdot)^\top f(z, W)
      \;(= z^\top z W \text{ for dense}),

    with z unit-variance noise shaped like the layer's input (``rules.hebbian``; a convolution's
    H is averaged over output positions).

    Args:
      model: a converted model.
      variables: its variables.
      inputs: the model's positional inputs (a batch; only their shapes matter for the noise,
        the forward values are unused).
      rng: the key the noise is drawn from.
      mirror: the settings.

    Returns:
      ``variables`` with the new B.
    """
    _, sown = model.apply(variables, *inputs, rngs={MIRROR_RNG: rng}, mutable=[layers.MIRROR])
    hebbian = traverse_util.flatten_dict(dict(sown.get(layers.MIRROR, {})))
    n = jax.tree.leaves(inputs)[0].shape[0]
    rate = mirror.learning_rate
    if rate is None:
        rate = mirror.decay / (n * mirror.noise_std**2)
    feedback = traverse_util.flatten_dict(dict(variables["feedback"]))
    for path, h in hebbian.items():
        feedback[path] = rules.apply_hebbian(
            feedback[path],
            h,
            learning_rate=rate,
            decay=mirror.decay,
            noise_std=mirror.noise_std,
        )
    return {**variables, "feedback": traverse_util.unflatten_dict(feedback)}


@dataclasses.dataclass(frozen=True)
class Alignment:
    """The alignment losses' settings (Kunin et al. 2020; ``rules.alignment``).

    Attributes:
      coefficients: ``{rule name: {"alpha": ..., ...}}``; missing ones: the authors' defaults.
      noise_std: the std the losses' noise stands for, when the model's ``alignment_input`` is a
        noise distribution (the primitives that read x scale by its square).
      positions: ``sum`` (the authors') or ``mean`` over a convolution's output positions.
    """

    coefficients: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    noise_std: float = 1.0
    positions: str = "sum"


def alignment_loss(model: Converted, sown: Variables, alignment: Alignment = Alignment()) -> Array:
    """The sum over layers of their alignment losses, from what an apply sowed.

    Args:
      model: the converted model.
      sown: the mutable collections of an apply with ``mutable=[layers.ALIGNMENT_LOSS]``.
      alignment: the settings.

    Returns:
      The scalar loss; its gradient w.r.t. ``feedback`` is B's update direction.
    """
    noisy = model.options.alignment_input != "activations"
    scale = alignment.noise_std**2 if noisy else 1.0
    values = sown.get(layers.ALIGNMENT_LOSS, {})
    return rules.alignment.total_loss(values, alignment.coefficients, scale, alignment.positions)


def _image(batch):
    return (batch["image"],)


def make_train_step(
    model: Converted,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], Array],
    *,
    inputs: Callable[[Any], tuple] = _image,
    mirror: Mirror = Mirror(),
    alignment: Alignment = Alignment(),
) -> Callable:
    """Returns ``train_step(state, batch, rng) -> (state, measurements)``, pure and jittable.

    It does everything the model's rules need: the mirror step first (wm), the task loss's
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
      mirror: the mirror step's settings (used when a layer's rule is wm).
      alignment: the alignment losses' settings (used when a rule is sa, aa, ia or wm_reg).
    """
    kinds = model.options.kinds()
    mutable = [layers.ALIGNMENT_LOSS] if rules.LOSS in kinds else []

    def train_step(state, batch, rng):
        variables = dict(state["variables"])
        rng_mirror, rng_feedback, rng_alignment = jax.random.split(rng, 3)
        if rules.MIRROR in kinds:
            mirrored = mirror_step(model, variables, inputs(batch), rng_mirror, mirror)
            due = state["step"] % mirror.every == 0
            variables["feedback"] = jax.tree.map(
                lambda new, old: jnp.where(due, new, old),
                mirrored["feedback"],
                variables["feedback"],
            )
        trainable = {"params": variables["params"], "feedback": variables.get("feedback", {})}

        def total_loss(trainable):
            rngs = {layers.FEEDBACK_RNG: rng_feedback, ALIGNMENT_RNG: rng_alignment}
            outputs, sown = model.apply(
                {**variables, **trainable}, *inputs(batch), rngs=rngs, mutable=mutable
            )
            task = loss_fn(outputs, batch)
            aligning = alignment_loss(model, sown, alignment) if mutable else 0.0
            return task + aligning, {"loss": task, "alignment_loss": aligning}

        grads, measurements = jax.grad(total_loss, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        variables.update(trainable)
        new_state = {"step": state["step"] + 1, "variables": variables, "opt_state": opt_state}
        return new_state, measurements

    return train_step


def init_train_state(variables: Variables, tx: optax.GradientTransformation) -> dict:
    """``{"step", "variables", "opt_state"}`` for :func:`make_train_step`; only ``params``,
    ``feedback`` and ``trained_feedback`` of ``variables`` are kept."""
    kept = {k: v for k, v in variables.items() if k in ("params", "feedback")}
    kept.setdefault("feedback", {})
    return {
        "step": jnp.zeros((), jnp.int32),
        "variables": kept,
        "opt_state": tx.init(kept),
    }
