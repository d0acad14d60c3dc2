"""The one custom_vjp that every feedback rule is built from, for any linear op f(x, W)."""

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

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


def fan_in_and_positions(f: LinearFn, x_shape: tuple[int, ...], w: Array) -> tuple[int, int]:
    r"""A linear layer's fan-in d and its number P of output positions per example, from ``f``.

    d is the number of W's entries that meet at one output (a dense layer's inputs; a conv's
    kernel height x width x input channels) and P the number of outputs each entry of W reaches
    in one example (1 for dense on a vector, a sequence's length, a conv's output height x
    width): :math:`d = \max f(1, 1)` and :math:`P = d \cdot |f(1, 1)| / |W|` for one example of
    ones. Both come from ``f`` itself, not from the shapes, so an output with several feature
    axes (``nn.DenseGeneral(features=(heads, head_dim))``, whose last axis alone is not its
    features) counts its positions right. Where ``f`` closes over a traced array (no concrete
    value at trace time), the shapes decide, taking y's last axis as the features.

    Args:
      f: the linear op, ``f(x, W) -> y``, y's first axis the batch.
      x_shape: the input's shape (the batch size is not used).
      w: the weights W (their shape and dtype only).

    Returns:
      (d, P), Python ints.
    """
    with jax.ensure_compile_time_eval():
        y = f(jnp.ones((1, *x_shape[1:]), jnp.float32), jnp.ones(w.shape, jnp.float32))
    if isinstance(y, jax.core.Tracer):
        return w.size // y.shape[-1], y.size // y.shape[-1]
    counts = np.asarray(y)
    d = round(float(counts.max()))
    return d, max(1, round(d * counts.size / w.size))


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
