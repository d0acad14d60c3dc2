"""wtfree.nnx.convert: a stock NNX model's Linear, LinearGeneral, Conv and Einsum under a rule."""

import copy
import dataclasses

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
    # dfa would otherwise run as bp: the layers learn locally and nothing routes the error.
    for rule in ("dfa", "dfa_block", "ar"):
        with pytest.raises(
            ValueError, match=f"^rule '{rule}': wtfree.nnx offers bp, fa, usf, frsf, brsf, kp, wm, "
        ):
            wtfree.nnx.convert(Net(nnx.Rngs(0)), rule)


class Mlp(nnx.Module):
    """test_learn's Mlp, in NNX: the same layers, names and shapes."""

    def __init__(self, rngs):
        self.input = nnx.Linear(5, 6, rngs=rngs)
        self.hidden = nnx.Linear(6, 6, rngs=rngs)
        self.output = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.input(x))
        x = nnx.relu(self.hidden(x))
        return self.output(x)


def _is_input(path):
    return path[-1] == "input"


@pytest.mark.parametrize("per_layer_batch", [False, True])
def test_mirror_step_is_the_hebbian_closed_form(per_layer_batch):
    """B' = (1 - lambda) B + eta sigma^2 z^T z W for dense, so with W square
    G = (B' - (1 - lambda) B) W^-1 / (eta sigma^2) is z^T z: symmetric, positive semi-definite,
    and with Rademacher noise its diagonal is the number of noise vectors, 8, exactly (per
    layer: n_l vectors, scaled by 8 / n_l). A layer of another rule (fa at the output) and the
    input layer (bp, no B) are not mirrored."""
    model = wtfree.nnx.convert(
        Mlp(nnx.Rngs(0)), "wm", output_rule="fa", is_input=_is_input, mirror_noise="rademacher"
    )
    assert isinstance(model.hidden.feedback_kernel, wtfree.nnx.MirroredFeedback)
    assert not hasattr(model.input, "feedback_kernel")
    w, b = model.hidden.kernel[...], model.hidden.feedback_kernel[...]
    b_output = model.output.feedback_kernel[...]
    x = jnp.zeros((8, 5))
    mirror = wtfree.Mirror(learning_rate=0.1, decay=0.2, noise_std=0.5)
    mirror = dataclasses.replace(mirror, per_layer_batch=per_layer_batch)

    @nnx.jit
    def step(model, x, rng):
        wtfree.nnx.mirror_step(model, (x,), rng, mirror)

    step(model, x, jax.random.key(3))
    gram = (model.hidden.feedback_kernel[...] - 0.8 * b) @ np.linalg.inv(w) / (0.1 * 0.5**2)
    np.testing.assert_allclose(gram, gram.T, rtol=1e-4, atol=1e-4)
    assert np.linalg.eigvalsh((gram + gram.T) / 2).min() > -1e-4
    np.testing.assert_allclose(np.diag(gram), 8.0, rtol=1e-4)
    assert not np.allclose(gram, np.diag(np.diag(gram)), atol=1e-2)  # noise, not the identity
    np.testing.assert_array_equal(model.output.feedback_kernel[...], b_output)


def test_mirror_step_leaves_a_model_without_wm_layers_alone():
    model = wtfree.nnx.convert(Mlp(nnx.Rngs(0)), "fa", is_input=_is_input)
    before = [model.hidden.feedback_kernel[...], model.output.feedback_kernel[...]]
    wtfree.nnx.mirror_step(model, (jnp.ones((4, 5)),), jax.random.key(0))
    after = [model.hidden.feedback_kernel[...], model.output.feedback_kernel[...]]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


def _linen_twin(model, rule):
    """test_learn's linen Mlp converted by ``rule``, holding ``model``'s W and B."""
    from tests.test_learn import Mlp

    converted = wtfree.convert(Mlp(), rule)
    params = {
        name: {"kernel": layer.kernel[...], "bias": layer.bias[...]}
        for name, layer in (
            ("input", model.input),
            ("hidden", model.hidden),
            ("output", model.output),
        )
    }
    feedback = {
        name: {wtfree.linen.FEEDBACK_KERNEL: layer.feedback_kernel[...]}
        for name, layer in (("hidden", model.hidden), ("output", model.output))
    }
    return converted, {"params": params, "feedback": feedback}


