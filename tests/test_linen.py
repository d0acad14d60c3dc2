"""wtfree.linen.convert: a stock linen model's Dense, DenseGeneral, Conv, Einsum under each rule."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wtfree
from wtfree import layers, rules
from wtfree import linen as convert_lib

B = convert_lib.FEEDBACK_KERNEL


class Stock(nn.Module):
    """One of each stock linear layer; the first is a Conv, fed the input."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv0")(x)
        x = nn.relu(x)
        x = nn.Conv(3, (3, 3), strides=2, padding="VALID", name="conv1")(x)
        x = nn.tanh(x)
        x = x.reshape(x.shape[0], 3, -1)
        x = nn.DenseGeneral((2, 5), axis=(-2, -1), name="dense_general")(x)
        x = nn.tanh(x)
        x = nn.Einsum((2, 5, 6), "bij,ijk->bk", name="einsum")(x)
        x = nn.relu(x)
        return nn.Dense(3, name="output")(x)


def _loss(apply_fn):
    def loss(params, x, y, **kwargs):
        return jnp.mean(jnp.square(apply_fn(params, x, **kwargs) - y))

    return loss


def _data():
    x = jax.random.normal(jax.random.key(0), (4, 7, 7, 2))
    y = jax.random.normal(jax.random.key(1), (4, 3))
    return x, y


def _init(rule, **options):
    model = convert_lib.convert(Stock(), rule, **options)
    x, _ = _data()
    return model, model.init(jax.random.key(2), x)


def test_bp_through_convert_equals_jax_grad():
    model, variables = _init("bp")
    x, y = _data()
    assert set(variables) == {"params", "perturbations"}
    stock = _loss(lambda p, x: Stock().apply({"params": p}, x))
    converted = _loss(lambda p, x: model.apply({**variables, "params": p}, x))
    want = jax.grad(stock, argnums=(0, 1))(variables["params"], x, y)
    got = jax.grad(converted, argnums=(0, 1))(variables["params"], x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)


def test_forward_and_params_are_the_stock_models():
    model, variables = _init("fa")
    x, _ = _data()
    stock = Stock().init(jax.random.key(2), x)["params"]
    jax.tree.map(np.testing.assert_array_equal, variables["params"], stock)
    np.testing.assert_array_equal(model.apply(variables, x), Stock().apply({"params": stock}, x))
    # B beside W, shaped like it, under another leaf name; the input layer stores none.
    feedback = variables["feedback"]
    assert set(feedback) == {"conv1", "dense_general", "einsum", "output"}
    for name, leaves in feedback.items():
        assert set(leaves) == {B}
        assert leaves[B].shape == variables["params"][name]["kernel"].shape


@pytest.mark.parametrize("rule", ["fa", "kp", "sa"])
def test_the_input_layer_is_not_measured(rule):
    """The layer fed the input is on backprop with no B: no weight angle (it would be W's to
    itself, 0) and no alignment loss, as for wtfree's own input layers; the others have both."""
    model, variables = _init(rule)
    x, _ = _data()
    mutable = [layers.ALIGNMENT, layers.ALIGNMENT_LOSS]
    _, sown = model.apply(variables, x, mutable=mutable)
    measured = {"conv1", "dense_general", "einsum", "output"}
    assert set(sown[layers.ALIGNMENT]) == measured
    assert set(sown.get(layers.ALIGNMENT_LOSS, {})) == (measured if rule == "sa" else set())
    # Named as the input layer (is_input), a layer not fed the input unchanged is skipped too.
    named = convert_lib.convert(Stock(), rule, is_input=lambda path: path[-1] == "conv1")
    _, sown = named.apply(named.init(jax.random.key(2), x), x, mutable=mutable)
    assert set(sown[layers.ALIGNMENT]) == measured - {"conv1"}


class One(nn.Module):
    """A single layer, not fed the input unchanged (so it is no input layer)."""

    layer: nn.Module

    @nn.compact
    def __call__(self, x):
        return self.layer(x * 1.0)


