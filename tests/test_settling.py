"""The settling rules against closed forms: jax.grad, feedback alignment's custom_vjp, the
dynamic-inversion steady state, PAL's B update written out; and a few training steps each."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wtfree import rules, settling
from wtfree.settling import di as di_lib
from wtfree.settling import network
from wtfree.settling import pal as pal_lib

WIDTHS = (5, 7, 6, 3)
BATCH = 4


def mlp(activation=jnp.tanh, widths=WIDTHS):
    n = len(widths) - 1
    return [
        settling.Layer(settling.dense, activation if i < n - 1 else settling.identity)
        for i in range(n)
    ]


def setup(seed=0, widths=WIDTHS, std=0.4, dtype=jnp.float64):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    shapes = list(zip(widths[:-1], widths[1:], strict=True))
    params = settling.init_params(k1, shapes, std)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    b = [
        std * jax.random.normal(k, s, dtype)
        for k, s in zip(jax.random.split(k2, len(shapes)), shapes, strict=True)
    ]
    x = jax.random.normal(k3, (BATCH, widths[0]), dtype)
    y = jax.random.normal(k4, (BATCH, widths[-1]), dtype)
    return params, b, x, y


def mse(y):
    return lambda out: 0.5 * jnp.sum((out - y) ** 2)


def loss_of(model, params, x, y):
    hs, _ = settling.forward(model, params, x)
    return mse(y)(hs[-1])


def angle(a, b):
    a, b = jnp.ravel(a), jnp.ravel(b)
    return float(jnp.degrees(jnp.arccos(jnp.dot(a, b) / jnp.linalg.norm(a) / jnp.linalg.norm(b))))


def assert_trees_close(a, b, rtol=1e-6, atol=1e-9):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def fa_probe_grads(model, params, b, x, y, straight_through=False):
    """Feedback alignment through wtfree.rules, by jax.grad: weight grads and, through zero
    probes added to each layer's output, the error arriving at every layer's output."""

    def loss(params, probes):
        h = x
        for layer, p, bb, probe in zip(model, params, b, probes, strict=True):
            a = rules.get("fa").apply(settling.dense, h, p["w"], bb, None) + p["bias"]
            act = layer.activation(a)
            if straight_through:
                # phi forward, derivative 1: feedback without the activation's derivative.
                act = a + jax.lax.stop_gradient(act - a)
            h = act + probe
        return mse(y)(h)

    hs, _ = settling.forward(model, params, x)
    probes = [jnp.zeros_like(h) for h in hs[1:]]
    return jax.grad(loss, argnums=(0, 1))(params, probes)


def test_settle_runs_all_steps_or_stops_at_the_tolerance():
    step = lambda s: {"a": 0.5 * s["a"] + 1.0}  # noqa: E731
    state, steps = settling.settle(step, {"a": jnp.zeros(3)}, 60)
    assert int(steps) == 60
    np.testing.assert_allclose(state["a"], 2.0, rtol=1e-6)
    state, steps = settling.settle(step, {"a": jnp.zeros(3)}, 60, tol=1e-3)
    # |change| halves from 1: the step that moves it by 2^-10 < 1e-3 is the 11th.
    assert int(steps) == 11
    np.testing.assert_allclose(state["a"], 2.0, atol=2e-3)
    jitted = jax.jit(lambda s: settling.settle(step, s, 60, tol=1e-3))
    assert int(jitted({"a": jnp.zeros(3)})[1]) == 11


@pytest.mark.parametrize("order", ["sequential", "parallel"])
def test_ar_with_weight_transport_equals_jax_grad(order):
    with jax.enable_x64(True):
        model = mlp()
        params, _, x, y = setup()
        config = settling.ARConfig(steps=400, order=order)
        result = settling.activation_relaxation(model, params, None, x, mse(y), config)
        assert_trees_close(result.grads, jax.grad(loss_of, argnums=1)(model, params, x, y))
        assert result.feedback_grads is None


def max_pool_tanh(a):
    # Max pooling is not linear, so it goes with the activation (its vjp routes the error).
    return jax.lax.reduce_window(
        jnp.tanh(a), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )


def lenet(pool):
    """A tiny LeNet: conv (then 2x2 pooling), dense, dense; float64 (call under x64)."""
    k = jax.random.split(jax.random.key(1), 4)
    conv = (
        settling.Layer(settling.make_conv(padding="SAME", pool=2), jnp.tanh)
        if pool == "avg"
        else settling.Layer(settling.make_conv(padding="SAME"), max_pool_tanh)
    )
    model = [conv, settling.Layer(settling.flatten_dense, jnp.tanh), settling.Layer(settling.dense)]
    params = [
        {"w": 0.5 * jax.random.normal(k[0], (3, 3, 1, 2), jnp.float64), "bias": jnp.zeros(2)},
        {"w": 0.3 * jax.random.normal(k[1], (2 * 2 * 2, 5), jnp.float64), "bias": jnp.zeros(5)},
        {"w": 0.3 * jax.random.normal(k[2], (5, 3), jnp.float64), "bias": jnp.zeros(3)},
    ]
    x = jax.random.normal(k[3], (2, 4, 4, 1), jnp.float64)
    return model, params, x, jnp.ones((2, 3))


def _assert_weight_transport_equals_jax_grad(name, model, params, x, y):
    """AR or PC through W^T, settled long enough, gives jax.grad's W gradient."""
    config = {
        "ar": settling.ARConfig(steps=300),
        "pc": settling.PCConfig(steps=600, step_size=0.05),
    }[name]
    result = settling.get(name).apply(model, params, None, x, mse(y), config)
    assert_trees_close(result.grads, jax.grad(loss_of, argnums=1)(model, params, x, y))


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("name", ["ar", "pc"])
def test_ar_and_pc_with_weight_transport_on_a_conv_net_equal_jax_grad(name, pool):
    with jax.enable_x64(True):
        _assert_weight_transport_equals_jax_grad(name, *lenet(pool))


