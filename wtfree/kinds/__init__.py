"""How B learns: one object per kind (none, fixed, gradient, mirror, loss, settling), each with
the hooks the layer, the optimizer, the train steps (the library's and train.py's), the workdir
check and NNX need. Adding a kind is one file here and one line in ``_registry``; a rule names
its kind (``rules.Rule.feedback``).

Where each hook is called:

- ``wtfree.layers.apply_rule``: ``stores_feedback`` and ``label`` (which B the layer keeps and
  what it sows for the optimizer), and ``sow`` (what the layer sows for the kind's step: the
  mirror mode's Hebbian product, the alignment loss's primitives).
- ``wtfree.learn.make_train_step`` (the library's step): ``before_step``, ``mutable``, ``loss``,
  with the settings object the user passed for the kind (the keyword ``settings_name``; absent:
  ``default_settings()``).
- ``wtfree.trainer.make_model``: ``convert_options`` (the model's options from the kind's
  config section: convert's for a stock model, the fields of the same names of wtfree's own).
- ``wtfree.trainer.Trainer`` (train.py's step, from a config): ``step_extra`` (what the kind adds
  to ``steps.make_train_step``: collections, random streams, a loss) and ``make_state_step``
  (a step on the whole train state after the train step, and before training: the weight
  mirror's); ``wtfree.workdir``: ``section``.
- ``wtfree.config_lib.validate``: ``validate``; the Trainer: ``init_state``, ``make_steps``
  (a kind whose train step is its own: the settling rules) and ``check``.
- ``wtfree.nnx``: ``nnx_variable``.

A hook a kind does not need keeps its default, which does nothing.
"""

import dataclasses
from collections.abc import Callable, Mapping
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


def _no_rngs(state):
    del state
    return {}


def _zero(sown):
    del sown
    return jnp.zeros((), jnp.float32)


def _no_sow(call):
    del call


def _no_options(config):
    del config
    return {}


def _no_extra(config):
    del config


def _no_state_step(model, mesh, config, image_shape):
    del model, mesh, config, image_shape


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One call of a layer computed by a rule (``layers.apply_rule``), as a kind's ``sow`` sees it.

    Attributes:
      module: the bound linen module the layer's variables belong to.
      rule: the layer's ``rules.Rule``.
      f: the linear op, ``f(x, W) -> y``.
      x: the layer's input.
      w: W.
      b: the stored B, or (a kind that stores none) W's init std.
      input_layer: the layer reads the network's input: its B sends no error anywhere.
      feedback_name: B's leaf name in ``feedback``, under which a kind sows what is B's.
      sowing: whether this apply sows measurements and losses (False at an init that does not).
      settings: the keywords ``apply_rule`` was given for the kinds, as values
        (``mirror_noise``: the mirror kind's, None outside a mirror apply; ``alignment_input``:
        the loss kind's); each kind reads its own, owns their defaults and draws from its one
        stream (``layers.MIRROR_RNG``, ``layers.ALIGNMENT_RNG``).
    """

    module: Any
    rule: Any
    f: Callable
    x: Any
    w: Any
    b: Any
    input_layer: bool
    feedback_name: str
    sowing: bool
    settings: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class StepExtra:
    """What a kind adds to train.py's train step (``steps.make_train_step``).

    Attributes:
      name: the measurement the step logs ``loss``'s value under (e.g. ``train/alignment_loss``);
        the NaN watch adds it to the task loss (``dispatch.make_multi_step``).
      mutable: the collections the step's apply makes mutable, for ``loss`` to read.
      rngs: ``(state) -> {stream: key}``, streams the step's apply draws from (keyed by the
        state's rng and step, so a resumed run draws what an uninterrupted one would).
      loss: ``(sown) -> scalar``, added to the task loss; ``sown`` holds the ``mutable``
        collections after the apply.
    """

    name: str
    mutable: tuple[str, ...] = ()
    rngs: Callable[[Any], dict] = _no_rngs
    loss: Callable[[Any], Any] = _zero


@dataclasses.dataclass(frozen=True)
class StateStep:
    """A step on the whole train state that a kind runs besides the train step (the weight
    mirror's mirror batch), in train.py's loop.

    Attributes:
      step: ``(state, rng) -> state``, jittable; the loop donates ``state``.
      every: it follows the train step that makes ``state["step"]`` a multiple of ``every``.
      pretrain: how many times it runs on a fresh state before the first train step.
    """

    step: Callable[[Any, Any], Any]
    every: int = 1
    pretrain: int = 0


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
      sow: ``(LayerCall) -> None``, what a layer of the kind sows for the kind's step, in
        ``layers.apply_rule`` (the mirror mode's Hebbian product; the alignment primitives).
      settings_name: the keyword ``wtfree.make_train_step`` takes the kind's settings under
        (``mirror``, ``alignment``); None: the kind has none.
      default_settings: ``() -> settings``, used where the user gave none.
      convert_options: ``(config) -> dict``, options of ``wtfree.convert`` from the kind's
        config section, given to train.py's models (``trainer.make_model``): to convert for a
        stock model, as fields of the same names to wtfree's own.
      mutable: the collections the train step's apply makes mutable for ``loss``.
      before_step: ``(model, variables, inputs, rng, settings, step) -> variables``, run before
        each train step (the weight mirror's step).
      loss: ``(model, sown, settings) -> scalar``, added to the task loss (alignment losses).
      section: the config subtree (``config.<section>``) that only this kind reads: for a run
        whose rules are of other kinds, a change there is no other experiment (``workdir``).
      step_extra: ``(config) -> StepExtra | None``, what the kind adds to train.py's train step.
      make_state_step: ``(model, mesh, config, image_shape) -> StateStep | None``, a step on the
        train state besides the train step (``image_shape``: one example's, no batch axis).
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
    sow: Callable[["LayerCall"], None] = _no_sow
    settings_name: str | None = None
    default_settings: Callable[[], Any] | None = None
    convert_options: Callable[..., dict] = _no_options
    mutable: tuple[str, ...] = ()
    before_step: Callable[..., Any] = _keep
    loss: Callable[..., Any] = _no_loss
    section: str | None = None
    step_extra: Callable[..., StepExtra | None] = _no_extra
    make_state_step: Callable[..., StateStep | None] = _no_state_step
    validate: Callable[..., None] = _accept
    init_state: Callable[..., Any] = _same_state
    make_steps: Callable[..., Any] = _usual_steps
    check: Callable[..., None] = _no_check


def _registry() -> dict[str, Kind]:
    from wtfree.kinds import fixed, gradient, loss, mirror, none, settling

    kinds = (none.KIND, fixed.KIND, gradient.KIND, mirror.KIND, loss.KIND, settling.KIND)
    return {k.name: k for k in kinds}


def registered() -> list[Kind]:
    """Every kind, in the registry's order."""
    return list(_registry().values())


def get(name: str) -> Kind:
    """The kind called ``name``; ValueError naming the known kinds otherwise."""
    kinds = _registry()
    if name not in kinds:
        raise ValueError(f"unknown kind of feedback {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


__all__ = [
    "ALIGN",
    "FROZEN",
    "TRAIN",
    "Feedback",
    "Kind",
    "LayerCall",
    "StateStep",
    "StepExtra",
    "get",
    "registered",
]
