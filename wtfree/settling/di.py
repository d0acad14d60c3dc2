"""Dynamic inversion (DI) and its direct solve (NDI): the error sent down is a leaky inverse of
the forward weights, found by letting a feedback loop settle."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wtfree.settling import blocks, network
from wtfree.settling.relax import settle
from wtfree.settling.result import Result

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DIConfig:
    """DI's switches; defaults from wpodlaski/dynamic-inversion (docs/settling.md).

    Attributes:
      alpha: the leak :math:`\\alpha` (0 in ``mnist_classification.py``'s NDI, 0.01 in NDI-2).
      dynamic: settle by Euler steps (DI); False solves for the steady state (NDI, the variant
        the authors' MNIST script runs).
      steps: Euler steps (``sim_tools.py``: ``range(1, tsteps)`` with tsteps 1000, so 999).
      dt: the Euler step (0.5).
      feedback: the ``wtfree.rules`` name giving B; the authors start the stored B at
        :math:`-W^\\top` (``neg_transpose``), which is weight transport at init.
      tol: stop the Euler loop once no rate moves by more than this in a step.
    """

    alpha: float = 0.0
    dynamic: bool = False
    steps: int = 999
    dt: float = 0.5
    feedback: str = "fa"
    tol: float | None = None


def neg_transpose(params: network.Params) -> list[Array]:
    """The authors' MNIST start, :math:`B = -W^\\top`: in wtfree's layout, where B has W's shape
    and is applied transposed, simply ``-W``. It copies W once: weight transport at init."""
    return [-p["w"] for p in params]


def _operators(layer: network.Layer, x: Array, w: Array, m: Array):
    # W: input space -> output space; B: output space -> input space (dx = B dy).
    return (lambda rx: layer.f(rx, w)), (lambda ry: network.transpose_x(layer.f, x, m, ry))


def invert_dynamic(
    layer: network.Layer, x: Array, w: Array, m: Array, delta: Array, config: DIConfig
) -> tuple[Array, Array]:
    r"""Settles the feedback loop of one layer by forward Euler steps from zero rates.

    .. math::
      r_y \leftarrow r_y + dt\,(-\alpha r_y + W r_x - \delta), \qquad
      r_x \leftarrow r_x + dt\,(-r_x + B r_y)

    (:math:`r_x` from the new :math:`r_y`, as ``sim_tools.run_linear_di_net``), whose steady
    state is :math:`r_x = B (W B - \alpha I)^{-1} \delta` where
    :math:`\begin{bmatrix}-I & B\\ W & -\alpha I\end{bmatrix}` is Hurwitz.

    Returns:
      ``(r_x, steps)``, r_x shaped like the layer's input x.
    """
    w_op, b_op = _operators(layer, x, w, m)

    def step(rates):
        rx, ry = rates
        ry = ry + config.dt * (-config.alpha * ry + w_op(rx) - delta)
        return rx + config.dt * (-rx + b_op(ry)), ry

    (rx, _), steps = settle(
        step, (jnp.zeros_like(x), jnp.zeros_like(delta)), config.steps, tol=config.tol
    )
    return rx, steps


def matrices(layer: network.Layer, x: Array, w: Array, m: Array) -> tuple[Array, Array]:
    """W and B of one layer as dense matrices over one example's flattened features:
    W (out x in), B (in x out). For a dense layer, ``W = w.T`` and ``B = m``."""
    w_op, b_op = _operators(layer, x[:1], w, m)
    n_in = int(np.prod(x.shape[1:]))
    y = w_op(x[:1])
    n_out = int(np.prod(y.shape[1:]))
    wm = jax.jacfwd(lambda v: w_op(v.reshape(x[:1].shape)).reshape(-1))(jnp.zeros(n_in, x.dtype))
    bm = jax.jacfwd(lambda v: b_op(v.reshape(y.shape)).reshape(-1))(jnp.zeros(n_out, y.dtype))
    return wm, bm


def invert_direct(layer: network.Layer, x: Array, w: Array, m: Array, alpha: float, delta: Array):
    r"""NDI: the steady state :math:`B (W B - \alpha I)^{-1} \delta` by least squares.

    As ``sim_tools.backprop_error`` ('NDI'): for a layer no wider than its input, solve
    :math:`(W B - \alpha I) z = \delta` and return :math:`B z`; otherwise solve
    :math:`(B W - \alpha I) r = B \delta`, the same point where both are invertible.
    """
    wm, bm = matrices(layer, x, w, m)
    d = delta.reshape(delta.shape[0], -1).T
    n_out, n_in = wm.shape
    if n_out <= n_in:
        z = jnp.linalg.lstsq(wm @ bm - alpha * jnp.eye(n_out, dtype=wm.dtype), d)[0]
        r = bm @ z
    else:
        r = jnp.linalg.lstsq(bm @ wm - alpha * jnp.eye(n_in, dtype=wm.dtype), bm @ d)[0]
    return r.T.reshape(x.shape)


def max_real_eigenvalue(wm: Array, bm: Array, alpha: float) -> float:
    """The spectral abscissa of :math:`[[-I, B], [W, -\\alpha I]]` (host numpy; not jittable)."""
    wm, bm = np.asarray(wm, np.float64), np.asarray(bm, np.float64)
    n_out, n_in = wm.shape
    block = np.block([[-np.eye(n_in), bm], [wm, -alpha * np.eye(n_out)]])
    return float(np.max(np.linalg.eigvals(block).real))


def check_stable(
    model: network.Model,
    params: network.Params,
    feedback: Sequence[Any] | None,
    x: Array,
    config: DIConfig = DIConfig(),
) -> list[float]:
    """Checks that every layer's feedback loop settles (the block matrix is Hurwitz).

    Layer 1 sends no error down, so layers 2..L are checked. Host-side: call it at init and
    on log steps, not inside a jitted step.

    Returns:
      each checked layer's largest real eigenvalue, all negative.

    Raises:
      ValueError: one line naming the first unstable layer, its eigenvalue and alpha.
    """
    hs, _ = network.forward(model, params, x[:1])
    mats = network.feedback_matrices(config.feedback, params, feedback)
    out = []
    for k in range(1, len(model)):
        wm, bm = matrices(model[k], hs[k], params[k]["w"], mats[k])
        s = max_real_eigenvalue(wm, bm, config.alpha)
        if s >= 0:
            raise ValueError(
                f"di: the feedback loop of layer {k + 1} is unstable: the largest real "
                f"eigenvalue of [[-I, B], [W, -alpha I]] is {s:.4g} >= 0 at alpha="
                f"{config.alpha}; start B at -W^T (neg_transpose) or raise alpha"
            )
        out.append(s)
    return out


def dynamic_inversion(
    model: network.Model,
    params: network.Params,
    feedback: Sequence[Any] | None,
    x: Array,
    loss_fn: Callable[[Array], Array],
    config: DIConfig = DIConfig(),
    *,
    state: Any = None,
    rng: Array | None = None,
) -> Result:
    r"""Sends the error down layer by layer through the settled inverse of each layer.

    .. math::
      \delta_L = \phi_L'(a_L) \odot \partial L/\partial h_L, \qquad
      \delta_{l-1} = \phi'_{l-1}(a_{l-1}) \odot B_l (W_l B_l - \alpha I)^{-1} \delta_l,

    the inverse found by ``invert_dynamic`` (DI) or ``invert_direct`` (NDI); then
    :math:`\Delta W_l = J_W f_l(h_{l-1}, \cdot)^\top \delta_l`. With :math:`B = -W^\top` and
    :math:`\alpha = 0` it is pseudo-backprop: :math:`\delta_{l-1} = \phi' \odot W^+ \delta_l`.
    B does not learn here (the authors' MNIST script keeps it fixed).

    The loop's stability is not checked inside (eigenvalues need the host): call
    ``check_stable`` first.

    Args:
      model: the layers.
      params: per layer ``{"w", "bias"}``.
      feedback: per layer the stored B (``neg_transpose(params)`` for the authors' start).
      x: the input batch.
      loss_fn: ``loss_fn(output) -> scalar``.
      config: the switches.
      state: unused.
      rng: unused.

    Returns:
      a ``Result``; ``steps`` is the most Euler steps any layer ran (0 for NDI).

    References:
      Podlaski & Machens, *Biological credit assignment through dynamic inversion of
      feedforward networks*, NeurIPS 2020.
    """
    blocks.refuse("di", model)
    del state, rng
    hs, pre = network.forward(model, params, x)
    mats = network.feedback_matrices(config.feedback, params, feedback)
    top = jax.grad(loss_fn)(hs[-1])
    errors = [top]
    delta = network.activation_vjp(model[-1], pre[-1], top)
    deltas = [delta]
    steps = jnp.asarray(0, jnp.int32)
    for k in range(len(model) - 1, 0, -1):
        layer, w, m = model[k], params[k]["w"], mats[k]
        if config.dynamic:
            r, s = invert_dynamic(layer, hs[k], w, m, delta, config)
            steps = jnp.maximum(steps, s)
        else:
            r = invert_direct(layer, hs[k], w, m, config.alpha, delta)
        errors.insert(0, r)
        delta = network.activation_vjp(model[k - 1], pre[k - 1], r)
        deltas.insert(0, delta)
    grads = [
        network.layer_grads(layer, h, p["w"], d)
        for layer, p, h, d in zip(model, params, hs[:-1], deltas, strict=True)
    ]
    return Result(grads, None, None, None, errors, steps)