@pytest.mark.parametrize(
    ("strides", "padding", "pool"),
    [((1, 1), "VALID", 1), ((1, 1), "SAME", 2), ((2, 1), "SAME", 1), ((2, 1), ((1, 2), (0, 1)), 2)],
)
def test_conv_transpose_in_x_equals_jax_vjp(strides, padding, pool):
    conv = settling.make_conv(strides, padding, pool)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (2, 7, 8, 3))
    w = jax.random.normal(k2, (3, 2, 3, 4))
    g = jax.random.normal(k3, conv(x, w).shape)
    _, vjp = jax.vjp(lambda x_: conv(x_, w), x)
    np.testing.assert_allclose(conv.transpose_x(x, w, g), vjp(g)[0], rtol=1e-5, atol=1e-5)


def two_conv_net(dtype):
    """Two convs (the second's input transpose is what the settling loops apply), a dense."""
    k = jax.random.split(jax.random.key(2), 4)
    model = [
        settling.Layer(settling.make_conv(padding="SAME"), max_pool_tanh),
        settling.Layer(settling.make_conv(), jnp.tanh),
        settling.Layer(settling.flatten_dense),
    ]
    params = [
        {"w": 0.5 * jax.random.normal(k[0], (3, 3, 1, 2), dtype), "bias": jnp.zeros(2, dtype)},
        {"w": 0.5 * jax.random.normal(k[1], (2, 2, 2, 3), dtype), "bias": jnp.zeros(3, dtype)},
        {"w": 0.3 * jax.random.normal(k[2], (2 * 2 * 3, 3), dtype), "bias": jnp.zeros(3, dtype)},
    ]
    x = jax.random.normal(k[3], (2, 6, 6, 1), dtype)
    return model, params, x, jnp.ones((2, 3), dtype)


@pytest.mark.parametrize("name", ["ar", "pc"])
def test_ar_and_pc_with_weight_transport_through_two_convs_equal_jax_grad(name):
    with jax.enable_x64(True):
        _assert_weight_transport_equals_jax_grad(name, *two_conv_net(jnp.float64))


@pytest.mark.parametrize("name", ["ar", "pc", "di"])
def test_settled_errors_through_the_conv_transpose_equal_jax_vjps(name):
    # The conv's own transpose_x against jax.vjp's route (the op hidden in a plain function),
    # in float32 where the two forward/transposed convolutions may round differently.
    model, params, x, y = two_conv_net(jnp.float32)
    plain = [
        settling.Layer(lambda x_, w, f=layer.f: f(x_, w), layer.activation)
        if isinstance(layer.f, network.Conv)
        else layer
        for layer in model
    ]
    feedback, config = {
        "ar": (None, settling.ARConfig(steps=30)),
        "pc": (None, settling.PCConfig(steps=30, step_size=0.05, fixed_predictions=False)),
        "di": (
            settling.neg_transpose(params),
            settling.DIConfig(dynamic=True, alpha=0.1, steps=30),
        ),
    }[name]
    rule = jax.jit(settling.get(name).apply, static_argnums=(0, 4, 5))
    new = rule(tuple(model), params, feedback, x, mse(y), config)
    old = rule(tuple(plain), params, feedback, x, mse(y), config)
    assert not hasattr(plain[1].f, "transpose_x")
    assert_trees_close(new.errors, old.errors, rtol=1e-5, atol=1e-6)
    assert_trees_close(new.grads, old.grads, rtol=1e-5, atol=1e-6)


