"""A layered model as the settling rules see it: linear ops, activations, feedback operators."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from wtfree import rules
from wtfree.rules import LinearFn

Array = jax.Array
Params = list[dict[str, Array]]


def identity(a: Array) -> Array:
    return a


def dense(x: Array, w: Array) -> Array:
    """``x @ W`` over the last axis; W is (in, out) as in ``flax.linen.Dense``."""
    return x @ w


def flatten_dense(x: Array, w: Array) -> Array:
    """``flatten(x) @ W``: a dense layer after a conv, linear in x and in W alike."""
    return x.reshape(x.shape[0], -1) @ w


@dataclasses.dataclass(frozen=True)
class Conv:
    """A 2-d convolution (NHWC input, HWIO kernel), then ``pool`` x ``pool`` average pooling.

    Average pooling is linear, so the pooled convolution is still linear in x and in W and
    ``jax.vjp`` gives both of its transposes (a LeNet without max pooling). The transpose in x,
    which the settling loops apply every step, is the op's own ``transpose_x``: the same map
    written as a forward convolution with the flipped kernel in HWIO. ``jax.vjp``'s form
    (the kernel as HWOI) runs 3-4x slower inside XLA:CPU's while loop (jax-ml/jax#12868;
    docs/settling.md, "Cost of a settling step").
    """

    strides: tuple[int, int] = (1, 1)
    padding: str | tuple[tuple[int, int], ...] = "VALID"
    pool: int = 1

    def conv(self, x: Array, w: Array) -> Array:
        return jax.lax.conv_general_dilated(
            x, w, self.strides, self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def pooling(self, y: Array) -> Array:
        window = (1, self.pool, self.pool, 1)
        return jax.lax.reduce_window(y, 0.0, jax.lax.add, window, window, "VALID") / (
            self.pool * self.pool
        )

    def __call__(self, x: Array, w: Array) -> Array:
        y = self.conv(x, w)
        return self.pooling(y) if self.pool > 1 else y

    def transpose_x(self, x: Array, w: Array, g: Array) -> Array:
        r""":math:`J_x f(\cdot, W)^\top g`, equal to ``jax.vjp``'s, as a forward convolution.

        With input size n, kernel size k, stride s, low padding p and output size m per
        spatial axis, the transpose convolves g dilated by s, padded by (k - 1 - p) below and
        (n - 1 + p - (m - 1) s) above, with the kernel flipped in space and its two channel
        axes swapped (jax's ``_conv_general_vjp_lhs_padding``, with the kernel laid out HWIO).
        """
        if self.pool > 1:
            y = jax.eval_shape(self.conv, x, w)
            g = jax.linear_transpose(self.pooling, jax.ShapeDtypeStruct(y.shape, g.dtype))(g)[0]
        window = w.shape[:2]
        pads = self.padding
        if isinstance(pads, str):
            pads = jax.lax.padtype_to_pads(x.shape[1:3], window, self.strides, pads)
        pads = [
            (k - 1 - lo, n - 1 + lo - (m - 1) * s)
            for k, (lo, _), n, m, s in zip(
                window, pads, x.shape[1:3], g.shape[1:3], self.strides, strict=True
            )
        ]
        kernel = jnp.flip(w, (0, 1)).swapaxes(2, 3)
        return jax.lax.conv_general_dilated(
            g,
            kernel,
            (1, 1),
            pads,
            lhs_dilation=self.strides,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


def make_conv(
    strides: tuple[int, int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "VALID",
    pool: int = 1,
) -> Conv:
    """A 2-d convolution (NHWC input, HWIO kernel), then ``pool`` x ``pool`` average pooling
    (``Conv``): ``padding`` is "VALID", "SAME" or one (low, high) pair per spatial axis."""
    if not isinstance(padding, str):
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return Conv(tuple(int(s) for s in strides), padding, int(pool))


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer, ``h = activation(f(x, W) + bias)``.

    Attributes:
      f: the linear op ``f(x, W) -> a``, linear in each argument; its output's last axis
        holds the features the bias is added to. It may carry ``f.transpose_x(x, M, g)``, its
        transpose in x at the matrix M, to be used instead of ``jax.vjp``'s (``transpose_x``).
      activation: applied to ``a``; elementwise or not (its derivative is taken by ``jax.vjp``).
    """

    f: LinearFn = dense
    activation: Callable[[Array], Array] = identity


Model = Sequence[Layer]


def init_params(rng: Array, shapes: Sequence[tuple[int, ...]], std: float = 0.05) -> Params:
    """Normal(0, std) weights and zero biases, as the AR and PC authors draw them.

    Args:
      rng: the key.
      shapes: each layer's W shape; the last entry is the output width (the bias's size).
      std: the weights' standard deviation (0.05 in both Millidge et al. repositories).

    Returns:
      a list of ``{"w": W, "bias": b}``.
    """
    keys = jax.random.split(rng, len(shapes))
    return [
        {"w": std * jax.random.normal(k, s), "bias": jnp.zeros((s[-1],))}
        for k, s in zip(keys, shapes, strict=True)
    ]


def forward(model: Model, params: Params, x: Array) -> tuple[list[Array], list[Array]]:
    """The forward pass, keeping every layer's output.

    Returns:
      ``(hs, pre)``: ``hs[0] = x``, ``hs[l]`` the output of layer l (1-based) and ``pre[l-1]``
      its pre-activation ``a_l``.
    """
    hs, pre = [x], []
    for layer, p in zip(model, params, strict=True):
        a = layer.f(hs[-1], p["w"]) + p["bias"]
        pre.append(a)
        hs.append(layer.activation(a))
    return hs, pre


def transpose_x(f: LinearFn, x: Array, m: Array, g: Array) -> Array:
    r""":math:`J_x f(\cdot, M)^\top g`: the error g sent down through M (``g @ M.T`` for dense).

    f is linear in x, so the result does not depend on x's value, only on its shape. An op
    that has its own ``transpose_x(x, m, g)`` (``Conv``) gives it; any other op, ``jax.vjp``.
    """
    own = getattr(f, "transpose_x", None)
    if own is not None:
        return own(x, m, g)
    _, vjp = jax.vjp(lambda x_: f(x_, m), x)
    return vjp(g)[0]


def transpose_w(f: LinearFn, x: Array, w: Array, g: Array) -> Array:
    r""":math:`J_W f(x, \cdot)^\top g`, shaped like W (``x.T @ g`` for dense)."""
    _, vjp = jax.vjp(lambda w_: f(x, w_), w)
    return vjp(g)[0]


def activation_vjp(layer: Layer, a: Array, g: Array) -> Array:
    r""":math:`J_\phi(a)^\top g` (``phi'(a) * g`` for an elementwise activation)."""
    _, vjp = jax.vjp(layer.activation, a)
    return vjp(g)[0]


def layer_grads(layer: Layer, x: Array, w: Array, delta: Array) -> dict[str, Array]:
    """W's and the bias's gradient for the layer fed x whose pre-activation error is delta."""
    return {
        "w": transpose_w(layer.f, x, w, delta),
        "bias": delta.reshape(-1, delta.shape[-1]).sum(0),
    }


def feedback_matrices(feedback: str, params: Params, stored: Sequence[Any] | None) -> list[Array]:
    """The matrix each layer sends its error down through, by the rule named ``feedback``.

    Every rule whose ``matrix(w, b)`` is defined serves: ``bp`` (W itself, so the transpose
    of the Jacobian: weight transport), ``fa``/``kp``/``wm`` (the stored B), ``usf`` (``b *
    sign(W)`` with b the scale), ``frsf``, ``brsf`` (its expectation).

    Args:
      feedback: a ``wtfree.rules`` name.
      params: the layers' ``{"w", "bias"}``.
      stored: each layer's stored feedback weights (or scale); None for ``bp``.

    Returns:
      one matrix per layer, shaped like its W.
    """
    rule = rules.get(feedback)
    if rule.matrix is None:
        raise ValueError(
            f"feedback {feedback!r} sends no matrix down; allowed: rules with a matrix, "
            + ", ".join(n for n in rules.names() if rules.get(n).matrix is not None)
        )
    if stored is None:
        if rule.stores_feedback:
            raise ValueError(f"feedback {feedback!r} needs stored feedback weights; got None")
        stored = [None] * len(params)
    return [rule.matrix(p["w"], b) for p, b in zip(params, stored, strict=True)]


def is_stored(feedback: str) -> bool:
    """Whether the rule named ``feedback`` sends the error down through its stored B itself
    (fa, kp, wm, the alignment-loss rules), so that B can learn; not bp or the sign rules."""
    return rules.get(feedback).matrix is rules.get("fa").matrix


def backward_errors(
    model: Model,
    hs: Sequence[Array],
    mats: Sequence[Array],
    top: Array,
    *,
    pre: Sequence[Array],
    derivative: bool = True,
) -> list[Array]:
    r"""One backward sweep through the feedback matrices: the fixed point the settling rules
    relax to.

    .. math::
      e_L = \text{top}, \qquad e_l = J_x f_{l+1}(\cdot, M_{l+1})^\top\,
      \big(\phi'_{l+1}(a_{l+1}) \odot e_{l+1}\big),

    with :math:`\phi'` left out when ``derivative`` is False. For M = W this is backprop's
    :math:`\partial L / \partial h_l`; for a fixed B, feedback alignment's error.

    Returns:
      ``[e_1, ..., e_L]``, the errors at the layers' outputs.
    """
    errors = [top]
    for k in range(len(model) - 1, 0, -1):
        g = errors[0]
        if derivative:
            g = activation_vjp(model[k], pre[k], g)
        errors.insert(0, transpose_x(model[k].f, hs[k], mats[k], g))
    return errors


def weight_grads(
    model: Model, params: Params, hs: Sequence[Array], pre: Sequence[Array], errors: Sequence[Array]
) -> Params:
    """Every layer's gradient from the errors at its output, through its own derivative."""
    return [
        layer_grads(layer, h, p["w"], activation_vjp(layer, a, e))
        for layer, p, h, a, e in zip(model, params, hs[:-1], pre, errors, strict=True)
    ]