# kind: (the layer, the input's shape, W's fan-in as lecun_normal counts it)
LAYERS = {
    "dense": (lambda: nn.Dense(5), (3, 6), 6),
    "dense_general": (
        lambda: nn.DenseGeneral((2, 3), axis=(-2, -1)),
        (3, 4, 5),
        4 * 5,
    ),
    "conv": (lambda: nn.Conv(3, (3, 3), strides=2), (2, 6, 6, 2), 3 * 3 * 2),
    "einsum": (lambda: nn.Einsum((4, 5, 3), "bij,ijk->bk"), (3, 4, 5), 4 * 5),
}


def _one(kind, rule, **options):
    make, shape, _ = LAYERS[kind]
    model = convert_lib.convert(One(make()), rule, **options)
    x = jax.random.normal(jax.random.key(3), shape)
    variables = model.init(jax.random.key(4), x)
    return make, model, variables, x


def _grads(model, variables, x, rngs=None):
    """The gradients of sum(y * c) with respect to the input and to every variable."""

    variables = {k: v for k, v in variables.items() if k in ("params", "feedback")}

    def loss(v, x):
        y = model.apply(v, x, rngs=rngs)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

    return jax.grad(loss, argnums=(0, 1))(variables, x)


def _stock_grads(make, params, x):
    return _grads(One(make()), {"params": params}, x)


def _feedback_matrix(rule, w, b, fan_in):
    return {
        "fa": lambda: b,
        "usf": lambda: jnp.sign(w) / np.sqrt(fan_in),  # W's init std under lecun_normal
        "frsf": lambda: jnp.abs(b) * jnp.sign(w),
    }[rule]()


@pytest.mark.parametrize("kind", ["dense", "dense_general", "conv", "einsum"])
@pytest.mark.parametrize("rule", ["fa", "usf", "frsf"])
def test_error_goes_down_through_b(kind, rule):
    # dx is the stock layer's with W replaced by B; dW is the stock layer's.
    make, model, variables, x = _one(kind, rule)
    w = variables["params"]["layer"]["kernel"]
    b = variables.get("feedback", {}).get("layer", {}).get(B)
    matrix = _feedback_matrix(rule, w, b, LAYERS[kind][2])
    params_b = {"layer": {**variables["params"]["layer"], "kernel": matrix}}
    (v_grads, dx) = _grads(model, variables, x)
    _, dx_want = _stock_grads(make, params_b, x)
    w_grads, _ = _stock_grads(make, variables["params"], x)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        v_grads["params"],
        w_grads["params"],
    )
    if rule != "usf":
        np.testing.assert_array_equal(v_grads["feedback"]["layer"][B], 0.0)
    assert not np.allclose(dx, _stock_grads(make, variables["params"], x)[1], atol=1e-3)


@pytest.mark.parametrize("kind", ["dense", "dense_general", "conv", "einsum"])
def test_kp_gives_b_exactly_ws_gradient(kind):
    _, model, variables, x = _one(kind, "kp")
    assert variables["trained_feedback"] == {"layer": {layers.BY_GRADIENT: True}}
    grads, _ = _grads(model, variables, x)
    out = grads["params"]["layer"]
    np.testing.assert_array_equal(grads["feedback"]["layer"][B], out["kernel"])


def test_brsf_draws_a_sign_concordant_matrix_each_batch():
    # Dense: dx = delta M^T; with delta the identity, dx's rows are M^T's rows.
    model = convert_lib.convert(One(nn.Dense(4, use_bias=False)), "brsf")
    x = jax.random.normal(jax.random.key(5), (4, 6))
    variables = model.init(jax.random.key(6), x)
    w = variables["params"]["layer"]["kernel"]

    def feedback(seed):
        def f(x):
            return model.apply(variables, x, rngs={"feedback": jax.random.key(seed)})

        _, vjp = jax.vjp(f, x)
        (dx,) = vjp(jnp.eye(4))
        return dx.T  # M, shaped like W

    m0, m1 = feedback(0), feedback(1)
    np.testing.assert_array_equal(jnp.sign(m0), jnp.sign(w))
    assert not np.allclose(m0, m1)