def test_ar_stops_at_its_tolerance_near_jax_grad():
    with jax.enable_x64(True):
        model = mlp()
        params, _, x, y = setup()
        config = settling.ARConfig(steps=1000, tol=1e-9)
        step = jax.jit(lambda p: settling.activation_relaxation(model, p, None, x, mse(y), config))
        result = step(params)
        assert 50 < int(result.steps) < 1000
        bp = jax.grad(loss_of, argnums=1)(model, params, x, y)
        assert_trees_close(result.grads, bp, rtol=1e-5, atol=1e-7)


def test_ar_with_b_settles_to_feedback_alignment():
    with jax.enable_x64(True):
        model = mlp()
        params, b, x, y = setup()
        config = settling.ARConfig(steps=400, feedback="fa")
        result = settling.activation_relaxation(model, params, b, x, mse(y), config)
        fa_grads, fa_errors = fa_probe_grads(model, params, b, x, y)
        assert_trees_close(result.grads, fa_grads)
        assert_trees_close(result.errors, fa_errors)
        # Learned B: W's update, no decay.
        assert_trees_close(result.feedback_grads, [g["w"] for g in fa_grads])


def test_ar_with_b_and_no_derivative_settles_to_fa_without_the_derivative():
    with jax.enable_x64(True):
        model = mlp()
        params, b, x, y = setup()
        config = settling.ARConfig(steps=400, feedback="fa", derivative=False)
        result = settling.activation_relaxation(model, params, b, x, mse(y), config)
        _, fa_errors = fa_probe_grads(model, params, b, x, y, straight_through=True)
        assert_trees_close(result.errors, fa_errors)
        # ...which differs from feedback alignment with the derivative.
        _, with_derivative = fa_probe_grads(model, params, b, x, y)
        assert angle(result.errors[0], with_derivative[0]) > 1.0


def test_ar_with_too_few_steps_is_not_jax_grad():
    with jax.enable_x64(True):
        model = mlp()
        params, _, x, y = setup()
        config = settling.ARConfig(steps=3)
        result = settling.activation_relaxation(model, params, None, x, mse(y), config)
        bp = jax.grad(loss_of, argnums=1)(model, params, x, y)
        assert not np.allclose(result.grads[0]["w"], bp[0]["w"], rtol=1e-3)


@pytest.mark.parametrize("error_weights", [False, True])
def test_pc_with_fixed_predictions_equals_backprop(error_weights):
    with jax.enable_x64(True):
        model = mlp()
        params, _, x, y = setup()
        es = settling.init_error_weights(jax.random.key(5), WIDTHS[1:-1]) if error_weights else None
        es = None if es is None else [e.astype(jnp.float64) for e in es]
        config = settling.PCConfig(steps=800, step_size=0.05, error_weights=error_weights)
        result = settling.predictive_coding(model, params, None, x, mse(y), config, state=es)
        assert_trees_close(result.grads, jax.grad(loss_of, argnums=1)(model, params, x, y))
        if error_weights:
            assert len(result.state_grads) == 2
            assert result.state_grads[0].shape == (WIDTHS[1], WIDTHS[1])


def test_pc_learned_feedback_gets_w_update_and_matches_fa():
    with jax.enable_x64(True):
        model = mlp()
        params, b, x, y = setup()
        config = settling.PCConfig(steps=800, step_size=0.05, feedback="fa")
        result = settling.predictive_coding(model, params, b, x, mse(y), config)
        fa_grads, _ = fa_probe_grads(model, params, b, x, y)
        assert_trees_close(result.grads, fa_grads)
        assert_trees_close(result.feedback_grads, [g["w"] for g in result.grads])