@pytest.mark.parametrize("rule", ["sa", "aa", "ia", "wm_reg"])
def test_alignment_gradients_equal_the_linen_paths(rule):
    """In one nnx.grad of the wrapped loss, B (AlignedFeedback) gets its alignment loss's
    gradient, W the task loss's alone: both equal the linen path's (wtfree.alignment_loss's
    gradient for B, jax.grad of the task loss for W) on the same weights."""
    from wtfree import layers, learn

    model = wtfree.nnx.convert(Mlp(nnx.Rngs(1)), rule, is_input=_is_input)
    assert isinstance(model.output.feedback_kernel, wtfree.nnx.AlignedFeedback)
    x = jax.random.normal(jax.random.key(2), (8, 5))
    y = jax.random.normal(jax.random.key(3), (8, 3))
    alignment = wtfree.Alignment(coefficients={rule: {"alpha": 0.3, "beta": 0.7, "gamma": 0.2}})

    def task(model, x, y):
        return jnp.mean(jnp.square(model(x) - y))

    wrt = wtfree.nnx.trainable(model)
    loss = wtfree.nnx.with_alignment_loss(task, alignment)
    grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(model, x, y)

    linen_model, variables = _linen_twin(model, rule)

    def linen_loss(trainable):
        outputs, sown = linen_model.apply(
            {**variables, **trainable}, x, mutable=[layers.ALIGNMENT_LOSS]
        )
        aligning = learn.alignment_loss(linen_model, sown, alignment)
        return jnp.mean(jnp.square(outputs - y)) + aligning

    want = jax.grad(linen_loss)({"params": variables["params"], "feedback": variables["feedback"]})
    for name in ("hidden", "output"):
        got_b = grads[name]["feedback_kernel"][...]
        want_b = want["feedback"][name][wtfree.linen.FEEDBACK_KERNEL]
        assert np.abs(want_b).max() > 1e-3  # the loss reaches B
        np.testing.assert_allclose(got_b, want_b, rtol=1e-5, atol=1e-6)
    for name in ("input", "hidden", "output"):
        np.testing.assert_allclose(
            grads[name]["kernel"][...], want["params"][name]["kernel"], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_alignment_with_noise_input_gives_b_the_closed_form_on_the_layers_draw(distribution):
    r"""With ``alignment_input`` noise, wm_reg's B gradient is its closed form on the noise the
    layer draws from its own rngs, scaled by the noise's variance:
    :math:`2\alpha B - \beta\sigma^2 z^\top z W / n`, z unit-variance noise shaped like the
    layer's input (not the input itself), for every layer but the input one."""
    alpha, beta, sigma = 0.3, 0.7, 2.0
    model = wtfree.nnx.convert(
        Mlp(nnx.Rngs(1)), "wm_reg", is_input=_is_input, alignment_input=distribution
    )
    x = jax.random.normal(jax.random.key(2), (8, 5))
    y = jax.random.normal(jax.random.key(3), (8, 3))
    alignment = wtfree.Alignment(
        coefficients={"wm_reg": {"alpha": alpha, "beta": beta}}, noise_std=sigma
    )
    # The keys the loss's pass will draw from: the layers' rngs, copied before it advances them.
    twin = copy.deepcopy(model)
    keys = {name: getattr(twin, name).wtfree_rngs.alignment() for name in ("hidden", "output")}
    inputs = {"hidden": nnx.relu(model.input(x))}
    inputs["output"] = nnx.relu(model.hidden(inputs["hidden"]))

    def task(model, x, y):
        return jnp.mean(jnp.square(model(x) - y))

    loss = wtfree.nnx.with_alignment_loss(task, alignment)
    grads = nnx.grad(loss, argnums=nnx.DiffState(0, wtfree.nnx.trainable(model)))(model, x, y)
    for name in ("hidden", "output"):
        layer, shape = getattr(model, name), inputs[name].shape
        if distribution == "normal":
            z = jax.random.normal(keys[name], shape)
        else:
            z = jax.random.uniform(keys[name], shape, minval=-np.sqrt(3), maxval=np.sqrt(3))
        w, b = layer.kernel[...], layer.feedback_kernel[...]
        want = 2 * alpha * b - beta * sigma**2 * z.T @ z @ w / shape[0]
        on_input = 2 * alpha * b - beta * sigma**2 * inputs[name].T @ inputs[name] @ w / shape[0]
        got = grads[name]["feedback_kernel"][...]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.abs(got - on_input).max() > 1e-2  # not the layer's own input


@pytest.mark.parametrize("rule", ["wm", "sa", "ia"])
def test_mirror_and_alignment_rules_train_with_nnx_optimizer(rule):
    """The documented NNX step for wm and the alignment rules: the mirror step, then the
    wrapped loss's gradient, then nnx.Optimizer; the task loss falls and B moves."""
    model = wtfree.nnx.convert(Mlp(nnx.Rngs(4)), rule, is_input=_is_input)
    x = jax.random.normal(jax.random.key(5), (16, 5))
    y = jnp.tanh(x[:, :3])
    wrt = wtfree.nnx.trainable(model)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=wrt)

    def task(model, x, y):
        return jnp.mean(jnp.square(model(x) - y))

    loss = wtfree.nnx.with_alignment_loss(task)

    @nnx.jit
    def step(model, optimizer, x, y, rng):
        wtfree.nnx.mirror_step(model, (x,), rng)  # moves only wm's B
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(model, x, y)
        optimizer.update(model, grads)

    b = model.output.feedback_kernel[...]
    first = float(task(model, x, y))
    for i in range(30):
        step(model, optimizer, x, y, jax.random.key(i))
    assert float(task(model, x, y)) < 0.7 * first
    assert not np.allclose(model.output.feedback_kernel[...], b)
