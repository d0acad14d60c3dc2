"""B trained by the optimizer on its rule's alignment loss (sa, aa, ia, wm_reg; Kunin et al.)."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from wtfree import layers, rules
from wtfree.kinds import ALIGN, Kind

Array = jax.Array


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


KIND = Kind(
    "loss", stores_feedback=True, label=ALIGN, mutable=(layers.ALIGNMENT_LOSS,), loss=alignment_loss
)