def test_keep_bp_and_output_rule():
    model, variables = _init("fa", output_rule="bp", keep_bp=lambda path: path[-1] == "einsum")
    assert set(variables["feedback"]) == {"conv1", "dense_general"}


def test_matches_wtfrees_own_layers():
    class Own(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = layers.Conv(features=3, name="conv", input_layer=True)(x)
            x = nn.relu(x).reshape(x.shape[0], -1)
            x = layers.Dense(features=5, name="hidden")(x)
            return layers.Dense(features=2, name="output")(nn.relu(x))

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3, (3, 3), name="conv")(x)
            x = nn.relu(x).reshape(x.shape[0], -1)
            x = nn.Dense(5, name="hidden")(x)
            return nn.Dense(2, name="output")(nn.relu(x))

    x = jax.random.normal(jax.random.key(7), (3, 5, 5, 2))
    for rule in ("fa", "kp", "usf"):
        own = convert_lib.convert(Own(), rule)
        plain = convert_lib.convert(Plain(), rule)
        v_own = own.init(jax.random.key(8), x)
        v_plain = plain.init(jax.random.key(8), x)
        # Same W and B, under the same names (the input layer's B is never used).
        v_plain = {**v_plain, "params": v_own["params"]}
        if "feedback" in v_own:
            v_plain["feedback"] = {
                name: leaves for name, leaves in v_own["feedback"].items() if name != "conv"
            }
        g_own = _grads(own, {k: v_own[k] for k in ("params", "feedback") if k in v_own}, x)
        g_plain = _grads(plain, {k: v_plain[k] for k in ("params", "feedback") if k in v_plain}, x)
        jax.tree.map(np.testing.assert_array_equal, g_own[0]["params"], g_plain[0]["params"])
        if rule == "kp":
            for name in ("hidden", "output"):
                np.testing.assert_array_equal(
                    g_own[0]["feedback"][name][B], g_plain[0]["feedback"][name][B]
                )