def test_pc_free_predictions_descend_the_energy_at_the_settled_nodes():
    # With free predictions PC's update is -dF/dW for F = 1/2 sum ||mu_l - pred_l||^2 at the
    # settled value nodes (the output clamped); its angle to backprop's does not vanish as the
    # output error shrinks: in the linear regime the nodes move in proportion to the error.
    with jax.enable_x64(True):
        model = mlp()
        params, _, x, _ = setup()
        hs, _ = settling.forward(model, params, x)
        noise = jax.random.normal(jax.random.key(9), hs[-1].shape, jnp.float64)
        config = settling.PCConfig(steps=800, step_size=0.05, fixed_predictions=False)
        angles = []
        for scale in (1e-4, 1e-2):
            y = hs[-1] + scale * noise
            result = settling.predictive_coding(model, params, None, x, mse(y), config)
            mus, h = [], x
            for layer, p, e in zip(model[:-1], params, result.errors, strict=False):
                h = layer.activation(layer.f(h, p["w"]) + p["bias"]) - e
                mus.append(h)

            def energy(params, mus=mus, y=y):
                ins = [x, *mus]
                outs = [*mus, y]
                return 0.5 * sum(
                    jnp.sum((o - layer.activation(layer.f(i, p["w"]) + p["bias"])) ** 2)
                    for layer, p, i, o in zip(model, params, ins, outs, strict=True)
                )

            assert_trees_close(result.grads, jax.grad(energy)(params), rtol=1e-6, atol=1e-12)
            bp = jax.grad(loss_of, argnums=1)(model, params, x, y)
            angles.append([angle(g["w"], r["w"]) for g, r in zip(bp, result.grads, strict=True)])
        np.testing.assert_allclose(angles[0], angles[1], atol=0.1)
        assert 5.0 < max(angles[0]) < 30.0, angles


def test_pc_free_predictions_in_a_linear_net_settle_to_the_closed_form():
    # Two linear layers, free predictions: eps_2 = y - W2 mu_1 and eps_1 = eps_2 W2^T give
    # eps_2 = (y - out) (I + W2^T W2)^-1: backprop's error only where W2^T W2 << I.
    with jax.enable_x64(True):
        widths = (4, 6, 3)
        model = mlp(activation=settling.identity, widths=widths)
        params, _, x, y = setup(widths=widths)
        config = settling.PCConfig(steps=800, step_size=0.05, fixed_predictions=False)
        result = settling.predictive_coding(model, params, None, x, mse(y), config)
        hs, _ = settling.forward(model, params, x)
        w2 = params[1]["w"]
        top = (y - hs[-1]) @ jnp.linalg.inv(jnp.eye(3) + w2.T @ w2)
        np.testing.assert_allclose(result.errors[1], -top, rtol=1e-8)
        np.testing.assert_allclose(result.errors[0], -top @ w2.T, rtol=1e-8)


def di_setup(widths, alpha, seed=3):
    model = mlp(widths=widths)
    params, _, x, y = setup(seed, widths=widths, std=0.3)
    noise = jax.random.normal(jax.random.key(seed + 1), params[1]["w"].shape, jnp.float64)
    b = [-p["w"] for p in params]
    b[1] = b[1] + 0.1 * noise  # near, not at, the authors' -W^T
    hs, pre = settling.forward(model, params, x)
    delta = hs[-1] - y  # the output layer is linear
    w_math, b_math = params[1]["w"].T, b[1]
    n_out = w_math.shape[0]
    expected = (b_math @ jnp.linalg.solve(w_math @ b_math - alpha * jnp.eye(n_out), delta.T)).T
    return model, params, b, x, y, expected


@pytest.mark.parametrize("widths", [(4, 6, 3), (4, 3, 5)], ids=["wide", "tall"])
@pytest.mark.parametrize("dynamic", [True, False], ids=["di", "ndi"])
def test_di_settles_to_the_leaky_inverse(widths, dynamic):
    alpha = 0.1
    with jax.enable_x64(True):
        model, params, b, x, y, expected = di_setup(widths, alpha)
        config = settling.DIConfig(alpha=alpha, dynamic=dynamic)
        settling.check_stable(model, params, b, x, config)
        result = settling.dynamic_inversion(model, params, b, x, mse(y), config)
        np.testing.assert_allclose(result.errors[0], expected, rtol=1e-6, atol=1e-10)


