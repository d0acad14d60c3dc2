"""Settling over a chain of blocks: one state per block's output (a residual block as a node).

A ``network.Layer`` is ``activation(f(x, W) + bias)`` with f linear, which a residual block is
not. A ``Block`` is any differentiable node ``fn(params, x) -> (h, aux)``: the error goes down
through the transpose of its whole Jacobian in x, ``jax.vjp`` of ``fn`` (the residual path
and the shortcut, with batch norm at the batch's statistics as the forward pass computes
them), and its parameters' gradient is ``jax.vjp`` of ``fn`` in ``params`` at the settled
error of its output. What matrix the error crosses inside the block is the caller's: built
with backprop's convs it is W^T (weight transport), built with a feedback rule's custom_vjp
(``wtfree.rules``' ``apply``) it is that rule's B.

AR (any order and init) and PC with fixed predictions take a chain of blocks; the switches
that reach inside a layer (no backward derivative, free predictions, error weights) do not.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from wtfree.settling import network
from wtfree.settling.relax import settle
from wtfree.settling.result import Result

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Block:
    """One node of a chain of blocks.

    Attributes:
      fn: ``fn(params, x) -> (h, aux)``: the block's output h, differentiable in params and x,
        and what else its forward pass gives (a model's updated batch statistics), returned
        by the rules as ``Result.state``, one entry per block.
    """

    fn: Callable[[Any, Array], tuple[Array, Any]]


def is_blocks(model: Sequence[Any]) -> bool:
    """Whether ``model`` is a chain of ``Block`` (else of ``network.Layer``)."""
    kinds = {isinstance(node, Block) for node in model}
    if len(kinds) > 1:
        raise ValueError("a settling model is all Layer or all Block; got a mix")
    return kinds == {True}


def forward(model: Sequence[Block], params: Sequence[Any], x: Array):
    """The forward pass, each block linearized in its input.

    Returns:
      ``(hs, vjps, auxes)``: ``hs[0] = x`` and ``hs[k]`` block k's output (1-based);
      ``vjps[k-1](g)`` is :math:`J_x \\text{fn}_k(h_{k-1})^\\top g`; ``auxes`` the blocks' aux.
    """
    hs, vjps, auxes = [x], [], []
    for block, p in zip(model, params, strict=True):
        h, vjp, aux = jax.vjp(lambda x_, b=block, p=p: b.fn(p, x_), hs[-1], has_aux=True)
        hs.append(h)
        vjps.append(lambda g, vjp=vjp: vjp(g)[0])
        auxes.append(aux)
    return hs, vjps, auxes


def param_grads(model: Sequence[Block], params, hs, errors) -> list[Any]:
    r"""Each block's :math:`J_{\theta} \text{fn}_k(\theta, h_{k-1})^\top e_k`, shaped like its
    params: the gradient of every conv, dense and norm inside it, given the error at its
    output."""
    out = []
    for block, p, h, e in zip(model, params, hs[:-1], errors, strict=True):
        _, vjp = jax.vjp(lambda p_, b=block, h=h: b.fn(p_, h)[0], p)
        out.append(vjp(e)[0])
    return out


def _check(name: str, **switches) -> None:
    for key, (value, allowed) in switches.items():
        if value != allowed:
            raise ValueError(
                f"{name} {key}={value!r} on a chain of blocks; allowed: {allowed!r} (a block's "
                "derivative and predictions are inside its Jacobian, not a layer's)"
            )


def _feedback_grads(config, grads):
    # B learns by W's update: the caller maps each conv's kernel gradient to its B.
    if config.learn_feedback and network.is_stored(config.feedback):
        return grads
    return None


def activation_relaxation(
    model: Sequence[Block], params, feedback, x, loss_fn, config, *, state=None, rng=None
) -> Result:
    r"""AR over blocks: :math:`x_k \leftarrow x_k - \eta_x (x_k - J_{k+1}^\top x_{k+1})`, the
    top held at :math:`\partial L/\partial h_L`, J the whole block's Jacobian in its input;
    then each block's parameters get :math:`J_\theta^\top x_k`. Through backprop's convs the
    fixed point is backprop's :math:`\partial L/\partial h_k` and the update ``jax.grad``'s.

    ``feedback`` and ``state`` are unused (B is inside the blocks' ``fn``); ``Result.state``
    is the blocks' aux. ``config`` is ``ar.ARConfig``; ``derivative`` must be on.
    """
    del feedback, state, rng
    _check("ar", derivative=(config.derivative, True))
    hs, vjps, auxes = forward(model, params, x)
    top = jax.grad(loss_fn)(hs[-1])
    n = len(model)

    def step(xs):
        xs, old = list(xs), list(xs)
        for k in range(n - 2, -1, -1):
            above = top if k == n - 2 else (xs if config.order == "sequential" else old)[k + 1]
            xs[k] = xs[k] - config.step_size * (xs[k] - vjps[k + 1](above))
        return tuple(xs)

    start = hs[1:-1] if config.init == "activation" else [jnp.zeros_like(h) for h in hs[1:-1]]
    settled, steps = settle(step, tuple(start), config.steps, tol=config.tol)
    errors = [*settled, top]
    grads = param_grads(model, params, hs, errors)
    return Result(grads, _feedback_grads(config, grads), auxes, None, errors, steps)


def predictive_coding(
    model: Sequence[Block], params, feedback, x, loss_fn, config, *, state=None, rng=None
) -> Result:
    r"""PC with fixed predictions over blocks: the output node clamped to
    :math:`h_L - \partial L/\partial h_L`, :math:`\epsilon_k = \mu_k - h_k`,
    :math:`\mu_k \leftarrow \mu_k - 2\eta(\epsilon_k - J_{k+1}^\top \epsilon_{k+1})` from the
    previous step's errors; then :math:`\Delta\theta_k = -J_\theta^\top \epsilon_k`. Its
    equilibrium is backprop's (Whittington & Bogacz 2017).

    ``config`` is ``pc.PCConfig`` with ``fixed_predictions``, ``derivative`` on and no error
    weights; ``Result.state`` is the blocks' aux.
    """
    del feedback, state, rng
    _check(
        "pc",
        derivative=(config.derivative, True),
        fixed_predictions=(config.fixed_predictions, True),
        error_weights=(config.error_weights, False),
    )
    n = len(model)
    hs, vjps, auxes = forward(model, params, x)
    target = hs[-1] - jax.grad(loss_fn)(hs[-1])

    def errors(mus):
        return [*(m - h for m, h in zip(mus, hs[1:-1], strict=True)), target - hs[-1]]

    def step(mus):
        eps = errors(mus)
        return tuple(
            mus[k] - 2 * config.step_size * (eps[k] - vjps[k + 1](eps[k + 1])) for k in range(n - 1)
        )

    mus, steps = settle(step, tuple(hs[1:-1]), config.steps, tol=config.tol)
    eps = errors(mus)
    grads = param_grads(model, params, hs, [-e for e in eps])
    return Result(grads, _feedback_grads(config, grads), auxes, None, [-e for e in eps], steps)


# What a rule cannot do on a chain of blocks, in one line each (``refuse``).
LIMITS = {
    "di": "its error inverts each layer's one matrix W, (W B - alpha I)^-1, and a block holds "
    "several convs, batch norm and a shortcut",
    "pal": "its noise enters one layer's pre-activation and its B update pairs it with the "
    "rate of the layer above, where a block has several",
}


def refuse(rule: str, model: Sequence[Any]) -> None:
    """Raises ValueError in one line if ``model`` is a chain of blocks and ``rule`` in
    ``LIMITS``."""
    if rule in LIMITS and is_blocks(model):
        raise ValueError(f"{rule} on a chain of blocks; allowed: ar, pc ({LIMITS[rule]})")