def test_wtfrees_own_layers_take_the_options_noise_as_stock_ones_do():
    """Converted, wtfree's own layers draw the options' mirror noise and feed the alignment
    losses the options' input, as the same model written with stock layers does: same Hebbian
    products and same alignment gradients on the same weights and keys (and not those of
    normal noise or of the layers' own inputs)."""
    from wtfree import learn

    class Own(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = layers.Dense(features=5, name="input")(x)
            x = layers.Dense(features=4, name="hidden")(nn.tanh(x))
            return layers.Dense(features=2, name="output")(nn.relu(x))

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(5, name="input")(x)
            x = nn.Dense(4, name="hidden")(nn.tanh(x))
            return nn.Dense(2, name="output")(nn.relu(x))

    x = jax.random.normal(jax.random.key(7), (6, 3))
    rng = jax.random.key(9)

    def variables(rule):  # the own model's W and B, for both
        v = convert_lib.convert(Own(), rule).init(jax.random.key(8), x)
        return {k: v[k] for k in ("params", "feedback")}

    def mirrored(model, noise):
        converted = convert_lib.convert(model, "wm", mirror_noise=noise)
        return learn.mirror_step(converted, variables("wm"), (x,), rng)["feedback"]

    def aligned(model, source):
        converted = convert_lib.convert(model, "wm_reg", alignment_input=source)
        v = variables("wm_reg")

        def loss(feedback):
            _, sown = converted.apply(
                {**v, "feedback": feedback},
                x,
                rngs={convert_lib.ALIGNMENT_RNG: rng},
                mutable=[layers.ALIGNMENT_LOSS],
            )
            return learn.alignment_loss(converted, sown)

        return jax.grad(loss)(v["feedback"])

    for make, source in ((mirrored, "uniform"), (aligned, "normal")):
        own, plain = make(Own(), source), make(Plain(), source)
        other = make(Plain(), "normal" if make is mirrored else "activations")
        for name in ("hidden", "output"):
            np.testing.assert_allclose(own[name][B], plain[name][B], rtol=1e-6, atol=1e-7)
            assert np.abs(plain[name][B] - other[name][B]).max() > 1e-4


def test_bad_options_are_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        convert_lib.convert(Stock(), "nope")
    with pytest.raises(ValueError, match="mirror_noise='cauchy'"):
        convert_lib.convert(Stock(), "wm", mirror_noise="cauchy")


class WithTrainFlag(nn.Module):
    """A stock model with the ``train`` argument wtfree's own train step passes."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = nn.relu(nn.Dense(8, name="input")(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="output")(nn.relu(nn.Dense(8, name="hidden")(x)))


def test_a_converted_model_trains_in_wtfrees_own_train_step():
    from wtfree import optim, steps

    # The input layer reads a reshaped input, so it is named to be recognized.
    model = convert_lib.convert(WithTrainFlag(), "kp", is_input=lambda path: path[-1] == "input")
    shape = (4, 2, 2, 1)
    _, flags = steps.init_variables(model, jax.random.key(0), shape)
    assert flags == {"hidden": {layers.BY_GRADIENT: True}, "output": {layers.BY_GRADIENT: True}}
    tx = optim.make_optimizer(0.1, flags)
    state = steps.init_state(model, tx, jax.random.key(1), shape)
    step = jax.jit(steps.make_train_step(model, tx, "softmax_xent"))
    batch = {"image": jax.random.normal(jax.random.key(2), shape), "label": jnp.arange(4) % 3}
    new, measurements = step(state, batch)
    for name in ("hidden", "output"):
        moved_w = new["params"][name]["kernel"] - state["params"][name]["kernel"]
        moved_b = new["feedback"][name][B] - state["feedback"][name][B]
        np.testing.assert_allclose(moved_b, moved_w, rtol=1e-6, atol=1e-7)
    assert np.isfinite(measurements["train/loss"])


def test_dfa_in_wtfrees_own_train_step_sends_e_times_b_to_every_hidden_layer():
    """train.py's step (steps.make_train_step) first computes e, the softmax cross-entropy's
    gradient at the output, then every converted layer's input gets e B_l as its error: with
    SGD of rate 1, each W moves by minus the closed form of test_learn's dfa test (hidden
    errors e B_l times the activation's derivative), never an error through a W^T. The
    measure step's errors are those too: the hidden layer's output gets (e B_output) * relu'."""
    from wtfree import metrics, optim, steps

    model = convert_lib.convert(
        WithTrainFlag(), "dfa", outputs=3, is_input=lambda path: path[-1] == "input"
    )
    shape = (4, 2, 2, 1)
    _, flags = steps.init_variables(model, jax.random.key(0), shape)
    tx = optim.make_optimizer(1.0, flags)
    state = steps.init_state(model, tx, jax.random.key(1), shape)
    x = jax.random.normal(jax.random.key(2), shape)
    labels = jnp.arange(4) % 3
    new, measurements = jax.jit(steps.make_train_step(model, tx, "softmax_xent"))(
        state, {"image": x, "label": labels}
    )
    assert np.isfinite(measurements["train/loss"])

    p, fb, d = state["params"], state["feedback"], convert_lib.DIRECT_KERNEL
    x0 = x.reshape(4, -1)
    a1 = x0 @ p["input"]["kernel"] + p["input"]["bias"]
    h1 = jax.nn.relu(a1)
    a2 = h1 @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    h2 = jax.nn.relu(a2)
    out = h2 @ p["output"]["kernel"] + p["output"]["bias"]
    e = (jax.nn.softmax(out) - jax.nn.one_hot(labels, 3)) / 4  # mean cross-entropy's gradient
    delta2 = (e @ fb["output"][d]) * (a2 > 0)  # the output layer's B, not its W^T
    delta1 = (e @ fb["hidden"][d]) * (a1 > 0)
    want = {"output": h2.T @ e, "hidden": h1.T @ delta2, "input": x0.T @ delta1}
    for name, dw in want.items():
        got = state["params"][name]["kernel"] - new["params"][name]["kernel"]
        np.testing.assert_allclose(got, dw, rtol=1e-4, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, new["feedback"], state["feedback"])

    # The measure step reads the same errors: at the hidden layer's output, delta2, whose
    # angle to backprop's error there (through W_output^T) is measured.
    measured = steps.make_measure_step(model, "softmax_xent")(state, {"image": x, "label": labels})
    bp_delta2 = (e @ p["output"]["kernel"].T) * (a2 > 0)
    np.testing.assert_allclose(
        measured["align/delta_angle/hidden"],
        metrics.angle(delta2, bp_delta2),
        rtol=1e-4,
        atol=1e-3,
    )


class Heads(nn.Module):
    """A projection to heads, as attention's query, key and value: W is (8, 2, 4)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, name="input")(x)
        return nn.DenseGeneral((2, 4), name="heads")(x)


@pytest.mark.parametrize("per_layer_batch", [False, True])
def test_mirror_of_a_layer_with_two_feature_axes_settles_at_w(per_layer_batch):
    """B' = (1 - lambda) B + eta sigma^2 H with H = Z^T Z W / P for the flattened (8, 8) W, Z
    the noise over the n examples and P = 3 positions of each: with Rademacher noise
    G = (B' - (1 - lambda) B) W^-1 / (eta sigma^2) has the diagonal n = 6 exactly. The heads
    axis is a feature axis, not a position: counted as one (P = 6), H and B were half W's
    scale (a ViT's query, key and value B settled at W / heads)."""
    model = convert_lib.convert(Heads(), "wm", mirror_noise="rademacher")
    x = jnp.zeros((6, 3, 5))
    variables = model.init(jax.random.key(0), x)
    mirror = wtfree.Mirror(learning_rate=0.1, decay=0.2, noise_std=0.5)
    mirror = dataclasses.replace(mirror, per_layer_batch=per_layer_batch)
    new = jax.jit(lambda v, r: wtfree.mirror_step(model, v, (x,), r, mirror))(
        variables, jax.random.key(1)
    )
    w = variables["params"]["heads"]["kernel"].reshape(8, 8)
    b = variables["feedback"]["heads"][B].reshape(8, 8)
    b_new = new["feedback"]["heads"][B].reshape(8, 8)
    gram = (b_new - 0.8 * b) @ np.linalg.inv(w) / (0.1 * 0.5**2)
    np.testing.assert_allclose(np.diag(gram), 6.0, rtol=1e-4)
    np.testing.assert_allclose(gram, gram.T, rtol=1e-4, atol=1e-4)


def test_fan_in_and_positions_count_feature_axes_as_features():
    """d and P for dense, a sequence, heads, a conv (P its output height x width) and a
    closure over a traced array (the shapes decide there)."""
    dense = lambda x, w: jnp.dot(x, w)  # noqa: E731
    heads = lambda x, w: jnp.einsum("bsi,ihk->bshk", x, w)  # noqa: E731
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert rules.fan_in_and_positions(dense, (4, 5), jnp.ones((5, 3))) == (5, 1)
    assert rules.fan_in_and_positions(dense, (4, 7, 5), jnp.ones((5, 3))) == (5, 7)
    assert rules.fan_in_and_positions(heads, (4, 7, 5), jnp.ones((5, 2, 3))) == (5, 7)
    assert rules.fan_in_and_positions(conv, (4, 8, 8, 3), jnp.ones((3, 3, 3, 6))) == (27, 16)

    @jax.jit
    def traced(scale):
        scaled = lambda x, w: jnp.dot(x, w * scale)  # noqa: E731
        d, p = rules.fan_in_and_positions(scaled, (4, 7, 5), jnp.ones((5, 3)))
        assert (d, p) == (5, 7)
        return scale

    traced(1.0)