def test_di_with_negative_transpose_and_no_leak_is_pseudo_backprop():
    with jax.enable_x64(True):
        model = mlp(widths=(5, 8, 3))
        params, _, x, y = setup(widths=(5, 8, 3))
        config = settling.DIConfig(alpha=0.0)
        result = settling.dynamic_inversion(
            model, params, settling.neg_transpose(params), x, mse(y), config
        )
        hs, _ = settling.forward(model, params, x)
        expected = (hs[-1] - y) @ jnp.linalg.pinv(params[1]["w"])
        np.testing.assert_allclose(result.errors[0], expected, rtol=1e-6, atol=1e-10)


def test_di_stability_check_fails_for_a_positive_transpose():
    with jax.enable_x64(True):
        model = mlp(widths=(4, 6, 3))
        params, _, x, _ = setup(widths=(4, 6, 3), std=0.8)
        config = settling.DIConfig(alpha=0.01, dynamic=True)
        # B = +W^T: the block matrix is symmetric with Schur complement W W^T - alpha I.
        with pytest.raises(ValueError, match=r"^di: the feedback loop of layer 2 is unstable"):
            settling.check_stable(model, params, [p["w"] for p in params], x, config)
        margins = settling.check_stable(model, params, settling.neg_transpose(params), x, config)
        assert all(m < 0 for m in margins)


def test_di_conv_layer_matrices_match_its_transposes():
    with jax.enable_x64(True):
        layer = settling.Layer(settling.make_conv(pool=2))
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        w = jax.random.normal(k1, (3, 3, 2, 2), jnp.float64)
        m = jax.random.normal(k2, (3, 3, 2, 2), jnp.float64)
        x = jax.random.normal(k3, (1, 6, 6, 2), jnp.float64)
        wm, bm = di_lib.matrices(layer, x, w, m)
        y = layer.f(x, w)
        np.testing.assert_allclose(wm @ x.ravel(), y.ravel(), rtol=1e-10)
        np.testing.assert_allclose(
            bm @ y.ravel(), network.transpose_x(layer.f, x, m, y).ravel(), rtol=1e-10
        )


def test_pal_b_update_equals_its_formula_on_a_fixed_draw():
    with jax.enable_x64(True):
        model = mlp()
        params, b, x, y = setup()
        config = settling.PALConfig(steps=1, sigma=0.3, regularizer=0.01)
        state = pal_lib.init_state(model, params, x)
        rng = jax.random.key(7)
        result = settling.phaseless_alignment(
            model, params, b, x, mse(y), config, state=state, rng=rng
        )
        draws = [d[0] for d in pal_lib.normals(rng, state, 1)]
        tau = config.tau_xi * config.dt
        xi = [jnp.sqrt(tau * config.dt) * config.sigma * w / tau for w in draws[:-1]]
        xi.append(jnp.zeros_like(draws[-1]))
        h, rates = x, []
        for layer, p, n in zip(model, params, xi, strict=True):
            h = layer.activation(h @ p["w"] + p["bias"] + n)
            rates.append(h)
        # From zero filters and rates, the high-passed rate is the rate itself.
        for k in range(1, len(model)):
            expected = config.dt * (xi[k - 1].T @ rates[k] / BATCH - config.regularizer * b[k])
            np.testing.assert_allclose(-result.feedback_grads[k], expected, rtol=1e-10)
        np.testing.assert_allclose(result.feedback_grads[0], 0.0)
        assert_trees_close(result.state["noise"], xi)
        assert_trees_close(result.state["highpass"], rates)
        # W learns by feedback alignment through the B the batch started with.
        fa_grads, _ = fa_probe_grads(model, params, b, x, y)
        assert_trees_close(result.grads, fa_grads)


def test_pal_moves_b_towards_w():
    # A linear net on a fixed input: the rates change only by the noise, whose correlation
    # with the high-passed rate above is proportional to W.
    model = mlp(activation=settling.identity, widths=(6, 8, 5))
    params, b, x, y = setup(widths=(6, 8, 5), dtype=jnp.float32)
    config = settling.PALConfig(steps=400, sigma=1.0, regularizer=0.0)
    state = pal_lib.init_state(model, params, x)
    result = settling.phaseless_alignment(
        model, params, b, x, mse(y), config, state=state, rng=jax.random.key(0)
    )
    assert angle(-result.feedback_grads[1], params[1]["w"]) < 30.0


def max_pool_sigmoid(a):
    return jax.lax.reduce_window(
        jax.nn.sigmoid(a), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )


