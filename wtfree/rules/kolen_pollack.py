"""Kolen-Pollack: B receives the same adjustment as W, so with decay B converges to W."""

import jax

from wtfree.rules._feedback import LinearFn, feedback_linear

Array = jax.Array


def kolen_pollack(f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None) -> Array:
    r"""Sends the error down through B and gives B the same gradient as W.

    .. math::
      \Delta x = J_x f(\cdot, B)^\top \delta, \qquad
      \Delta W = \Delta B = J_W f(x, \cdot)^\top \delta.

    The rule is local: the adjustment of a feedback synapse is the product of the activities
    of its two neurons, which is what W's is. With an optimizer that applies the same update
    and the same weight decay :math:`\lambda` to both (``wtfree.optim``), plain SGD gives
    :math:`W_{t+1} - B_{t+1} = (1 - \eta\lambda)(W_t - B_t)`, so B converges to W (B is
    stored shaped like W: it plays the role of :math:`W^\top` in the backward pass).

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the feedback weights B, shaped like W.
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Kolen & Pollack, *Backpropagation without weight transport*, ICNN 1994.
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019.
    """
    del rng
    return feedback_linear(f, x, w, b, train_b=True)
