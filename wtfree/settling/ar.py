"""Activation relaxation (AR): each layer's state relaxes to its error, the forward pass frozen."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from wtfree.settling import blocks, network
from wtfree.settling.relax import settle
from wtfree.settling.result import Result

Array = jax.Array
ORDERS = ("sequential", "parallel")
INITS = ("activation", "zeros")


@dataclasses.dataclass(frozen=True)
class ARConfig:
    """AR's switches; defaults from BerenMillidge/ActivationRelaxation ``main.py``.

    Attributes:
      steps: relaxation steps T (``--n_inference_steps`` 100).
      step_size: :math:`\\eta_x` (``--inference_learning_rate`` 0.1).
      feedback: the ``wtfree.rules`` name whose matrix carries the error down: ``bp`` (W, the
        code's default ``--use_backwards_weights False``), ``fa``/``kp`` (a stored B), ``usf``...
      derivative: multiply by the activation's derivative on the way down
        (``--use_backward_nonlinearity True``). The weight update always uses it, as the code's.
      learn_feedback: B gets W's gradient, without decay (``--update_backwards_weights True``);
        only for rules that store B.
      order: ``sequential`` updates the layers top-down within a step, each from the freshly
        updated layer above (the code's loop); ``parallel`` updates all from the previous step.
      init: the states start at the forward activations (the code's) or at zero.
      tol: stop once no state moves by more than this in a step (None: always T steps).
    """

    steps: int = 100
    step_size: float = 0.1
    feedback: str = "bp"
    derivative: bool = True
    learn_feedback: bool = True
    order: str = "sequential"
    init: str = "activation"
    tol: float | None = None

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"ar order {self.order!r}; allowed: {', '.join(ORDERS)}")
        if self.init not in INITS:
            raise ValueError(f"ar init {self.init!r}; allowed: {', '.join(INITS)}")


def activation_relaxation(
    model: network.Model,
    params: network.Params,
    feedback: Sequence[Any] | None,
    x: Array,
    loss_fn: Callable[[Array], Array],
    config: ARConfig = ARConfig(),
    *,
    state: Any = None,
    rng: Array | None = None,
) -> Result:
    r"""Relaxes each layer's state to its error with the forward pass frozen, then updates W.

    .. math::
      x_L = \partial L / \partial h_L, \qquad
      x_l \leftarrow x_l - \eta_x \big(x_l - J_x f_{l+1}(\cdot, M_{l+1})^\top
        (\phi'(a_{l+1}) \odot x_{l+1})\big) \quad (l = L-1, \dots, 1),

    T times, with :math:`\phi'` dropped when ``derivative`` is off and M the feedback matrix
    (W: backprop's Jacobian transpose; B; sign(W)...). Its fixed point is
    ``network.backward_errors``: backprop's :math:`\partial L/\partial h_l` for M = W. Then

    .. math::
      \Delta W_l = J_W f_l(h_{l-1}, \cdot)^\top (\phi'(a_l) \odot x_l), \qquad
      \Delta B_l = \Delta W_l \text{ (learned B, no decay)}.

    Args:
      model: the layers, or a chain of ``blocks.Block`` (a residual block as a node).
      params: per layer ``{"w", "bias"}``.
      feedback: per layer the stored B (or the sign rules' scale); None for ``bp``.
      x: the input batch.
      loss_fn: ``loss_fn(output) -> scalar`` (the targets closed over).
      config: the switches.
      state: unused (AR keeps no state between batches).
      rng: unused.

    Returns:
      a ``Result``; ``feedback_grads`` is set when B is stored and learns.

    References:
      Millidge, Tschantz, Seth & Buckley, *Activation Relaxation: a local dynamical
      approximation to backpropagation in the brain*, arXiv:2009.05359, 2020.
    """
    if blocks.is_blocks(model):  # one state per block's output (``settling.blocks``)
        return blocks.activation_relaxation(model, params, feedback, x, loss_fn, config)
    del state, rng
    hs, pre = network.forward(model, params, x)
    mats = network.feedback_matrices(config.feedback, params, feedback)
    top = jax.grad(loss_fn)(hs[-1])
    n = len(model)

    def target(k, above):
        # The value x_l relaxes towards, given the state of the layer above it.
        g = network.activation_vjp(model[k], pre[k], above) if config.derivative else above
        return network.transpose_x(model[k].f, hs[k], mats[k], g)

    def step(xs):
        xs = list(xs)
        old = list(xs)
        for k in range(n - 2, -1, -1):
            above = top if k == n - 2 else (xs if config.order == "sequential" else old)[k + 1]
            xs[k] = xs[k] - config.step_size * (xs[k] - target(k + 1, above))
        return tuple(xs)

    start = hs[1:-1] if config.init == "activation" else [jnp.zeros_like(h) for h in hs[1:-1]]
    settled, steps = settle(step, tuple(start), config.steps, tol=config.tol)
    errors = [*settled, top]
    grads = network.weight_grads(model, params, hs, pre, errors)
    feedback_grads = None
    if config.learn_feedback and network.is_stored(config.feedback):
        feedback_grads = [g["w"] for g in grads]
    return Result(grads, feedback_grads, None, None, errors, steps)