def pal_lenet():
    """The authors' PAL LeNet in small: conv, max pool, conv, dense, dense, output; float64."""
    k = jax.random.split(jax.random.key(3), 11)
    model = [
        settling.Layer(settling.make_conv(padding="SAME"), max_pool_sigmoid),
        settling.Layer(settling.make_conv(), jax.nn.sigmoid),
        settling.Layer(settling.flatten_dense, jax.nn.sigmoid),
        settling.Layer(settling.dense, jax.nn.sigmoid),
        settling.Layer(settling.dense),
    ]
    shapes = [(3, 3, 1, 2), (2, 2, 2, 3), (2 * 2 * 3, 5), (5, 4), (4, 3)]
    params = [
        {"w": 0.5 * jax.random.normal(kk, s, jnp.float64), "bias": 0.1 * jnp.ones(s[-1])}
        for kk, s in zip(k[:5], shapes, strict=True)
    ]
    b = [0.5 * jax.random.normal(kk, s, jnp.float64) for kk, s in zip(k[5:10], shapes, strict=True)]
    x = jax.random.normal(k[10], (BATCH, 6, 6, 1), jnp.float64)
    return model, params, b, x, jnp.ones((BATCH, 3), jnp.float64)


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        "SAME" if w.shape[0] == 3 else "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def test_pal_on_a_lenet_learns_b_in_the_dense_layers_by_its_formula_on_a_fixed_draw():
    # The authors' LeNet: noise after each conv's pooling (none in the conv itself) and in the
    # dense layers' pre-activations; B learns in the dense layers only (is_conv's sources).
    with jax.enable_x64(True):
        model, params, b, x, y = pal_lenet()
        config = settling.PALConfig(steps=3, sigma=0.3, regularizer=0.01)
        state = pal_lib.init_state(model, params, x)
        rng = jax.random.key(5)
        result = settling.phaseless_alignment(
            model, params, b, x, mse(y), config, state=state, rng=rng
        )
        draws = pal_lib.normals(rng, state, config.steps)
        tau, dt = config.tau_xi * config.dt, config.dt
        w = [p["w"] for p in params]
        c = [p["bias"] for p in params]
        xi = [jnp.zeros_like(n) for n in state["noise"]]
        hp = [jnp.zeros_like(n) for n in state["noise"]]
        rates = [jnp.zeros_like(n) for n in state["noise"]]
        db = [jnp.zeros_like(m) for m in b]
        for t in range(config.steps):
            xi = [
                n + (jnp.sqrt(tau * dt) * config.sigma * d[t] - dt * n) / tau
                for n, d in zip(xi, draws, strict=True)
            ]
            xi[-1] = jnp.zeros_like(xi[-1])  # no noise on the output
            h0 = max_pool_sigmoid(_conv(x, w[0]) + c[0]) + xi[0]
            h1 = jax.nn.sigmoid(_conv(h0, w[1]) + c[1]) + xi[1]
            h2 = jax.nn.sigmoid(h1.reshape(BATCH, -1) @ w[2] + c[2] + xi[2])
            h3 = jax.nn.sigmoid(h2 @ w[3] + c[3] + xi[3])
            h4 = h3 @ w[4] + c[4]
            new = [h0, h1, h2, h3, h4]
            for k in (2, 3, 4):
                hp[k] = hp[k] + (new[k] - rates[k]) - dt / (config.tau_hp * dt) * hp[k]
                below = xi[k - 1].reshape(BATCH, -1)
                db[k] = db[k] + dt * (below.T @ hp[k] / BATCH - config.regularizer * b[k])
            rates = new
        for k in (2, 3, 4):
            np.testing.assert_allclose(-result.feedback_grads[k], db[k], rtol=1e-10)
            assert np.abs(db[k]).max() > 0
        for k in (0, 1):  # the conv layers' B are fixed, as the input layer's
            np.testing.assert_array_equal(result.feedback_grads[k], 0.0)
            np.testing.assert_array_equal(result.state["highpass"][k], 0.0)
        assert_trees_close(result.state["noise"], xi, rtol=1e-12)
        assert_trees_close(result.state["rates"], rates, rtol=1e-12)
        assert_trees_close(result.state["highpass"][2:], hp[2:], rtol=1e-12)


