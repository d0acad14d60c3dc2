"""B trained by the weight-mirror step (wm): the Hebbian product of noise and its echo."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from wtfree import layers, rules
from wtfree.kinds import FROZEN, Feedback, Kind, LayerCall, StateStep

Array = jax.Array
MIRROR_RNG = layers.MIRROR_RNG


class MirroredFeedback(Feedback):
    """B moved by the weight-mirror step (``wtfree.nnx.mirror_step``), not by the optimizer."""


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
      per_layer_batch: each layer gets its own number of noise vectors, the fewest that leave
        its B as noisy as the noisiest layer's at the whole batch (:func:`hebbian_products`);
        False: every layer gets the whole batch.
    """

    learning_rate: float | None = None
    decay: float = 0.1
    noise_std: float = 1.0
    every: int = 1
    per_layer_batch: bool = False


def hebbian_products(apply: Callable[[], Any], batch_size: int, per_layer_batch: bool) -> Any:
    r"""``apply()``, a mirror apply returning the sown Hebbian products, with each layer's batch.

    Per layer (``per_layer_batch``), layer l of fan-in :math:`d_l` and :math:`P_l` output
    positions draws

    .. math::
      n_l = \left\lceil \frac{\lambda}{2 - \lambda}
            \frac{d_l + \kappa - 2}{P_l\, \varepsilon} \right\rceil, \qquad
      \varepsilon = \max_l \frac{\lambda}{2 - \lambda} \frac{d_l + \kappa - 2}{n P_l},
      \quad\text{so}\quad
      n_l = \left\lceil n \frac{(d_l + \kappa - 2) / P_l}{\max_k (d_k + \kappa - 2) / P_k}
            \right\rceil

    noise vectors (``rules.mirror_batch_size``; :math:`\varepsilon` is ``rules.mirror_error``
    of the noisiest layer at the whole batch n, which keeps n): every B sits as far from W by
    noise as the noisiest one would with n vectors, at a fraction of the work. The decay
    cancels, so the sizes hold for any decay (0 included: there B sums the products). Each layer's
    Hebbian product is scaled to n vectors (``layers.mirror_batch_sizes``), so the learning
    rate :math:`\lambda / (n\sigma^2)` still settles every B at W. The layers' fan-ins and
    positions come from an abstract first apply (``jax.eval_shape``; no work runs).

    Args:
      apply: ``() -> sown``, the model applied in mirror mode on a batch of ``batch_size``.
      batch_size: n.
      per_layer_batch: size each layer's batch; False: ``apply()`` as it is.

    Returns:
      What ``apply()`` returns.
    """
    if not per_layer_batch:
        return apply()
    layers_seen = []

    def record(fan_in, positions, noise):
        layers_seen.append((fan_in, positions, noise))
        return batch_size

    with layers.mirror_batch_sizes(record):
        jax.eval_shape(apply)
    # At decay 1, lambda / (2 - lambda) = 1: the ratio of the layers' errors, which any decay
    # scales alike.
    error = max(
        (rules.mirror_error(1.0, d, batch_size, positions=p, noise=z) for d, p, z in layers_seen),
        default=0.0,
    )
    if error <= 0:  # no mirrored layer, or none with noise in its B (d = 1, Rademacher)
        return apply()

    def size(fan_in, positions, noise):
        return rules.mirror_batch_size(1.0, fan_in, error, positions=positions, noise=noise)

    with layers.mirror_batch_sizes(size):
        return apply()


def mirror_step(
    model: Any, variables: Any, inputs: tuple, rng: Array, mirror: Mirror = Mirror()
) -> dict:
    r"""One mirror step: every wm layer's B moves along the Hebbian product of noise and echo.

    .. math::
      B \leftarrow B + \eta\sigma^2 H - \lambda B, \qquad H = J_W f(z, \cdot)^\top f(z, W)
      \;(= z^\top z W \text{ for dense}),

    with z unit-variance noise shaped like the layer's input (``rules.hebbian``; a convolution's
    H is averaged over output positions): the batch of ``inputs``, or with
    ``mirror.per_layer_batch`` each layer's own share of it (:func:`hebbian_products`).

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
    n = jax.tree.leaves(inputs)[0].shape[0]

    def apply():
        _, sown = model.apply(variables, *inputs, rngs={MIRROR_RNG: rng}, mutable=[layers.MIRROR])
        return sown.get(layers.MIRROR, {})

    sown = hebbian_products(apply, n, mirror.per_layer_batch)
    hebbian = traverse_util.flatten_dict(dict(sown))
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


def _sow(call: LayerCall) -> None:
    """In a mirror apply (``mirror_noise`` given: the noise's distribution), a layer sows its
    Hebbian product (``layers._mirror_hebbian``, noise drawn from ``layers.MIRROR_RNG``) in
    ``layers.MIRROR`` under B's name; an input layer, whose B sends no error anywhere, is not
    mirrored."""
    noise = call.settings.get("mirror_noise")
    if noise is None or call.input_layer:
        return
    module = call.module
    rng = module.make_rng(MIRROR_RNG)
    h = layers._mirror_hebbian(call.f, call.x, call.w, rng, noise)
    module.sow(layers.MIRROR, call.feedback_name, h, reduce_fn=layers.keep_last)


def _convert_options(config) -> dict:
    """The model's mirror noise distribution (``mirror_noise``: convert's option, and the field
    of wtfree's own models), from ``config.mirror.noise``."""
    return {"mirror_noise": config.get("mirror", {}).get("noise", "normal")}


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
        per_layer_batch=m.get("per_layer_batch", False),
    )
    return StateStep(step, every=m.every, pretrain=m.pretrain_batches)


# The optimizer leaves B alone: the mirror step moves it.
KIND = Kind(
    "mirror",
    stores_feedback=True,
    label=FROZEN,
    nnx_variable=MirroredFeedback,
    sow=_sow,
    settings_name="mirror",
    default_settings=Mirror,
    convert_options=_convert_options,
    before_step=_before_step,
    section="mirror",
    make_state_step=_make_state_step,
)
