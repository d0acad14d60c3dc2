"""The inner loop every settling rule runs: T steps of a state map, or fewer under a tolerance."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

State = Any


def settle(
    step: Callable[[State], State], state: State, num_steps: int, *, tol: float | None = None
) -> tuple[State, jax.Array]:
    r"""Iterates :math:`s \leftarrow \text{step}(s)` as a pure, jittable loop.

    Without ``tol`` it runs exactly ``num_steps`` steps (``lax.fori_loop``). With ``tol`` it
    stops as soon as one step moves no leaf of the state by more than ``tol`` (max-abs), or
    after ``num_steps`` (``lax.while_loop``).

    Args:
      step: the state map; its output has the input's structure, shapes and dtypes.
      state: the initial state, any pytree of arrays.
      num_steps: the most steps run (a Python int).
      tol: the max-abs change under which the loop stops early; None to always run all.

    Returns:
      ``(state, steps)``: the settled state and the number of steps run (int32 scalar).
    """
    if tol is None:
        state = jax.lax.fori_loop(0, num_steps, lambda _, s: step(s), state)
        return state, jnp.asarray(num_steps, jnp.int32)

    def change(new, old):
        leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), new, old))
        return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())

    def cond(carry):
        i, _, delta = carry
        return (i < num_steps) & (delta > tol)

    def body(carry):
        i, s, _ = carry
        new = step(s)
        return i + 1, new, change(new, s).astype(jnp.float32)

    steps, state, _ = jax.lax.while_loop(
        cond, body, (jnp.asarray(0, jnp.int32), state, jnp.asarray(jnp.inf, jnp.float32))
    )
    return state, steps
