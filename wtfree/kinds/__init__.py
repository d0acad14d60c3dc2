"""How B learns: one object per kind (none, fixed, gradient, mirror, loss), each with the hooks
the layer, the optimizer, the train step and NNX need. Adding a kind is one file here and one
line in ``KINDS``; a rule names its kind (``rules.Rule.feedback``)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

# What the optimizer does with a B: FROZEN (no update), TRAIN (W's own transform, as W) or
# ALIGN (the alignment transform, along its alignment loss's gradient).
from wtfree.optim import ALIGN, FROZEN, TRAIN


class Feedback(nnx.Variable):
    """A layer's feedback weights B, shaped like its kernel W (NNX); subtypes say how it learns."""


def _keep(model, variables, inputs, rng, settings, step):
    del model, inputs, rng, settings, step
    return variables


def _no_loss(model, sown, settings):
    del model, sown, settings
    return jnp.zeros((), jnp.float32)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A way for B to learn.

    Attributes:
      name: the name rules use (``rules.Rule.feedback``).
      stores_feedback: the layer keeps a B (else it is derived from W, or there is none).
      label: what the optimizer does with B: ``FROZEN``, ``TRAIN`` or ``ALIGN``.
      nnx_variable: the ``Feedback`` subtype an NNX layer holds B in; None where ``wtfree.nnx``
        does not offer the kind.
      mutable: the collections the train step's apply makes mutable for ``loss``.
      before_step: ``(model, variables, inputs, rng, settings, step) -> variables``, run before
        each train step (the weight mirror's step).
      loss: ``(model, sown, settings) -> scalar``, added to the task loss (alignment losses).
    """

    name: str
    stores_feedback: bool
    label: str
    nnx_variable: type | None = None
    mutable: tuple[str, ...] = ()
    before_step: Callable[..., Any] = _keep
    loss: Callable[..., Any] = _no_loss


def _registry() -> dict[str, Kind]:
    from wtfree.kinds import fixed, gradient, loss, mirror, none

    return {k.name: k for k in (none.KIND, fixed.KIND, gradient.KIND, mirror.KIND, loss.KIND)}


def get(name: str) -> Kind:
    """The kind called ``name``; ValueError naming the known kinds otherwise."""
    kinds = _registry()
    if name not in kinds:
        raise ValueError(f"unknown kind of feedback {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


__all__ = ["ALIGN", "FROZEN", "TRAIN", "Feedback", "Kind", "get"]
