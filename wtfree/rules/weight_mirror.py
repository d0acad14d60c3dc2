"""Weight mirrors: B learns W from the Hebbian product of noise and its echo."""

import math

import jax
import jax.numpy as jnp

from wtfree.rules._feedback import LinearFn, fan_in_and_positions, feedback_linear

Array = jax.Array

# The mirror noise's distributions (``mirror.noise``): each has independent entries of mean 0 and
# variance 1, all that E[H] = n W needs (see :func:`hebbian`).
NOISES = ("normal", "rademacher", "uniform")
# E[z^4] of each: the diagonal of the noise's second-moment estimate carries (E[z^4] - 1) / n.
FOURTH_MOMENTS = {"normal": 3.0, "rademacher": 1.0, "uniform": 9 / 5}


def draw_noise(rng: Array, shape: tuple[int, ...], dtype, distribution: str = "normal") -> Array:
    r"""Independent entries of mean 0 and variance 1 from ``distribution``.

    .. math::
      \text{normal: } \mathcal{N}(0, 1), \qquad
      \text{rademacher: } \pm 1 \text{ with probability } \tfrac12, \qquad
      \text{uniform: } \mathcal{U}(-\sqrt3, \sqrt3).

    Rademacher noise takes one random bit an entry (32 entries from each 32-bit word drawn), where
    normal and uniform noise take a 32-bit word each and a transform (normal: erfinv); on CPU it is
    10-25x cheaper to draw (README, "Weight mirrors: the noise").

    Args:
      rng: the key.
      shape: the shape of the noise.
      dtype: its dtype.
      distribution: one of ``NOISES``.

    Returns:
      The noise, shaped ``shape``.
    """
    if distribution == "normal":
        return jax.random.normal(rng, shape, dtype)
    if distribution == "uniform":
        half_width = math.sqrt(3.0)  # U(-a, a) has variance a^2 / 3
        return jax.random.uniform(rng, shape, dtype, -half_width, half_width)
    if distribution == "rademacher":
        n = math.prod(shape)
        words = jax.random.bits(rng, (-(-n // 32),), jnp.uint32)
        bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
        signs = 2 * bits.astype(dtype) - 1
        return signs.reshape(-1)[:n].reshape(shape)
    raise ValueError(f"mirror noise {distribution!r}; allowed: {', '.join(NOISES)}")


def mirror_error(
    decay: float, fan_in: int, batch_size: int, *, positions: int = 1, noise: str = "normal"
) -> float:
    r"""B's expected squared error at the mirror's fixed point, relative to W's squared norm.

    .. math::
      \frac{\mathbb{E}\|B - W\|^2}{\|W\|^2}
        = \frac{\lambda}{2 - \lambda} \cdot \frac{d + \kappa - 2}{n P},

    for a mirror step :math:`B \leftarrow (1 - \lambda) B + \lambda S W` with
    :math:`S = X^\top X / n` from n noise vectors of d independent entries of variance 1 and
    fourth moment :math:`\kappa` (normal 3, so :math:`d + 1`; Rademacher 1, so :math:`d - 1`).
    Each entry of :math:`(S - I)W` has variance :math:`(d + \kappa - 2)\|w\|^2 / n` per column
    w, and the exponential average keeps :math:`\lambda / (2 - \lambda)` of it. Exact for a
    dense layer (P = 1). For a convolution, d is the patch size (kernel height x width x input
    channels) and the Hebbian product averages over P output positions; their patches overlap,
    yet for a VALID convolution the simulated error is this with n P vectors (LeNet's conv_1:
    tests/test_mirror_batch.py checks both by simulation). With SAME padding a tap sees zeros at
    the border, so E[H] is W times the share of positions where it sees the input: a bias that
    no batch removes. Simulated on ResNet-20's convs (decay 0.1, Rademacher), the error was
    0.8-1.2x this at n = 1 and 1.0-2.0x at n = 4, the most on 32x32 (docs/conv_speed.md).

    Args:
      decay: :math:`\lambda`, in (0, 2).
      fan_in: d.
      batch_size: n.
      positions: P, the output positions a conv's Hebbian product averages over (1 for dense).
      noise: the noise's distribution, one of ``NOISES``.

    Returns:
      The relative error; its angle to W is about ``degrees(atan(sqrt(error)))``.
    """
    kappa = FOURTH_MOMENTS[noise]
    return decay / (2 - decay) * (fan_in + kappa - 2) / (batch_size * positions)


def mirror_batch_size(
    decay: float, fan_in: int, error: float, *, positions: int = 1, noise: str = "normal"
) -> int:
    r"""The fewest noise vectors n whose :func:`mirror_error` is at most ``error``.

    .. math::
      n = \left\lceil \frac{\lambda}{2 - \lambda} \cdot
          \frac{d + \kappa - 2}{P\, \varepsilon} \right\rceil.

    A mirror batch sized per layer by this keeps every layer's B equally noisy: LeNet's 640 at
    decay 0.5 is what its widest dense layer (d = 256) needs for 20 degrees; the narrower dense
    layers need fewer and a conv layer, averaging over its output positions, far fewer.

    Args:
      decay: :math:`\lambda`, in (0, 2).
      fan_in: d.
      error: :math:`\varepsilon`, the relative squared error allowed.
      positions: P (1 for dense).
      noise: one of ``NOISES``.

    Returns:
      n, at least 1.
    """
    kappa = FOURTH_MOMENTS[noise]
    return max(1, math.ceil(decay / (2 - decay) * (fan_in + kappa - 2) / (positions * error)))


def weight_mirror(f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None) -> Array:
    r"""In the learning mode, sends the error down through B, which gets no gradient.

    .. math::
      \Delta x = J_x f(\cdot, B)^\top \delta, \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta, \qquad \Delta B = 0.

    B is trained separately, in the mirror mode, by :func:`mirror_update`.

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the feedback weights B, shaped like W.
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019.
    """
    del rng
    return feedback_linear(f, x, w, b, train_b=False)


def hebbian(f: LinearFn, w: Array, x: Array) -> Array:
    r"""The mirror mode's Hebbian product for one layer fed the input x.

    .. math::
      H = \frac{1}{P} J_W f(x, \cdot)^\top f(x, W) \;(= x^\top x W \text{ for dense}),

    summed over the batch and averaged over the P output positions of each example (P = 1 for
    dense; a convolution's output height times width), so that a conv kernel's H has the scale
    of a dense layer's fed the same batch and one mirror setting fits every layer. For zero-mean
    noise x with covariance :math:`\sigma^2 I`, :math:`\mathbb{E}[H] = n\sigma^2 W` for n
    examples (for a convolution, per kernel tap up to border effects), which is why B moved
    along H aligns with W. The bias is left out: the mirror mode blocks it.

    Args:
      f: the linear op, ``f(x, W) -> y``; y's first axis is the batch and its last the
        features.
      w: the forward weights W.
      x: the noise fed to the layer.

    Returns:
      H, shaped like W.
    """
    y, vjp_w = jax.vjp(lambda w_: f(x, w_), w)
    (h,) = vjp_w(y)
    _, positions = fan_in_and_positions(f, x.shape, w)
    return h / positions if positions > 1 else h


def mirror_update(
    f: LinearFn,
    w: Array,
    b: Array,
    rng: Array,
    input_shape: tuple[int, ...],
    *,
    learning_rate: float,
    decay: float,
    noise_std: float = 1.0,
    noise: str = "normal",
) -> Array:
    r"""One mirror step for one layer: B is moved along the Hebbian product, with decay.

    .. math::
      x = \sigma z, \; z \sim \text{noise (mean 0, covariance } I), \quad y = f(x, W), \quad
      B \leftarrow B + \eta\, H(x) - \lambda B
      \;(= B + \eta\, x^\top y - \lambda B \text{ for dense}),

    with H the Hebbian product of :func:`hebbian` (for a convolution, averaged over output
    positions).

    Args:
      f: the linear op, ``f(x, W) -> y``.
      w: the forward weights W.
      b: the feedback weights B, shaped like W.
      rng: the key the noise is drawn from.
      input_shape: the shape of the noise x, that of the layer's input (batch first).
      learning_rate: :math:`\eta`.
      decay: :math:`\lambda`.
      noise_std: :math:`\sigma`.
      noise: the distribution of z, one of ``NOISES`` (:func:`draw_noise`).

    Returns:
      The new B.

    References:
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019, eqs. 6-11.
    """
    x = draw_noise(rng, input_shape, w.dtype, noise)
    return apply_hebbian(
        b, hebbian(f, w, x), learning_rate=learning_rate, decay=decay, noise_std=noise_std
    )


def apply_hebbian(
    b: Array, h: Array, *, learning_rate: float, decay: float, noise_std: float = 1.0
) -> Array:
    r"""Moves B along a Hebbian product H measured with unit-variance noise.

    .. math::
      B \leftarrow B + \eta \sigma^2 H - \lambda B.

    H is bilinear in the noise, so the product for noise of std :math:`\sigma` is
    :math:`\sigma^2` times that for unit noise; layers measure H with unit noise and the
    noise std enters here.

    Args:
      b: the feedback weights B.
      h: :func:`hebbian` at unit-variance noise, shaped like B.
      learning_rate: :math:`\eta`.
      decay: :math:`\lambda`.
      noise_std: :math:`\sigma`.

    Returns:
      The new B.
    """
    return b + (learning_rate * noise_std**2) * h - decay * b
