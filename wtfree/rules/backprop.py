"""Backprop: the error goes down through the transpose of the forward weights."""

import jax

from wtfree.rules._feedback import LinearFn

Array = jax.Array


def backprop(f: LinearFn, x: Array, w: Array, b: Array | None, rng: Array | None) -> Array:
    r"""The control: ordinary reverse-mode autodiff of ``f``.

    .. math::
      \Delta x = J_x f(\cdot, W)^\top \delta \;(= \delta W^\top \text{ for dense}), \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: unused; backprop has no feedback weights.
      rng: unused.

    Returns:
      ``f(x, w)``, whose gradients are exactly ``jax.grad``'s.

    References:
      Rumelhart, Hinton & Williams, *Learning representations by back-propagating errors*, 1986.
    """
    del b, rng
    return f(x, w)
