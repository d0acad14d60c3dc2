"""Predictive coding with its constraints relaxed: learned feedback, no backward derivative,
learned error weights, fixed or free predictions."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from wtfree.settling import blocks, network
from wtfree.settling.relax import settle
from wtfree.settling.result import Result

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PCConfig:
    """PC's switches; defaults from BerenMillidge/RelaxedPredictiveCoding ``main.py``.

    Attributes:
      steps: inference steps T (``--n_inference_steps`` 500).
      step_size: :math:`\\eta` (``--inference_learning_rate`` 0.01), on the energy's gradient
        :math:`2(\\epsilon_l - \\dots)` as the code (the factor 2 is the code's).
      feedback: ``bp`` (W, ``--use_backwards_weights False``), ``fa`` (a stored B)...
      derivative: the backward nonlinearity (``--use_backwards_nonlinearities True``).
      learn_feedback: B gets W's gradient, without decay (``--update_backwards_weights True``).
      error_weights: errors through learned matrices E, :math:`\\epsilon_l = \\mu_l - \\hat\\mu_l
        E_l`, instead of one-to-one (``--use_error_weights False``); pass E as ``state``.
      learn_error_weights: E gets ``state_grads`` (``--update_error_weights True``).
      fixed_predictions: the predictions stay at the forward pass (``--fixed_predictions True``);
        False recomputes them from the value nodes every step.
      tol: stop once no value node moves by more than this in a step.
    """

    steps: int = 500
    step_size: float = 0.01
    feedback: str = "bp"
    derivative: bool = True
    learn_feedback: bool = True
    error_weights: bool = False
    learn_error_weights: bool = True
    fixed_predictions: bool = True
    tol: float | None = None


def init_error_weights(
    rng: Array, widths: Sequence[int], std: float = 0.05, positive: bool = True
) -> list[Array]:
    """The hidden layers' error weights E as the code draws them: N(0, std), made positive.

    The code (``PCNet.__init__``) adds ``0.0 * eye`` to the draw, so E starts without the
    identity, and takes ``abs`` under ``--enforce_negative_errors True`` (its default).

    Args:
      rng: the key.
      widths: the hidden layers' widths, bottom to top.
      std: the draw's standard deviation.
      positive: take the absolute value.
    """
    keys = jax.random.split(rng, len(widths))
    es = [std * jax.random.normal(k, (w, w)) for k, w in zip(keys, widths, strict=True)]
    return [jnp.abs(e) for e in es] if positive else es


def predictive_coding(
    model: network.Model,
    params: network.Params,
    feedback: Sequence[Any] | None,
    x: Array,
    loss_fn: Callable[[Array], Array],
    config: PCConfig = PCConfig(),
    *,
    state: Any = None,
    rng: Array | None = None,
) -> Result:
    r"""Settles the value nodes with input and output clamped, then updates W at equilibrium.

    The output node is clamped to :math:`\mu_L = h_L - \partial L/\partial h_L` (the target y
    for :math:`L = \tfrac12\|h_L - y\|^2`), the hidden nodes start at the forward pass, and

    .. math::
      \epsilon_l = \mu_l - \hat\mu_l E_l, \qquad
      \mu_l \leftarrow \mu_l - 2\eta\,\big(\epsilon_l - J_x f_{l+1}(\cdot, M_{l+1})^\top
        (\phi'(a_{l+1}) \odot \epsilon_{l+1})\big),

    with :math:`\hat\mu_l = \phi(f_l(\mu_{l-1}, W_l) + b_l)` the prediction (fixed at the
    forward pass, or recomputed each step), E = I unless error weights are on, all nodes
    updated from the previous step's errors (the code's order), T times. Then

    .. math::
      \Delta W_l = -J_W f_l(\mu_{l-1}, \cdot)^\top (\phi'(a_l) \odot \epsilon_l), \quad
      \Delta B_l = \Delta W_l, \quad \Delta E_l = \hat\mu_l^\top \epsilon_l.

    With fixed predictions the equilibrium errors are backprop's, :math:`\epsilon_l =
    -\partial L/\partial h_l` (Whittington & Bogacz 2017; Millidge et al. 2020), whatever E.

    Args:
      model: the layers, or a chain of ``blocks.Block`` (a residual block as a node).
      params: per layer ``{"w", "bias"}``.
      feedback: per layer the stored B (or scale); None for ``bp``.
      x: the input batch.
      loss_fn: ``loss_fn(output) -> scalar``.
      config: the switches.
      state: the hidden layers' error weights E (``init_error_weights``) when
        ``config.error_weights``; else unused.
      rng: unused.

    Returns:
      a ``Result``; ``state`` is E unchanged and ``state_grads`` E's gradients when they learn.

    References:
      Millidge, Tschantz, Seth & Buckley, *Relaxing the constraints on predictive coding
      models*, arXiv:2010.01047, 2020. Whittington & Bogacz, *An approximation of the error
      backpropagation algorithm in a predictive coding network with local Hebbian synaptic
      plasticity*, Neural Computation 2017.
    """
    if blocks.is_blocks(model):  # one node per block's output (``settling.blocks``)
        return blocks.predictive_coding(model, params, feedback, x, loss_fn, config)
    del rng
    n = len(model)
    hs, pre = network.forward(model, params, x)
    mats = network.feedback_matrices(config.feedback, params, feedback)
    if config.error_weights and (state is None or len(state) != n - 1):
        raise ValueError(f"pc error_weights needs {n - 1} matrices E as state; got {state!r:.60}")
    top_error = -jax.grad(loss_fn)(hs[-1])
    target = hs[-1] + top_error

    def predictions(mus):
        # Every layer's (input, pre-activation, prediction) given the value nodes below it.
        if config.fixed_predictions:
            return hs[:-1], pre, hs[1:]
        ins = [x, *mus]
        ps = [ly.f(i, p["w"]) + p["bias"] for ly, p, i in zip(model, params, ins, strict=True)]
        return ins, ps, [ly.activation(a) for ly, a in zip(model, ps, strict=True)]

    def errors(mus, preds):
        hidden = [
            m - (p @ state[i] if config.error_weights else p)
            for i, (m, p) in enumerate(zip(mus, preds[:-1], strict=True))
        ]
        return [*hidden, target - preds[-1]]

    def step(mus):
        ins, ps, preds = predictions(mus)
        eps = errors(mus, preds)
        new = []
        for k in range(n - 1):
            g = eps[k + 1]
            if config.derivative:
                g = network.activation_vjp(model[k + 1], ps[k + 1], g)
            down = network.transpose_x(model[k + 1].f, ins[k + 1], mats[k + 1], g)
            new.append(mus[k] - 2 * config.step_size * (eps[k] - down))
        return tuple(new)

    mus, steps = settle(step, tuple(hs[1:-1]), config.steps, tol=config.tol)
    ins, ps, preds = predictions(mus)
    eps = errors(mus, preds)
    grads = [
        network.layer_grads(layer, i, p["w"], -network.activation_vjp(layer, a, e))
        for layer, p, i, a, e in zip(model, params, ins, ps, eps, strict=True)
    ]
    feedback_grads = None
    if config.learn_feedback and network.is_stored(config.feedback):
        feedback_grads = [g["w"] for g in grads]
    state_grads = None
    if config.error_weights and config.learn_error_weights:
        state_grads = [
            p.reshape(-1, p.shape[-1]).T @ e.reshape(-1, e.shape[-1])
            for p, e in zip(preds[:-1], eps[:-1], strict=True)
        ]
    return Result(grads, feedback_grads, state, state_grads, [-e for e in eps], steps)