def test_pal_on_a_lenet_sends_the_error_down_by_feedback_alignment_through_fixed_b():
    # Conv2d_PAL._calculate_errors: rho' * fold(B^T e), B fixed; as every layer's W gradient
    # and error here: feedback alignment's, by jax.grad through wtfree.rules' fa custom_vjp.
    with jax.enable_x64(True):
        model, params, b, x, y = pal_lenet()
        state = pal_lib.init_state(model, params, x)
        config = settling.PALConfig(steps=2)
        result = settling.phaseless_alignment(
            model, params, b, x, mse(y), config, state=state, rng=jax.random.key(0)
        )

        def loss(params, probes):
            h = x
            for layer, p, bb, probe in zip(model, params, b, probes, strict=True):
                a = rules.get("fa").apply(layer.f, h, p["w"], bb, None) + p["bias"]
                h = layer.activation(a) + probe
            return mse(y)(h)

        probes = [jnp.zeros_like(h) for h in settling.forward(model, params, x)[0][1:]]
        fa_grads, fa_errors = jax.grad(loss, argnums=(0, 1))(params, probes)
        assert_trees_close(result.grads, fa_grads)
        assert_trees_close(result.errors, fa_errors)
        bp = jax.grad(loss_of, argnums=1)(model, params, x, y)
        assert angle(result.grads[0]["w"], bp[0]["w"]) > 1.0  # not W^T: B


def teacher_batch(seed, widths=WIDTHS, n=32):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (n, widths[0]))
    w = jax.random.normal(k2, (widths[0], widths[-1]))
    return x, jnp.tanh(x @ w)


@pytest.mark.parametrize("name", ["ar", "pc", "di", "pal"])
def test_every_rule_trains_a_tiny_mlp(name):
    rule = settling.get(name)
    model = mlp()
    params, b, _, _ = setup(dtype=jnp.float32, std=0.3)
    x, y = teacher_batch(1)
    config = {
        "ar": settling.ARConfig(steps=50, feedback="fa"),
        "pc": settling.PCConfig(steps=100, step_size=0.05),
        "di": settling.DIConfig(alpha=0.1),
        "pal": settling.PALConfig(steps=10),
    }[name]
    if name == "di":
        b = settling.neg_transpose(params)
    state = pal_lib.init_state(model, params, x) if name == "pal" else None
    tx = optax.sgd(0.02)
    opt = tx.init(params)

    @functools.partial(jax.jit, static_argnums=())
    def train_step(params, b, opt, state, rng):
        r = rule.apply(model, params, b, x, mse(y), config, state=state, rng=rng)
        updates, opt = tx.update(r.grads, opt)
        if r.feedback_grads is not None:
            b = [bb - 0.02 * g for bb, g in zip(b, r.feedback_grads, strict=True)]
        return optax.apply_updates(params, updates), b, opt, r.state

    before = float(loss_of(model, params, x, y))
    for i in range(15):
        params, b, opt, state = train_step(params, b, opt, state, jax.random.key(i))
    after = float(loss_of(model, params, x, y))
    assert after < 0.8 * before, (before, after)


def test_unknown_names_fail_in_one_line():
    with pytest.raises(ValueError, match="unknown settling rule 'xx'; known: ar, di, pal, pc"):
        settling.get("xx")
    with pytest.raises(ValueError, match="feedback 'dfa' sends no matrix down"):
        network.feedback_matrices("dfa", [{"w": jnp.ones((2, 2))}], [jnp.ones((2, 2))])
    with pytest.raises(ValueError, match="ar order 'random'; allowed: sequential, parallel"):
        settling.ARConfig(order="random")
    with pytest.raises(ValueError, match="pal feedback 'usf'; allowed: a rule with a stored B"):
        model = mlp()
        params, b, x, y = setup(dtype=jnp.float32)
        settling.phaseless_alignment(
            model,
            params,
            b,
            x,
            mse(y),
            settling.PALConfig(feedback="usf"),
            state=settling.pal.init_state(model, params, x),
            rng=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="feedback 'fa' needs stored feedback weights"):
        network.feedback_matrices("fa", [{"w": jnp.ones((2, 2))}], None)


