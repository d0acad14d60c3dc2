r"""Alignment rules (Kunin et al. 2020): B learns by minimizing a weighted sum of primitives.

For a linear op :math:`y = f(x, W)` (dense: :math:`xW`; a convolution), feedback weights B
shaped like W, and an input batch x of n examples, the primitives are (sums over units, means
over the batch; for a convolution the units are output positions times channels):

.. math::
  \mathrm{decay} &= \|W\|^2 + \|B\|^2, \\
  \mathrm{sparse} &= \tfrac{1}{n}\big(\|f(x, W)\|^2 + \|f(x, B)\|^2\big), \\
  \mathrm{null} &= \tfrac{1}{n}\|J_x f(\cdot, B)^\top f(x, W)\|^2
      \;(= \tfrac{1}{n}\|x W B^\top\|^2 \text{ for dense}), \\
  \mathrm{self} &= -\langle W, B\rangle, \\
  \mathrm{amp} &= -\tfrac{1}{n}\langle f(x, B), f(x, W)\rangle.

:math:`f(x, B)` is what the authors call the backward projection of x: with B stored shaped
like W it is B's transpose, the matrix the error goes down through, applied to x. ``null`` is
the squared norm of x's reconstruction forward through W and back through B ("BWx" in the
paper's column-vector notation); the authors' code also has the other direction,
:math:`\|x^\top B W\|^2`, behind a flag (``reconstruction_reversal``) that is off by default, so
their Information Alignment uses this one only, and so does ours. W and x enter with their
gradient stopped: the losses train B alone.

The rules, each a weighted sum of primitives (coefficients from ``params.py`` of the authors'
code, neuroailab/Neural-Alignment, the values it uses when no flag overrides them; the pickled
configs of the paper's own runs, which ``config/get_configs.sh`` downloads, are not in the
repository, so their tuned values could not be checked):

=========  ========================================  ==============================
rule       loss                                      defaults
=========  ========================================  ==============================
``sa``     alpha decay + beta self                   alpha 1e-3, beta 2e-3
``aa``     alpha sparse + beta amp                   alpha 1e-3, beta 2e-3
``ia``     alpha amp + beta null + gamma decay       alpha 2e-3, beta 1e-3, gamma 1e-3
``wm_reg`` alpha decay + beta amp                    alpha 1e-3, beta 1e-3
=========  ========================================  ==============================

``wm_reg`` is weight mirrors in the regularizer form (the authors' ``Mirror`` alignment): no
separate mirror mode, B learns from the layer's real input (or noise, if so configured) during
training. Biases stay out of every primitive (the authors' flags can add them; the paper's
definitions have none, and the mirror mode blocks them too).

Where the minima lie (dense, :math:`C = x^\top x / n`): SA's at :math:`B = \tfrac{\beta}{2\alpha}W`
(W itself with the defaults); AA's where :math:`C(2\alpha B - \beta W) = 0` (B = W on the span of
the inputs); WM's at :math:`B = \tfrac{\beta}{2\alpha} C W`; IA's where
:math:`B(\gamma I + \beta W^\top C W) = \tfrac{\alpha}{2} C W`.

How fast B gets to its minimum is the optimizer's business: B steps at ``learning_rate_scale``
times W's rate (``wtfree.optim.make_optimizer``; SA relaxes by :math:`2\alpha s\eta/(1-\mu)` a
step). On a convolution the primitives that read x sum over its P output positions (the
authors' convention), which multiplies C by P; ``positions="mean"`` (:meth:`Alignment.loss`)
divides them by P, so that one setting fits dense and conv layers alike (README, "Alignment
rules", has the measured curvatures).

References:
  Kunin, Nayebi, Sagastuy-Brena, Ganguli, Bloom & Yamins, *Two Routes to Scalable Credit
  Assignment without Weight Symmetry*, ICML 2020; code: github.com/neuroailab/Neural-Alignment
  (``Alignments/primitives.py``, ``Alignments/alignment.py``, ``params.py``).
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from wtfree.rules._feedback import LinearFn, feedback_linear

Array = jax.Array

# The primitives whose value depends on x (each is quadratic in x: noise of std sigma gives
# sigma^2 times the value at unit-variance noise).
INPUT_PRIMITIVES = ("sparse", "null", "amp")
PRIMITIVES = ("decay", "sparse", "null", "self", "amp")
# Sown beside a layer's primitives: its number of output positions P (1 for dense), by which
# ``positions="mean"`` divides the primitives that read x.
POSITIONS = "positions"
POSITION_MODES = ("sum", "mean")


def _batch_mean_sq(y: Array) -> Array:
    return jnp.sum(jnp.square(y)) / y.shape[0]


def decay(w: Array, b: Array) -> Array:
    r""":math:`\|W\|^2 + \|B\|^2`; its gradient w.r.t. B is :math:`2B`."""
    return jnp.sum(jnp.square(w)) + jnp.sum(jnp.square(b))


def sparse(f: LinearFn, x: Array, w: Array, b: Array) -> Array:
    r""":math:`\frac{1}{n}(\|f(x, W)\|^2 + \|f(x, B)\|^2)`; gradient w.r.t. B
    :math:`\frac{2}{n} J_B f(x, \cdot)^\top f(x, B)` (dense: :math:`\frac{2}{n} x^\top x B`)."""
    return _batch_mean_sq(f(x, w)) + _batch_mean_sq(f(x, b))


def null(f: LinearFn, x: Array, w: Array, b: Array) -> Array:
    r""":math:`\frac{1}{n}\|J_x f(\cdot, B)^\top f(x, W)\|^2`: x forward through W, back
    through B (dense: :math:`\frac{1}{n}\|x W B^\top\|^2`, gradient
    :math:`\frac{2}{n} B W^\top x^\top x W`)."""
    y = f(x, w)
    # f is linear in x, so its transpose at B is the backward pass through B.
    (reconstruction,) = jax.linear_transpose(lambda x_: f(x_, b), x)(y)
    return _batch_mean_sq(reconstruction)


def self_(w: Array, b: Array) -> Array:
    r""":math:`-\langle W, B\rangle`; its gradient w.r.t. B is :math:`-W` (non-local)."""
    return -jnp.vdot(w, b)


def amp(f: LinearFn, x: Array, w: Array, b: Array) -> Array:
    r""":math:`-\frac{1}{n}\langle f(x, B), f(x, W)\rangle`; gradient w.r.t. B
    :math:`-\frac{1}{n} J_B f(x, \cdot)^\top f(x, W)`, which is
    :math:`-\frac{P}{n}` times the mirror mode's Hebbian product
    (``weight_mirror.hebbian``, which averages over a convolution's P output positions;
    P = 1 for dense: :math:`-\frac{1}{n} x^\top x W`)."""
    return -jnp.vdot(f(x, b), f(x, w)) / x.shape[0]


def primitives(
    f: LinearFn, x: Array, w: Array, b: Array, names: tuple[str, ...] = PRIMITIVES
) -> dict[str, Array]:
    """The primitives called ``names`` for one layer, with x and W held fixed.

    Args:
      f: the linear op, ``f(x, W) -> y``; y's first axis is the batch.
      x: the input batch (the layer's own input, or noise).
      w: the forward weights W.
      b: the feedback weights B, shaped like W.
      names: which of ``PRIMITIVES``.

    Returns:
      ``{name: value}``; only B carries a gradient.
    """
    x, w = jax.lax.stop_gradient(x), jax.lax.stop_gradient(w)
    fns = {
        "decay": lambda: decay(w, b),
        "sparse": lambda: sparse(f, x, w, b),
        "null": lambda: null(f, x, w, b),
        "self": lambda: self_(w, b),
        "amp": lambda: amp(f, x, w, b),
    }
    return {name: fns[name]() for name in names}


@dataclasses.dataclass(frozen=True)
class Alignment:
    """A rule's alignment loss: ``sum_i coefficients[c_i] * primitive_i``.

    Attributes:
      terms: ``(coefficient name, primitive name)`` pairs, e.g. ``(("alpha", "decay"), ...)``.
      defaults: the authors' default coefficients, ``{"alpha": ..., ...}``.
    """

    terms: tuple[tuple[str, str], ...]
    defaults: Mapping[str, float]

    @property
    def primitives(self) -> tuple[str, ...]:
        return tuple(p for _, p in self.terms)

    def loss(
        self,
        values: Mapping[str, Array],
        coefficients: Mapping[str, float],
        input_scale=1.0,
        positions: str = "sum",
    ) -> Array:
        r"""The weighted sum of one layer's primitive ``values``.

        Args:
          values: ``{primitive: value}`` as :func:`primitives` returns them.
          coefficients: ``{"alpha": ..., ...}`` (missing ones: ``defaults``).
          input_scale: multiplies the primitives that depend on x: :math:`\sigma^2` when they
            were measured on unit-variance noise standing for noise of std :math:`\sigma`.
          positions: ``sum`` (the authors' convention: a conv's primitives that read x sum
            over its P output positions) or ``mean`` (they are divided by P, ``values``'
            ``positions`` entry: per position, as the mirror mode's Hebbian product).

        Returns:
          The scalar loss.
        """
        if positions not in POSITION_MODES:
            raise ValueError(f"positions={positions!r}; allowed: {', '.join(POSITION_MODES)}")
        if positions == "mean":
            input_scale = input_scale / values.get(POSITIONS, 1.0)
        total = 0.0
        for coefficient, primitive in self.terms:
            scale = input_scale if primitive in INPUT_PRIMITIVES else 1.0
            c = coefficients.get(coefficient, self.defaults[coefficient])
            total = total + c * scale * values[primitive]
        return total


ALIGNMENTS: dict[str, Alignment] = {
    "sa": Alignment((("alpha", "decay"), ("beta", "self")), {"alpha": 1e-3, "beta": 2e-3}),
    "aa": Alignment((("alpha", "sparse"), ("beta", "amp")), {"alpha": 1e-3, "beta": 2e-3}),
    "ia": Alignment(
        (("alpha", "amp"), ("beta", "null"), ("gamma", "decay")),
        {"alpha": 2e-3, "beta": 1e-3, "gamma": 1e-3},
    ),
    "wm_reg": Alignment((("alpha", "decay"), ("beta", "amp")), {"alpha": 1e-3, "beta": 1e-3}),
}


def alignment_feedback(f: LinearFn, x: Array, w: Array, b: Array, rng: Array | None) -> Array:
    r"""The learning pass of every alignment rule: the error goes down through B, as in FA.

    .. math::
      \Delta x = J_x f(\cdot, B)^\top \delta, \qquad
      \Delta W = J_W f(x, \cdot)^\top \delta, \qquad \Delta B = 0.

    The task loss gives B nothing; B moves by the gradient of its rule's alignment loss, which
    the layer sows and the train step adds (``wtfree.layers``, ``wtfree.steps``).

    Args:
      f: the linear op, ``f(x, W) -> y``.
      x: the input.
      w: the forward weights W.
      b: the feedback weights B, shaped like W.
      rng: unused.

    Returns:
      ``f(x, w)``.

    References:
      Kunin et al., *Two Routes to Scalable Credit Assignment without Weight Symmetry*,
      ICML 2020.
    """
    del rng
    return feedback_linear(f, x, w, b, train_b=False)


def total_loss(
    sown: Mapping,
    coefficients: Mapping[str, Mapping[str, float]],
    input_scale=1.0,
    positions: str = "sum",
) -> Array:
    """The sum over layers of their rules' alignment losses.

    Args:
      sown: the ``alignment_loss`` collection: nested dicts whose innermost level is
        ``{rule name: {primitive: value}}``, one per layer.
      coefficients: ``{rule name: {"alpha": ..., ...}}``.
      input_scale: as in :meth:`Alignment.loss`.
      positions: as in :meth:`Alignment.loss`.

    Returns:
      The scalar total (0.0 when nothing was sown).
    """
    total = jnp.zeros((), jnp.float32)
    leaf_keys = {*PRIMITIVES, POSITIONS}
    for key, value in sown.items():
        if key in ALIGNMENTS and isinstance(value, Mapping) and set(value) <= leaf_keys:
            rule_coefficients = coefficients.get(key, {})
            total = total + ALIGNMENTS[key].loss(value, rule_coefficients, input_scale, positions)
        elif isinstance(value, Mapping):
            total = total + total_loss(value, coefficients, input_scale, positions)
    return total
