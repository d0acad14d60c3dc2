"""What every settling rule returns: gradients an optax optimizer consumes, and measurements."""

from typing import Any, NamedTuple

import jax


class Result(NamedTuple):
    """A settling rule's output for one batch.

    Attributes:
      grads: per layer ``{"w", "bias"}``, descent directions (``optax`` subtracts them), the
        shape of ``params``.
      feedback_grads: per layer the stored feedback weights' gradient (shaped like B), or
        None for a layer (or a whole rule) whose B does not learn.
      state: the rule's own variables after the batch (PC: error weights; PAL: noise, filters,
        previous rates); None where it keeps none.
      state_grads: gradients for the learned part of ``state`` (PC's error weights), or None.
      errors: the settled estimate of :math:`\\partial L / \\partial h_l` at each layer's
        output (backprop's value where the rule is exact), for the angle to backprop's.
      steps: the settling steps run (int32; fewer than asked when a tolerance stopped it).
    """

    grads: list[dict[str, jax.Array]]
    feedback_grads: list[jax.Array | None] | None
    state: Any
    state_grads: Any
    errors: list[jax.Array]
    steps: jax.Array
