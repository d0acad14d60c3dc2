"""Sign symmetry: the error goes down through sign(W), scaled (uSF, brSF, frSF)."""

import jax
import jax.numpy as jnp

from wtfree.rules._feedback import LinearFn, feedback_linear

Array = jax.Array


def uniform_sign(f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None) -> Array:
    r"""Uniform sign-concordant feedback (uSF): :math:`B = s\,\mathrm{sign}(W)`.

    .. math::
      \Delta x = J_x f(\cdot, s\,\mathrm{sign}(W))^\top \delta, \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta.

    Only the signs of W are transported; the magnitude is one scale per layer, W's init std,
    so the error sent down has the size backprop's has at init. Nothing is stored for B.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the scale s, a scalar (the layer's init std).
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Liao, Leibo & Poggio, *How important is weight symmetry in backpropagation?*, AAAI 2016.
      Xiao, Chen, Liao & Poggio, *Biologically-plausible learning algorithms can scale to large
      datasets*, arXiv:1811.03567, 2018.
    """
    del rng
    feedback = jax.lax.stop_gradient(b * jnp.sign(w))
    return feedback_linear(f, x, w, feedback, train_b=False)


def fixed_random_magnitude_sign(
    f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None
) -> Array:
    r"""Fixed random-magnitude sign-concordant feedback (frSF): :math:`B = |M|\,\mathrm{sign}(W)`.

    .. math::
      \Delta x = J_x f(\cdot, |M| \odot \mathrm{sign}(W))^\top \delta, \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta,

    with M drawn once (stored as the layer's feedback weights) and never trained.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the fixed magnitudes M, shaped like W.
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Xiao, Chen, Liao & Poggio, *Biologically-plausible learning algorithms can scale to large
      datasets*, arXiv:1811.03567, 2018.
    """
    del rng
    feedback = jax.lax.stop_gradient(jnp.abs(b) * jnp.sign(w))
    return feedback_linear(f, x, w, feedback, train_b=False)


def batchwise_random_magnitude_sign(
    f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None
) -> Array:
    r"""Batchwise random-magnitude sign-concordant feedback (brSF).

    .. math::
      \Delta x = J_x f(\cdot, |M_t| \odot \mathrm{sign}(W))^\top \delta, \qquad
      M_t \sim \mathcal{N}(0, s^2) \text{ redrawn every batch}, \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the scale s, a scalar (the layer's init std).
      rng: the key this batch's magnitudes are drawn from.

    Returns:
      ``f(x, w)``.

    References:
      Xiao, Chen, Liao & Poggio, *Biologically-plausible learning algorithms can scale to large
      datasets*, arXiv:1811.03567, 2018.
    """
    magnitudes = b * jnp.abs(jax.random.normal(rng, w.shape, w.dtype))
    feedback = jax.lax.stop_gradient(magnitudes * jnp.sign(w))
    return feedback_linear(f, x, w, feedback, train_b=False)
