"""How B learns: one object per kind (none, fixed, gradient, mirror, loss, settling), each with
the hooks the layer, the optimizer, the train step, the config check and NNX need. Adding a kind
is one file here and one line in ``KINDS``; a rule names its kind (``rules.Rule.feedback``)."""

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


def _accept(config):
    del config


def _same_state(model, config, state, image_shape):
    del model, config, image_shape
    return state


def _usual_steps(model, tx, schedule, config):
    del model, tx, schedule, config


def _no_check(trainer):
    del trainer


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
      validate: ``(config) -> None``, raising a one-line ValueError for a config the kind
        cannot run (``config_lib.validate``).
      init_state: ``(model, config, state, image_shape) -> state``, the fresh train state with
        the kind's own variables added (the settling rules' state; DI's B = -W^T).
      make_steps: ``(model, tx, schedule, config) -> (train_step, measure_step)`` for a kind
        whose step is its own (the settling rules); None: ``wtfree.steps``' steps.
      check: ``(trainer) -> None``, run once the Trainer is built, raising ``errors.RunError``
        (exit 2) where the run cannot go on (DI's unstable feedback loop).
    """

    name: str
    stores_feedback: bool
    label: str
    nnx_variable: type | None = None
    mutable: tuple[str, ...] = ()
    before_step: Callable[..., Any] = _keep
    loss: Callable[..., Any] = _no_loss
    validate: Callable[..., None] = _accept
    init_state: Callable[..., Any] = _same_state
    make_steps: Callable[..., Any] = _usual_steps
    check: Callable[..., None] = _no_check


def _registry() -> dict[str, Kind]:
    from wtfree.kinds import fixed, gradient, loss, mirror, none, settling

    kinds = (none.KIND, fixed.KIND, gradient.KIND, mirror.KIND, loss.KIND, settling.KIND)
    return {k.name: k for k in kinds}


def get(name: str) -> Kind:
    """The kind called ``name``; ValueError naming the known kinds otherwise."""
    kinds = _registry()
    if name not in kinds:
        raise ValueError(f"unknown kind of feedback {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


__all__ = ["ALIGN", "FROZEN", "TRAIN", "Feedback", "Kind", "get"]
