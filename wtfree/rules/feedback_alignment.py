"""Feedback alignment: the error goes down through a fixed random matrix B."""

import jax

from wtfree.rules._feedback import LinearFn, feedback_linear

Array = jax.Array


def feedback_alignment(f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None) -> Array:
    r"""Sends the error down through fixed random feedback weights.

    .. math::
      \Delta x = J_x f(\cdot, B)^\top \delta \;(= \delta B^\top \text{ for dense}), \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta, \qquad \Delta B = 0.

    B is drawn once, independently of W and with W's scale, and never changes; W comes to
    align with it.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the fixed feedback weights B, shaped like W.
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Lillicrap, Cownden, Tweed & Akerman, *Random synaptic feedback weights support error
      backpropagation for deep learning*, Nature Communications 2016.
    """
    del rng
    return feedback_linear(f, x, w, b, train_b=False)
