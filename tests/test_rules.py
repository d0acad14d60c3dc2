"""Every rule against jax.grad or its closed form, for dense and conv linear ops."""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from wtfree import layers, optim, rules
from wtfree.models import mlp

RTOL = 1e-5


def dense(x, w):
    return x @ w


def conv(x, w):
    return lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# (linear op, input shape, kernel shape)
OPS = {
    "dense": (dense, (5, 7), (7, 3)),
    "conv": (conv, (2, 6, 6, 3), (3, 3, 3, 4)),
}


def _inputs(op, seed=0):
    f, x_shape, w_shape = OPS[op]
    kx, kw, kb, kg = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, w_shape)
    b = jax.random.normal(kb, w_shape)
    g = jax.random.normal(kg, f(x, w).shape)  # the output error
    return f, x, w, b, g


def _grads(rule, f, x, w, b, g, rng=None):
    """Cotangents of (x, w, b) for the loss <y, g>, so the output error is g."""

    def loss(x, w, b):
        return jnp.vdot(rules.get(rule).apply(f, x, w, b, rng), g)

    return jax.grad(loss, argnums=(0, 1, 2))(x, w, b)


def _plain_dx(f, x, w, g):
    """The error backprop sends down, by jax.grad of the plain op at weights w."""
    return jax.grad(lambda x_: jnp.vdot(f(x_, w), g))(x)


def _plain_dw(f, x, w, g):
    return jax.grad(lambda w_: jnp.vdot(f(x, w_), g))(w)


