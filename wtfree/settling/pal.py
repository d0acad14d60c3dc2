"""Phaseless alignment learning (PAL): B learns from each layer's own noise while W learns, with
no separate phase; on dense layers, and on a conv net as the authors' LeNet (``is_conv``)."""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from wtfree.settling import blocks, network
from wtfree.settling.result import Result

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PALConfig:
    """PAL's settings; defaults from kma-code/Phaseless-Alignment-Learning's CIFAR-10 runner
    (``generalized_latent_equilibrium/experiments/CIFAR10/Fig6/runner.py``, the FC layers).

    Attributes:
      steps: time steps of dt per batch (``n_updates`` 100, the presentation time).
      dt: the time step (``LeNet5(dt=0.1)``).
      tau_xi: the noise's time constant in steps of dt (10; the code multiplies by dt).
      tau_hp: the high-pass filter's time constant in steps of dt (10).
      sigma: the noise's scale (5e-2).
      regularizer: :math:`\\alpha`, B's decay (5e-5).
      feedback: the ``wtfree.rules`` name whose stored B carries the error down (``fa``).
    """

    steps: int = 100
    dt: float = 0.1
    tau_xi: float = 10.0
    tau_hp: float = 10.0
    sigma: float = 5e-2
    regularizer: float = 5e-5
    feedback: str = "fa"


def init_state(model: network.Model, params: network.Params, x: Array) -> dict[str, list[Array]]:
    """Zero noise, filters and previous rates for every layer's output, shaped for x's batch."""
    hs, _ = network.forward(model, params, x)
    zeros = [jnp.zeros_like(h) for h in hs[1:]]
    return {"noise": zeros, "highpass": list(zeros), "rates": list(zeros)}


def ou_step(noise: Array, normal: Array, config: PALConfig) -> Array:
    r"""One Ornstein-Uhlenbeck step, :math:`\xi \leftarrow \xi + \tfrac{1}{\tau_\xi}
    (\sqrt{\tau_\xi\,dt}\,\sigma\,w - dt\,\xi)`, w the standard normal draw, :math:`\tau_\xi`
    in time units (``Linear_PAL._update_OU_noise``)."""
    tau = config.tau_xi * config.dt
    return noise + (math.sqrt(tau * config.dt) * config.sigma * normal - config.dt * noise) / tau


def highpass_step(highpass: Array, change: Array, config: PALConfig) -> Array:
    r""":math:`\hat r \leftarrow \hat r + \Delta r - \tfrac{dt}{\tau_{HP}} \hat r`
    (``Linear_PAL._calc_HP``)."""
    return highpass + change - config.dt / (config.tau_hp * config.dt) * highpass


def is_conv(layer: network.Layer) -> bool:
    r"""Whether PAL treats the layer as the authors treat their LeNet's conv layers.

    In kma-code/Phaseless-Alignment-Learning's CIFAR-10 LeNet (``generalized_latent_equilibrium/
    experiments/CIFAR10/le_layers_cifar10_training.py`` l. 86-96: ``Conv2d_PAL``, ``MaxPool2d``,
    ``Conv2d_PAL``, ``MaxPool2d``, ``Projection_PAL``, ``Linear_PAL``; settings in
    ``experiments/CIFAR10/Fig6/runner.py`` l. 109-114, one entry per layer):

    - a conv layer sends its error down through a **fixed random B**: ``Conv2d_PAL.
      _calculate_errors`` is ``rho_deriv * fold(B^T e)`` (``model/latent_equilibrium_layers.py``
      l. 332-352), B drawn N(0, 0.05) (l. 268-269), and its rate is zero, ``bw_lr_factors``
      [0, 0, 0, 0, 10, 10] (runner l. 109; ``learning_rate_B = learning_rate * bw_lr_factors[i]``,
      layers l. 1463): feedback alignment, with the activation's derivative and the max
      pooling's routing (``MaxPool2d.update_weights``, ``max_unpool2d``, l. 565-566);
    - a conv layer's own noise is zero (``sigma`` [0, 5e-2, 0, 5e-2, 5e-2, 5e-2], runner l. 114);
      the noise enters **after its max pooling**, added to the pooled rate by the pooling layer
      (``MaxPool2d.forward`` l. 538-547), and is the noise the layer above's B update reads
      (``LESequential._update_bw_weights`` l. 1683-1687 pairs layer i's high-passed rate with
      the noise of layer i - 1, the pooling's ``noise_out``).

    wtfree's LeNet chain (``wtfree.kinds.settling.chain``) puts the pooling in a conv layer's
    activation, so a conv layer here is the authors' conv and the pooling after it: its noise
    :math:`\xi_l` is added to its output, :math:`h_l = \phi_l(a_l) + \xi_l`, and its B stays
    as it is. A dense layer (``Projection_PAL``, ``Linear_PAL``) takes its noise in the
    pre-activation, :math:`h_l = \phi_l(a_l + \xi_l)`, and learns B.
    """
    return isinstance(layer.f, network.Conv)


def feedback_update(
    layer: network.Layer, b: Array, noise_below: Array, highpass: Array, regularizer: float
) -> Array:
    r"""PAL's rate of change of one layer's B (``Linear_PAL.get_bw_weight_derivatives``).

    .. math::
      \dot B = \tfrac{1}{n} J_W f(\xi_{l-1}, \cdot)^\top \hat r_l - \alpha B
      \;(= \tfrac1n \xi_{l-1}^\top \hat r_l - \alpha B \text{ for dense}),

    the noise at the layer's input times the high-passed rate at its output, over the n
    examples. Since the rate's response to the noise is :math:`\approx \phi' \odot \xi W`,
    its expectation is :math:`\propto W`: B aligns with W (here B has W's shape).
    """
    n = noise_below.shape[0]
    return network.transpose_w(layer.f, noise_below, b, highpass) / n - regularizer * b


