"""The one custom_vjp that every feedback rule is built from, for any linear op f(x, W)."""

from collections.abc import Callable
from functools import partial

import jax

Array = jax.Array
LinearFn = Callable[[Array, Array], Array]


def feedback_linear(f: LinearFn, x: Array, w: Array, b: Array, *, train_b: bool) -> Array:
    r"""Applies a linear op forward with W and sends the error down through B.

    For a linear op :math:`y = f(x, W)` and output error :math:`\delta = \partial L / \partial y`,

    .. math::
      \Delta x = J_x f(\cdot, B)^\top \delta, \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta, \qquad
      \Delta B = \Delta W \text{ if train\_b else } 0.

    For dense, :math:`f(x, W) = x W`, so :math:`\Delta x = \delta B^\top` and
    :math:`\Delta W = x^\top \delta`; for a convolution, :math:`\Delta x` is the transposed
    convolution with kernel B. Because both come from ``jax.vjp`` of ``f``, one definition serves
    dense and conv layers alike. B has W's shape.

    Args:
      f: the linear op, ``f(x, W) -> y``; must be linear in each argument.
      x: the input.
      w: the forward weights W.
      b: the feedback weights B, shaped like W.
      train_b: whether B receives W's cotangent (Kolen-Pollack) or none.

    Returns:
      ``f(x, w)``.
    """
    f, consts = closure_convert(f, x, w)
    return _feedback_linear(f, train_b, x, w, b, *consts)


def closure_convert(f: LinearFn, x: Array, w: Array) -> tuple[Callable, list[Array]]:
    """``f(x, w) = g(x, w, *consts)``: the arrays ``f`` closes over that are being
    differentiated (a weight norm's or a learned scale's), hoisted out as arguments so that a
    ``custom_vjp`` can take them and return their cotangents (``jax.closure_convert``, as
    equinox's ``filter_custom_vjp`` does)."""
    return jax.closure_convert(f, x, w)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _feedback_linear(f, train_b, x, w, b, *consts):
    del train_b, b
    return f(x, w, *consts)


def _feedback_linear_fwd(f, train_b, x, w, b, *consts):
    del train_b
    return f(x, w, *consts), (x, w, b, consts)


def _feedback_linear_bwd(f, train_b, res, g):
    x, w, b, consts = res
    # f is linear in x, so its vjp w.r.t. x at B does not depend on x.
    _, vjp_x = jax.vjp(lambda x_: f(x_, b, *consts), x)
    # W and what f closes over get their true (local) gradients.
    _, vjp_w = jax.vjp(lambda w_, *c: f(x, w_, *c), w, *consts)
    (dx,) = vjp_x(g)
    dw, *dconsts = vjp_w(g)
    db = dw if train_b else jax.numpy.zeros_like(b)
    return (dx, dw, db, *dconsts)


_feedback_linear.defvjp(_feedback_linear_fwd, _feedback_linear_bwd)
