"""wtfree.nnx.convert: a stock NNX model's Linear, LinearGeneral, Conv and Einsum under a rule."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wtfree

LAYERS = {
    "linear": (lambda rngs: nnx.Linear(6, 4, rngs=rngs), (3, 6)),
    "linear_general": (
        lambda rngs: nnx.LinearGeneral((4, 5), (2, 3), axis=(-2, -1), rngs=rngs),
        (3, 4, 5),
    ),
    "conv": (lambda rngs: nnx.Conv(2, 3, (3, 3), strides=2, rngs=rngs), (2, 6, 6, 2)),
    "einsum": (lambda rngs: nnx.Einsum("bij,ijk->bk", (4, 5, 3), (3,), rngs=rngs), (3, 4, 5)),
}


def _loss(model, x):
    y = model(x)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))


def _grads(model, x, wrt=nnx.Param):
    return nnx.grad(_loss, argnums=(nnx.DiffState(0, wrt), 1))(model, x)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.general = nnx.LinearGeneral((5, 5, 3), 6, axis=(-3, -2, -1), rngs=rngs)
        self.einsum = nnx.Einsum("bi,ij->bj", (6, 5), (5,), rngs=rngs)
        self.output = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        x = nnx.tanh(self.general(x))
        return self.output(nnx.relu(self.einsum(x)))


def test_bp_equals_nnx_grad():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2))
    stock = Net(nnx.Rngs(0))
    converted = wtfree.nnx.convert(copy.deepcopy(stock), "bp")
    want, got = _grads(stock, x), _grads(converted, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_error_goes_down_through_b(kind, rule):
    make, shape = LAYERS[kind]
    x = jax.random.normal(jax.random.key(1), shape)
    stock = make(nnx.Rngs(2))
    converted = wtfree.nnx.convert(copy.deepcopy(stock), rule, rngs=3)
    b = converted.feedback_kernel[...]
    assert b.shape == stock.kernel[...].shape
    assert isinstance(
        converted.feedback_kernel,
        {"fa": wtfree.nnx.FixedFeedback, "kp": wtfree.nnx.TrainedFeedback}[rule],
    )
    # The stock layer with W replaced by B sends down what the converted layer does.
    through_b = copy.deepcopy(stock)
    through_b.kernel[...] = b
    grads, dx = _grads(converted, x, (nnx.Param, wtfree.nnx.Feedback))
    want_w, _ = _grads(stock, x)
    _, want_dx = _grads(through_b, x)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["kernel"][...], want_w["kernel"][...], rtol=1e-5, atol=1e-6)
    want_b = grads["kernel"][...] if rule == "kp" else 0.0
    np.testing.assert_array_equal(grads["feedback_kernel"][...], want_b)


def test_kp_trains_b_with_ws_optimizer():
    x = jax.random.normal(jax.random.key(4), (2, 5, 5, 2))
    model = wtfree.nnx.convert(Net(nnx.Rngs(5)), "kp")
    # Start B at W: with W's gradient and W's optimizer (AdamW, decay included) it stays W.
    for layer in (model.conv, model.general, model.einsum, model.output):
        layer.feedback_kernel[...] = layer.kernel[...]
    wrt = wtfree.nnx.trainable(model)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2, weight_decay=0.1), wrt=wrt)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(_loss, argnums=nnx.DiffState(0, wrt))(model, x)
        optimizer.update(model, grads)

    before = model.output.kernel[...]
    for _ in range(3):
        step(model, optimizer)
    for layer in (model.conv, model.general, model.einsum, model.output):
        np.testing.assert_array_equal(layer.feedback_kernel[...], layer.kernel[...])
    assert not np.allclose(model.output.kernel[...], before)


def test_fa_b_is_not_trained_by_the_optimizer():
    x = jax.random.normal(jax.random.key(6), (2, 5, 5, 2))
    model = wtfree.nnx.convert(Net(nnx.Rngs(7)), "fa")
    b = model.output.feedback_kernel[...]
    wrt = wtfree.nnx.trainable(model)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=wrt)
    optimizer.update(model, nnx.grad(_loss, argnums=nnx.DiffState(0, wrt))(model, x))
    np.testing.assert_array_equal(model.output.feedback_kernel[...], b)


def test_rules_it_cannot_take_are_refused_in_one_line():
    with pytest.raises(ValueError, match="rule 'wm': wtfree.nnx offers"):
        wtfree.nnx.convert(Net(nnx.Rngs(0)), "wm")