def normals(rng: Array, state: dict[str, list[Array]], steps: int) -> list[Array]:
    """The standard normal draws PAL uses in a batch: per layer, ``(steps, *output shape)``."""
    keys = jax.random.split(rng, len(state["noise"]))
    return [
        jax.random.normal(k, (steps, *n.shape), n.dtype)
        for k, n in zip(keys, state["noise"], strict=True)
    ]


def phaseless_alignment(
    model: network.Model,
    params: network.Params,
    feedback: Sequence[Any] | None,
    x: Array,
    loss_fn: Callable[[Array], Array],
    config: PALConfig = PALConfig(),
    *,
    state: Any = None,
    rng: Array | None = None,
) -> Result:
    r"""Runs ``steps`` noisy time steps of the network on the batch, moving B, and updates W
    by the error sent down through B.

    Each step t, every hidden layer's noise :math:`\xi_l` takes an OU step and enters its
    pre-activation (a conv layer's: its output, after the pooling, ``is_conv``); each dense
    layer's rate change :math:`\Delta r_l` feeds its high-pass filter :math:`\hat r_l`; and
    :math:`\Delta B_l = dt\,\dot B_l` (``feedback_update``), summed over the steps, for every
    dense layer but the first (a conv layer's B stays fixed, as in the authors' LeNet). W's
    update is feedback alignment's on the noise-free pass through the B the batch started with
    (the rates in latent equilibrium respond at once, so a noise-free pass is their steady
    state), conv layers included:

    .. math::
      \Delta W_l = J_W f_l(h_{l-1}, \cdot)^\top (\phi'(a_l) \odot e_l), \qquad
      e_l = J_x f_{l+1}(\cdot, B_{l+1})^\top (\phi'(a_{l+1}) \odot e_{l+1}).

    Args:
      model: the layers.
      params: per layer ``{"w", "bias"}``.
      feedback: per layer the stored B.
      x: the input batch.
      loss_fn: ``loss_fn(output) -> scalar``.
      config: the settings.
      state: noise, filters and last rates from the previous batch (``init_state``).
      rng: this batch's key for the noise.

    Returns:
      a ``Result``; ``feedback_grads`` is :math:`-\Delta B` (optax subtracts it; the learning
      rate of B is the optimizer's), ``state`` the state to pass to the next batch.

    References:
      Max, Kriener, Pineda Garcia, Nowotny, Senn & Petrovici, *Learning efficient
      backprojections across cortical hierarchies in real time*, arXiv:2212.10249, 2022.
    """
    blocks.refuse("pal", model)
    if state is None or rng is None:
        raise ValueError("pal needs state (pal init_state) and rng; got None")
    if not network.is_stored(config.feedback):
        raise ValueError(
            f"pal feedback {config.feedback!r}; allowed: a rule with a stored B (fa, kp)"
        )
    n = len(model)
    hs, pre = network.forward(model, params, x)
    mats = network.feedback_matrices(config.feedback, params, feedback)
    top = jax.grad(loss_fn)(hs[-1])
    errors = network.backward_errors(model, hs, mats, top, pre=pre)
    grads = network.weight_grads(model, params, hs, pre, errors)

    # Noise enters the hidden layers only: the output's would reach no B.
    sigmas = [1.0] * (n - 1) + [0.0]
    conv = [is_conv(layer) for layer in model]

    def step(carry, draws):
        noise, highpass, rates, dbs = carry
        noise = [s * ou_step(xi, w, config) for s, xi, w in zip(sigmas, noise, draws, strict=True)]
        # The input does not move, so the first layer's pre-activation is the noise-free pass's:
        # computed once, not at every time step (it is most of a time step's products).
        h, new_rates = x, []
        for k, (layer, p, xi) in enumerate(zip(model, params, noise, strict=True)):
            a = pre[0] if k == 0 else layer.f(h, p["w"]) + p["bias"]
            if not conv[k]:
                h = layer.activation(a + xi)
            else:  # after the pooling (is_conv); the first layer's rate is the noise-free one
                h = (hs[1] if k == 0 else layer.activation(a)) + xi
            new_rates.append(h)
        # A conv layer's filtered rate would only feed its own B, which does not learn.
        highpass = [
            hp if c else highpass_step(hp, r - r0, config)
            for c, hp, r, r0 in zip(conv, highpass, new_rates, rates, strict=True)
        ]
        dbs = [dbs[0]] + [
            db
            if conv[k]
            else db
            + config.dt
            * feedback_update(model[k], b, noise[k - 1], highpass[k], config.regularizer)
            for k, (db, b) in enumerate(zip(dbs[1:], feedback[1:], strict=True), start=1)
        ]
        return (noise, highpass, new_rates, dbs), None

    draws = normals(rng, state, config.steps)
    carry = (
        state["noise"],
        state["highpass"],
        state["rates"],
        [jnp.zeros_like(b) for b in feedback],
    )
    (noise, highpass, rates, dbs), _ = jax.lax.scan(step, carry, draws)
    new_state = {"noise": noise, "highpass": highpass, "rates": rates}
    # Layer 1 sends no error down, so its B gets zeros (the input carries no noise); so do
    # conv layers' (is_conv).
    feedback_grads = [-db for db in dbs]
    return Result(
        grads, feedback_grads, new_state, None, errors, jnp.asarray(config.steps, jnp.int32)
    )
