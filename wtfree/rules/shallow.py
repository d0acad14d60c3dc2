"""Shallow learning: a layer learns from the error at its output and sends none below it."""

from functools import partial

import jax

from wtfree.rules._feedback import LinearFn, closure_convert

Array = jax.Array


def shallow(f: LinearFn, x: Array, w: Array, b: Array | None, rng: Array | None) -> Array:
    r"""Keeps the local weight gradient and sends no error down.

    .. math::
      \Delta x = 0, \qquad \Delta W = J_W f(x, \cdot)^\top \delta \;(= x^\top \delta
      \text{ for dense}).

    With every layer of a network under this rule only the last one gets a non-zero
    :math:`\delta`, so only it learns: the hidden layers keep their random initial weights and
    the network is a linear (or logistic) readout of fixed random features.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: unused; nothing is sent down, so there is no feedback path.
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Lillicrap, Cownden, Tweed & Akerman, *Random synaptic feedback weights support error
      backpropagation for deep learning*, Nature Communications 2016 (the "shallow" baseline of
      Figs. 1d and 2a).
    """
    del b, rng
    f, consts = closure_convert(f, x, w)
    return _shallow(f, x, w, *consts)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _shallow(f, x, w, *consts):
    return f(x, w, *consts)


def _shallow_fwd(f, x, w, *consts):
    return f(x, w, *consts), (x, w, consts)


def _shallow_bwd(f, res, g):
    x, w, consts = res
    _, vjp_w = jax.vjp(lambda w_, *c: f(x, w_, *c), w, *consts)
    dw, *dconsts = vjp_w(g)
    return (None, dw, *dconsts)


_shallow.defvjp(_shallow_fwd, _shallow_bwd)