def residual_chain(feedback: str, dtype=jnp.float64):
    """A dense stem, two residual blocks relu(x + s * norm(relu(x W1) W2)) normalized by the
    batch's statistics, and a dense head; every product through ``feedback``'s custom_vjp
    (``wtfree.rules``' apply) with its B closed over. Returns the blocks, their params, x, y
    and the chain's loss as a function of the params (for ``jax.grad``)."""
    rule = rules.get(feedback)
    keys = iter(jax.random.split(jax.random.key(3), 16))

    def draw(shape, std=0.6):
        return std * jax.random.normal(next(keys), shape, dtype)

    shapes = {"stem": [(5, 4)], "block_0": [(4, 4)] * 2, "block_1": [(4, 4)] * 2, "head": [(4, 3)]}
    ws = {n: [draw(s) for s in ss] for n, ss in shapes.items()}
    bs = {n: [draw(s) for s in ss] for n, ss in shapes.items()}

    def lin(x, w, b):
        return rule.apply(settling.dense, x, w, b, None)

    def norm(a):
        mean = a.mean(0)
        return (a - mean) / jnp.sqrt(a.var(0) + 1e-5), mean

    def stem(p, x):
        return jnp.tanh(lin(x, p["w"][0], bs["stem"][0])), None

    def block(name):
        def fn(p, x):
            y = jax.nn.relu(lin(x, p["w"][0], bs[name][0]))
            z, mean = norm(lin(y, p["w"][1], bs[name][1]))
            return jax.nn.relu(x + p["scale"] * z), mean

        return fn

    def head(p, x):
        return lin(x, p["w"][0], bs["head"][0]), None

    fns = [stem, block("block_0"), block("block_1"), head]
    params = [{"w": ws[n]} for n in shapes]
    for p in params[1:3]:
        p["scale"] = jnp.full((4,), 0.8, dtype)
    x, y = draw((6, 5), 1.0), draw((6, 3), 1.0)

    def loss(params):
        h = x
        for fn, p in zip(fns, params, strict=True):
            h = fn(p, h)[0]
        return mse(y)(h)

    return [settling.Block(fn) for fn in fns], params, x, y, loss


@pytest.mark.parametrize("feedback", ["bp", "fa"])
@pytest.mark.parametrize("name", ["ar", "pc"])
def test_settling_over_residual_blocks_equals_jax_grad_through_the_blocks_rule(name, feedback):
    # One state per block's output; the error crosses each block by its vjp: under bp W^T
    # (backprop), under fa B inside the block (fa's custom_vjp), the norm's batch statistics
    # and the shortcut by autodiff. The settled step is jax.grad's of the same chain.
    with jax.enable_x64(True):
        model, params, x, y, loss = residual_chain(feedback)
        config = settling.get(name).config(steps=400, step_size=0.1, feedback=feedback)
        result = settling.get(name).apply(model, params, None, x, mse(y), config)
        assert_trees_close(result.grads, jax.grad(loss)(params))
        assert int(result.steps) == 400
        # The blocks' aux (their batch means) comes back as the result's state.
        assert result.state[0] is None
        h1 = model[0].fn(params[0], x)[0]
        np.testing.assert_allclose(result.state[1], model[1].fn(params[1], h1)[1])
        if feedback == "fa":  # B learns by W's step; not backprop's
            assert_trees_close(result.feedback_grads, result.grads)
            bp = jax.grad(residual_chain("bp")[-1])(params)
            assert angle(result.grads[0]["w"][0], bp[0]["w"][0]) > 10.0
        else:
            assert result.feedback_grads is None


def test_residual_blocks_with_too_few_steps_are_not_jax_grad():
    with jax.enable_x64(True):
        model, params, x, y, loss = residual_chain("bp")
        config = settling.ARConfig(steps=3)
        result = settling.activation_relaxation(model, params, None, x, mse(y), config)
        expected = jax.grad(loss)(params)
        assert angle(result.grads[0]["w"][0], expected[0]["w"][0]) > 1.0


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("di", settling.DIConfig(), "di on a chain of blocks; allowed: ar, pc"),
        ("pal", settling.PALConfig(), "pal on a chain of blocks; allowed: ar, pc"),
        ("ar", settling.ARConfig(derivative=False), "ar derivative=False on a chain of blocks"),
        ("pc", settling.PCConfig(fixed_predictions=False), "pc fixed_predictions=False on a"),
    ],
)
def test_what_a_chain_of_blocks_cannot_do_is_one_line(name, config, match):
    model, params, x, y, _ = residual_chain("bp", jnp.float32)
    with pytest.raises(ValueError, match=match) as e:
        settling.get(name).apply(model, params, None, x, mse(y), config, rng=jax.random.key(0))
    assert "\n" not in str(e.value)