def _assert_close(a, b, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_bp_equals_jax_grad(op):
    f, x, w, b, g = _inputs(op)
    dx, dw, _ = _grads("bp", f, x, w, b, g)
    _assert_close(dx, _plain_dx(f, x, w, g))
    _assert_close(dw, _plain_dw(f, x, w, g))


@pytest.mark.parametrize("op", OPS)
def test_fa_with_b_equal_w_is_bp(op):
    f, x, w, _, g = _inputs(op)
    fa = _grads("fa", f, x, w, w, g)
    bp = _grads("bp", f, x, w, w, g)
    _assert_close(fa[0], bp[0])
    _assert_close(fa[1], bp[1])


@pytest.mark.parametrize("op", OPS)
def test_fa_sends_error_through_b(op):
    f, x, w, b, g = _inputs(op)
    dx, dw, db = _grads("fa", f, x, w, b, g)
    # The error goes down through B; W's gradient is the local one; B gets none.
    _assert_close(dx, _plain_dx(f, x, b, g))
    _assert_close(dw, _plain_dw(f, x, w, g))
    assert not np.any(np.asarray(db))
    assert not np.allclose(dx, _plain_dx(f, x, w, g), atol=1e-3)


def test_fa_dense_closed_form():
    f, x, w, b, g = _inputs("dense")
    dx, dw, _ = _grads("fa", f, x, w, b, g)
    _assert_close(dx, g @ b.T)
    _assert_close(dw, x.T @ g)


@pytest.mark.parametrize("op", OPS)
def test_usf_closed_form(op):
    f, x, w, _, g = _inputs(op)
    s = 0.3
    dx, dw, _ = _grads("usf", f, x, w, jnp.asarray(s), g)
    _assert_close(dx, _plain_dx(f, x, s * jnp.sign(w), g))
    _assert_close(dw, _plain_dw(f, x, w, g))
    if op == "dense":
        _assert_close(dx, g @ (s * jnp.sign(w)).T)


@pytest.mark.parametrize("op", OPS)
def test_usf_is_bp_when_all_magnitudes_equal_the_scale(op):
    f, x, w, _, g = _inputs(op)
    s = 0.25
    w = s * jnp.where(w >= 0, 1.0, -1.0)
    usf = _grads("usf", f, x, w, jnp.asarray(s), g)
    bp = _grads("bp", f, x, w, None, g)
    _assert_close(usf[0], bp[0])
    _assert_close(usf[1], bp[1])


def test_ss_is_an_alias_of_usf():
    assert rules.get("ss") is rules.get("usf")


@pytest.mark.parametrize("op", OPS)
def test_frsf_closed_form(op):
    f, x, w, m, g = _inputs(op)
    dx, dw, dm = _grads("frsf", f, x, w, m, g)
    _assert_close(dx, _plain_dx(f, x, jnp.abs(m) * jnp.sign(w), g))
    _assert_close(dw, _plain_dw(f, x, w, g))
    assert not np.any(np.asarray(dm))


@pytest.mark.parametrize("op", OPS)
def test_brsf_redraws_magnitudes_from_the_batch_key(op):
    f, x, w, _, g = _inputs(op)
    s = 0.5
    rng = jax.random.key(3)
    dx, dw, _ = _grads("brsf", f, x, w, jnp.asarray(s), g, rng)
    m = s * jnp.abs(jax.random.normal(rng, w.shape))
    _assert_close(dx, _plain_dx(f, x, m * jnp.sign(w), g))
    _assert_close(dw, _plain_dw(f, x, w, g))
    other, _, _ = _grads("brsf", f, x, w, jnp.asarray(s), g, jax.random.key(4))
    assert not np.allclose(dx, other, atol=1e-3)


@pytest.mark.parametrize("op", OPS)
def test_kp_gives_b_the_gradient_of_w(op):
    f, x, w, b, g = _inputs(op)
    dx, dw, db = _grads("kp", f, x, w, b, g)
    _assert_close(db, dw)
    _assert_close(dw, _plain_dw(f, x, w, g))
    _assert_close(dx, _plain_dx(f, x, b, g))


@pytest.mark.parametrize("op", OPS)
def test_wm_sends_error_through_b_and_gives_it_no_gradient(op):
    f, x, w, b, g = _inputs(op)
    dx, dw, db = _grads("wm", f, x, w, b, g)
    _assert_close(dx, _plain_dx(f, x, b, g))
    _assert_close(dw, _plain_dw(f, x, w, g))
    assert not np.any(np.asarray(db))


def _angle(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return math.degrees(math.acos(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))


@pytest.mark.parametrize("op,input_shape", [("dense", (64, 7)), ("conv", (8, 8, 8, 3))])
def test_mirror_update_points_along_w(op, input_shape):
    f, _, w, b, _ = _inputs(op)
    step = partial(rules.mirror_update, f, w, learning_rate=0.1, decay=0.0, noise_std=0.5)
    keys = jax.random.split(jax.random.key(7), 200)
    mean_update = jnp.mean(jax.vmap(lambda k: step(b, k, input_shape) - b)(keys), axis=0)
    assert _angle(mean_update, w) < 5.0
    assert _angle(b, w) > 45.0  # it starts far from W


def test_mirror_update_dense_closed_form():
    f, _, w, b, _ = _inputs("dense")
    rng = jax.random.key(1)
    new_b = rules.mirror_update(f, w, b, rng, (16, 7), learning_rate=0.1, decay=0.01, noise_std=2)
    x = 2 * jax.random.normal(rng, (16, 7))
    _assert_close(new_b, b + 0.1 * x.T @ (x @ w) - 0.01 * b, rtol=1e-4)


def test_direct_feedback_alignment_closed_form():
    """A 4-8-3 sigmoid net: the hidden kernel gets x^T [(e B) * sigmoid'(a)]."""
    model = mlp.Model(num_classes=3, widths=(8,), rule="dfa", activation="sigmoid")
    x = jax.random.normal(jax.random.key(0), (5, 4))
    labels = jnp.array([0, 1, 2, 1, 0])
    variables = model.init(jax.random.key(1), x)
    params, feedback = variables["params"], variables["feedback"]

    def loss(params):
        logits = model.apply({"params": params, "feedback": feedback}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    grads = jax.grad(loss)(params)
    w1, b1 = params["hidden_0"]["kernel"], params["hidden_0"]["bias"]
    w2, b2 = params["output"]["kernel"], params["output"]["bias"]
    a = x @ w1 + b1
    h = jax.nn.sigmoid(a)
    e = jax.nn.softmax(h @ w2 + b2) - jax.nn.one_hot(labels, 3)
    delta = (e @ feedback["direct_0"]["kernel"]) * h * (1 - h)
    _assert_close(grads["hidden_0"]["kernel"], x.T @ delta, rtol=1e-4)
    _assert_close(grads["output"]["kernel"], h.T @ e, rtol=1e-4)


class _ConvNet(nn.Module):
    """conv -> tanh -> conv -> mean: two KP conv layers."""

    @nn.compact
    def __call__(self, x, train=False):
        del train
        x = jnp.tanh(layers.Conv(features=4, rule="kp", name="conv_0")(x))
        x = layers.Conv(features=3, rule="kp", name="output")(x)
        return x.mean(axis=(1, 2))


@pytest.mark.parametrize(
    "model,x_shape",
    [
        (mlp.Model(num_classes=3, widths=(6,), rule="kp", activation="tanh"), (8, 5)),
        (_ConvNet(), (8, 6, 6, 2)),
    ],
    ids=["dense", "conv"],
)
def test_kp_matched_decay_closes_the_gap_in_closed_form(model, x_shape):
    """After N SGD steps with decay, ||W - B|| = (1 - lr*decay)^N ||W0 - B0|| per layer."""
    x = jax.random.normal(jax.random.key(0), x_shape)
    labels = jnp.arange(8) % 3
    init = model.init(jax.random.key(1), x)
    variables = {"params": init["params"], "feedback": init["feedback"]}
    lr, decay, steps = 0.1, 0.05, 20
    tx = optim.make_optimizer(lr, init[layers.TRAINED_FEEDBACK], weight_decay=decay)
    opt_state = tx.init(variables)

    def loss(variables):
        logits = model.apply(variables, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(variables, opt_state):
        grads = jax.grad(loss)(variables)
        updates, opt_state = tx.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    for _ in range(steps):
        variables, opt_state = step(variables, opt_state)
    assert set(init["feedback"]) == set(init["params"])  # one B per layer
    for name in init["feedback"]:
        w0, b0 = init["params"][name]["kernel"], init["feedback"][name]["feedback_kernel"]
        w, b = variables["params"][name]["kernel"], variables["feedback"][name]["feedback_kernel"]
        gap0, gap = jnp.linalg.norm(w0 - b0), jnp.linalg.norm(w - b)
        np.testing.assert_allclose(gap, (1 - lr * decay) ** steps * gap0, rtol=1e-4)
        assert not np.allclose(w, w0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_kp_gap_follows_matched_decay_gap_with_momentum_and_a_schedule(nesterov):
    """The gap B - W of a KP run with momentum and a cosine schedule is c_T (B0 - W0), c_T from
    the scalar recursion of optim.matched_decay_gap, in every layer, whatever the gradients."""
    model = _ConvNet()
    x = jax.random.normal(jax.random.key(0), (8, 6, 6, 2))
    labels = jnp.arange(8) % 3
    init = model.init(jax.random.key(1), x)
    variables = {"params": init["params"], "feedback": init["feedback"]}
    decay, steps = 0.05, 25
    schedule = optim.make_schedule("cosine", 0.3, total_steps=steps, warmup_steps=5)
    tx = optim.make_optimizer(
        schedule,
        init[layers.TRAINED_FEEDBACK],
        momentum=0.9,
        nesterov=nesterov,
        weight_decay=decay,
    )
    opt_state = tx.init(variables)

    @jax.jit
    def step(variables, opt_state):
        grads = jax.grad(
            lambda v: optax.softmax_cross_entropy_with_integer_labels(
                model.apply(v, x), labels
            ).mean()
        )(variables)
        updates, opt_state = tx.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    for _ in range(steps):
        variables, opt_state = step(variables, opt_state)
    factor = optim.matched_decay_gap(schedule, steps, decay, momentum=0.9, nesterov=nesterov)
    # Momentum makes the factor differ from the no-momentum one: the test tells them apart.
    assert abs(factor - optim.matched_decay_gap(schedule, steps, decay)) > 0.05
    for name in init["feedback"]:
        w0, b0 = init["params"][name]["kernel"], init["feedback"][name]["feedback_kernel"]
        w, b = variables["params"][name]["kernel"], variables["feedback"][name]["feedback_kernel"]
        np.testing.assert_allclose(b - w, factor * (b0 - w0), rtol=2e-4, atol=1e-6)


def test_matched_decay_gap_closed_form_without_momentum():
    assert optim.matched_decay_gap(0.1, 20, 0.05) == pytest.approx((1 - 0.1 * 0.05) ** 20)


def test_fixed_feedback_is_not_moved_by_the_optimizer():
    model = mlp.Model(num_classes=3, widths=(6,), rule="fa")
    x = jnp.ones((4, 5))
    init = model.init(jax.random.key(1), x)
    variables = {"params": init["params"], "feedback": init["feedback"]}
    tx = optim.make_optimizer(0.1, init.get(layers.TRAINED_FEEDBACK, {}), weight_decay=0.1)
    grads = jax.tree.map(jnp.ones_like, variables)
    updates, _ = tx.update(grads, tx.init(variables), variables)
    new = optax.apply_updates(variables, updates)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, new["feedback"], variables["feedback"]))
    assert not np.allclose(
        new["params"]["output"]["kernel"], variables["params"]["output"]["kernel"]
    )


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf", "kp", "wm"])
def test_each_jitted_op_traces_once(rule):
    f, x, w, b, g = _inputs("dense")
    traces = 0

    @jax.jit
    def grad_step(x, w, b, rng):
        nonlocal traces
        traces += 1
        return _grads(rule, f, x, w, b, g, rng)

    rng = jax.random.key(0)
    b = jnp.asarray(0.5) if not rules.get(rule).stores_feedback else b
    for i in range(3):
        jax.block_until_ready(grad_step(x + i, w, b, rng))
    assert traces == 1


def test_unknown_rule_error_lists_the_known_rules():
    known = r"unknown rule 'xx'; known rules: aa, ar, bp, brsf, dfa, dfa_block, di, fa"
    with pytest.raises(ValueError, match=known):
        rules.get("xx")


def test_conv_hebbian_has_the_scale_of_a_dense_layer():
    """Averaged over output positions, E[H] = n W for the centre tap (valid everywhere)."""
    _, _, w, _, _ = _inputs("conv")
    n = 4
    keys = jax.random.split(jax.random.key(2), 400)
    mean_h = jnp.mean(
        jax.vmap(lambda k: rules.hebbian(conv, w, jax.random.normal(k, (n, 8, 8, 3))))(keys), 0
    )
    np.testing.assert_allclose(mean_h[1, 1] / n, w[1, 1], atol=0.1 * float(jnp.abs(w).max()))
    # A corner tap sees the input at 7x7 of the 8x8 positions.
    np.testing.assert_allclose(
        mean_h[0, 0] / n, w[0, 0] * 49 / 64, atol=0.1 * float(jnp.abs(w).max())
    )


@pytest.mark.parametrize("rule", ["bp", "fa", "kp", "shallow"])
def test_f_may_close_over_a_differentiated_scale(rule):
    # f(x, W) = s x W / |W| (weight norm with a learned gain): s and W get jax.grad's local
    # gradients under every rule, and a few SGD steps on s and W train the layer.
    f_plain, x, w, b, g = _inputs("dense")

    def loss(s, w, rule):
        def f(x_, w_):
            return s * f_plain(x_, w_) / jnp.linalg.norm(w)

        return jnp.vdot(rules.get(rule).apply(f, x, w, b, None), g)

    s = jnp.asarray(1.5)
    got = jax.grad(loss, argnums=(0, 1))(s, w, rule)
    want = jax.grad(loss, argnums=(0, 1))(s, w, "bp")
    _assert_close(got[0], want[0])
    # W's gradient through its use as a kernel is the local one; through the norm it is
    # jax.grad's, so the whole matches bp's (the norm is no linear op whose error is sent down).
    _assert_close(got[1], want[1])

    target = jax.random.normal(jax.random.key(9), g.shape)

    def fit(params):
        s, w = params

        def f(x_, w_):
            return s * f_plain(x_, w_) / jnp.linalg.norm(w)

        y = rules.get(rule).apply(f, x, w, b, None)
        return jnp.mean(jnp.square(y - target))

    params = (s, w)
    before = fit(params)
    for _ in range(20):
        grads = jax.grad(fit)(params)
        params = jax.tree.map(lambda p, d: p - 0.05 * d, params, grads)
    assert fit(params) < 0.9 * before
