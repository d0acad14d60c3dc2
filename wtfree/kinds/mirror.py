"""B trained by the weight-mirror step (wm): the Hebbian product of noise and its echo."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from wtfree import layers, rules
from wtfree.kinds import FROZEN, Kind, StateStep

Array = jax.Array
MIRROR_RNG = layers.MIRROR_RNG


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
    model: Any, variables: Any, inputs: tuple, rng: Array, mirror: Mirror = Mirror()
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


def _before_step(model, variables, inputs, rng, settings, step):
    """The mirror step, on the steps ``settings.every`` divides."""
    mirrored = mirror_step(model, variables, inputs, rng, settings)
    due = step % settings.every == 0
    feedback = jax.tree.map(
        lambda new, old: jnp.where(due, new, old), mirrored["feedback"], variables["feedback"]
    )
    return {**variables, "feedback": feedback}


def _make_state_step(model, mesh, config, image_shape) -> StateStep:
    """train.py's mirror step (``steps.make_mirror_step``, sharded over ``mesh``) from
    ``config.mirror``: a mirror batch after every ``mirror.every``-th train step and
    ``mirror.pretrain_batches`` of them before training."""
    from wtfree import steps  # steps builds on the layers this module's users import first

    m = config.mirror
    step = steps.make_mirror_step(
        model,
        mesh,
        (m.batch_size, *image_shape),
        learning_rate=m.learning_rate,
        decay=m.decay,
        noise_std=m.noise_std,
        noise=m.get("noise", "normal"),
    )
    return StateStep(step, every=m.every, pretrain=m.pretrain_batches)


# The optimizer leaves B alone: the mirror step moves it.
KIND = Kind(
    "mirror",
    stores_feedback=True,
    label=FROZEN,
    before_step=_before_step,
    section="mirror",
    make_state_step=_make_state_step,
)
