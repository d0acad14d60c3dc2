"""B trained by the optimizer on its rule's alignment loss (sa, aa, ia, wm_reg; Kunin et al.)."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from wtfree import layers, rules
from wtfree.kinds import ALIGN, Feedback, Kind, LayerCall, StepExtra

Array = jax.Array


class AlignedFeedback(Feedback):
    """B trained by the optimizer along its alignment loss's gradient (NNX; the task loss gives
    it none)."""


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


def alignment_loss(model: Any, sown: Any, alignment: Alignment = Alignment()) -> Array:
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


# The measurement train.py's step logs the alignment loss under (the NaN watch adds it).
MEASUREMENT = "train/alignment_loss"
# The random stream (``jax.random.fold_in`` of the state's rng) the losses' noise comes from.
_RNG_STREAM = 3


def step_extra(alignment: Any) -> StepExtra:
    r"""The alignment losses in train.py's train step, from ``config.alignment``.

    The layers sow their alignment primitives and the step minimizes
    :math:`L_\text{task} + \sum_\text{layers} R_\text{rule}(B)`. Each layer's R sees W and its
    input with the gradient stopped and the task loss gives B nothing, so in the one gradient W
    gets the task's alone and B its alignment loss's alone. ``alignment.input`` is
    ``activations`` (the layer's own input) or ``normal`` / ``uniform`` noise of std
    ``alignment.input_std`` (measured at unit variance, and the primitives are quadratic in the
    input: scaled by its square); ``alignment.coefficients`` maps each rule to its alpha, beta,
    gamma (``wtfree.rules.alignment``); ``alignment.positions`` (``sum`` or ``mean``) whether a
    conv's primitives that read x sum or average over its output positions. The model reads
    the same input as a value (its ``alignment_input``, which ``wtfree.trainer.make_model``
    sets from the same config); the step only passes the noise's stream,
    ``layers.ALIGNMENT_RNG``.

    Raises:
      ValueError: ``alignment.input`` is none of ``layers.ALIGNMENT_INPUTS`` (one line).
    """
    source = alignment.input
    if source not in layers.ALIGNMENT_INPUTS:
        allowed = ", ".join(layers.ALIGNMENT_INPUTS)
        raise ValueError(f"alignment.input={source!r}; allowed: {allowed}")

    def rngs(state) -> dict:
        if source == "activations":
            return {}
        rng = jax.random.fold_in(jax.random.fold_in(state["rng"], _RNG_STREAM), state["step"])
        return {layers.ALIGNMENT_RNG: rng}

    scale = 1.0 if source == "activations" else alignment.input_std**2
    coefficients = {k: dict(v) for k, v in dict(alignment.coefficients).items()}
    positions = alignment.get("positions", "sum")

    def loss(sown) -> Array:
        values = sown.get(layers.ALIGNMENT_LOSS, {})
        return rules.alignment.total_loss(values, coefficients, scale, positions)

    return StepExtra(MEASUREMENT, (layers.ALIGNMENT_LOSS,), rngs, loss)


def _sow(call: LayerCall) -> None:
    """Where ``layers.ALIGNMENT_LOSS`` is mutable, a layer sows its rule's alignment primitives
    (``rules.alignment.primitives``) and its number of output positions under the rule's name;
    an input layer, whose B sends no error anywhere, has no alignment loss. The primitives read
    ``alignment_input`` (``activations``, or unit-variance noise of that distribution drawn
    from ``layers.ALIGNMENT_RNG``)."""
    rule, module = call.rule, call.module
    if rule.alignment is None or call.input_layer or not call.sowing:
        return
    if not module.is_mutable_collection(layers.ALIGNMENT_LOSS):
        return
    source = call.settings.get("alignment_input", "activations")
    x, w = call.x, call.w
    x_loss = _alignment_input(module, x, w.dtype, source)
    values = rules.alignment.primitives(call.f, x_loss, w, call.b, rule.alignment.primitives)
    # Output positions (1 for dense), for the train step's per-position mean option.
    _, positions = rules.fan_in_and_positions(call.f, x.shape, w)
    values[rules.alignment.POSITIONS] = jnp.asarray(positions, jnp.float32)
    module.sow(layers.ALIGNMENT_LOSS, rule.name, values, reduce_fn=layers.keep_last)


def _alignment_input(module, x: Array, dtype, source: str):
    """The alignment loss's input: unit-variance noise of distribution ``source`` drawn from
    ``layers.ALIGNMENT_RNG``, or (``activations``) the layer's own input; gradient stopped
    either way."""
    if source == "normal":
        return jax.random.normal(module.make_rng(layers.ALIGNMENT_RNG), x.shape, dtype)
    if source == "uniform":
        half_width = math.sqrt(3.0)  # U(-a, a) has variance a^2 / 3
        rng = module.make_rng(layers.ALIGNMENT_RNG)
        return jax.random.uniform(rng, x.shape, dtype, -half_width, half_width)
    if source != "activations":
        allowed = ", ".join(layers.ALIGNMENT_INPUTS)
        raise ValueError(f"alignment input {source!r}; allowed: {allowed}")
    return lax.stop_gradient(x).astype(dtype)


def _convert_options(config) -> dict:
    """What the model's alignment losses read (``alignment_input``: convert's option, and the
    field of wtfree's own models), from ``config.alignment.input``."""
    return {"alignment_input": config.get("alignment", {}).get("input", "activations")}


def _step_extra(config) -> StepExtra:
    return step_extra(config.alignment)


KIND = Kind(
    "loss",
    stores_feedback=True,
    label=ALIGN,
    nnx_variable=AlignedFeedback,
    sow=_sow,
    settings_name="alignment",
    default_settings=Alignment,
    convert_options=_convert_options,
    mutable=(layers.ALIGNMENT_LOSS,),
    loss=alignment_loss,
    section="alignment",
    step_extra=_step_extra,
)
