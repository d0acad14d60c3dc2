"""wtfree.learn: the optimizer, mirror step, alignment loss and train step of a converted model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wtfree
from wtfree import layers, learn

B = wtfree.linen.FEEDBACK_KERNEL


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6, name="input")(x))
        x = nn.relu(nn.Dense(6, name="hidden")(x))
        return nn.Dense(3, name="output")(x)


def _setup(rule, **options):
    model = wtfree.convert(Mlp(), rule, **options)
    x = jax.random.normal(jax.random.key(0), (8, 5))
    return model, model.init(jax.random.key(1), x), x


def test_kp_b_follows_ws_update_exactly_under_any_optax_transform():
    model, variables, x = _setup("kp")
    # Start B at W: KP's B then gets W's gradient and W's update (AdamW, decay included).
    variables["feedback"] = {
        name: {B: variables["params"][name]["kernel"]} for name in variables["feedback"]
    }
    tx = wtfree.optimizer(optax.adamw(1e-2, weight_decay=0.1), variables)
    state = learn.init_train_state(variables, tx)
    step = jax.jit(learn.make_train_step(model, tx, _mse, inputs=lambda b: (b["x"],)))
    batch = {"x": x, "y": jnp.ones((8, 3))}
    for i in range(3):
        state, _ = step(state, batch, jax.random.key(i))
    v = state["variables"]
    for name in ("hidden", "output"):
        np.testing.assert_array_equal(v["feedback"][name][B], v["params"][name]["kernel"])
    assert not np.allclose(v["params"]["output"]["kernel"], variables["params"]["output"]["kernel"])


def _mse(outputs, batch):
    return jnp.mean(jnp.square(outputs - batch["y"]))


def test_fixed_b_is_frozen():
    model, variables, x = _setup("fa")
    tx = wtfree.optimizer(optax.sgd(0.05), variables)
    state = learn.init_train_state(variables, tx)
    step = jax.jit(learn.make_train_step(model, tx, _mse, inputs=lambda b: (b["x"],)))
    state, _ = step(state, {"x": x, "y": jnp.ones((8, 3))}, jax.random.key(0))
    jax.tree.map(
        np.testing.assert_array_equal, state["variables"]["feedback"], variables["feedback"]
    )


def test_mirror_update_is_the_hebbian_closed_form():
    # Dense: B' = (1 - lambda) B + eta sigma^2 z^T z W, so (B' - (1 - lambda) B) W^-1 is
    # eta sigma^2 z^T z: symmetric and positive semi-definite (W square here).
    model, variables, x = _setup("wm")
    mirror = learn.Mirror(learning_rate=0.1, decay=0.2, noise_std=0.5)
    new = learn.mirror_step(model, variables, (x,), jax.random.key(3), mirror)
    w = variables["params"]["hidden"]["kernel"]
    b, b_new = variables["feedback"]["hidden"][B], new["feedback"]["hidden"][B]
    gram = (b_new - (1 - mirror.decay) * b) @ np.linalg.inv(w) / (0.1 * 0.5**2)
    np.testing.assert_allclose(gram, gram.T, rtol=1e-3, atol=1e-3)
    assert np.linalg.eigvalsh((gram + gram.T) / 2).min() > -1e-3
    # z has unit variance: the Gram matrix of 8 examples has trace about 8 * 6.
    assert 8 * 6 / 4 < np.trace(gram) < 8 * 6 * 4
    # The input layer reads the network's input: its B is not stored, so not mirrored.
    assert "input" not in variables["feedback"]


@pytest.mark.parametrize("rule", ["sa", "aa"])
def test_alignment_loss_gradient_is_the_primitives(rule):
    model, variables, x = _setup(rule)
    alignment = learn.Alignment(coefficients={rule: {"alpha": 0.3, "beta": 0.7}})

    def loss(feedback):
        _, sown = model.apply(
            {**variables, "feedback": feedback}, x, mutable=[layers.ALIGNMENT_LOSS]
        )
        return learn.alignment_loss(model, sown, alignment)

    grads = jax.grad(loss)(variables["feedback"])
    w = variables["params"]["output"]["kernel"]
    b = variables["feedback"]["output"][B]
    # The output layer's input h: the hidden layer's activations.
    h = Mlp().apply({"params": variables["params"]}, x, capture_intermediates=True)[1]
    h = nn.relu(h["intermediates"]["hidden"]["__call__"][0])
    n = x.shape[0]
    want = {
        # alpha (|W|^2 + |B|^2) - beta <W, B>
        "sa": 2 * 0.3 * b - 0.7 * w,
        # alpha/n (|hW|^2 + |hB|^2) - beta/n <hB, hW>
        "aa": (2 * 0.3 * h.T @ h @ b - 0.7 * h.T @ h @ w) / n,
    }[rule]
    np.testing.assert_allclose(grads["output"][B], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "brsf", "kp", "wm", "sa", "aa"])
def test_train_step_trains_under_every_rule(rule):
    model, variables, x = _setup(rule)
    tx = wtfree.optimizer(optax.sgd(0.05), variables)
    state = learn.init_train_state(variables, tx)
    step = jax.jit(learn.make_train_step(model, tx, _mse, inputs=lambda b: (b["x"],)))
    batch = {"x": x, "y": jnp.tanh(x[:, :3])}
    losses = []
    for i in range(100):
        state, measurements = step(state, batch, jax.random.key(i))
        losses.append(float(measurements["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_dfa_hidden_errors_are_e_times_b():
    model, variables, x = _setup("dfa", outputs=3)
    d = wtfree.linen.DIRECT_KERNEL
    # Every layer but the input layer holds a B from the 3 outputs to its input's units.
    assert {k: v[d].shape for k, v in variables["feedback"].items()} == {
        "hidden": (3, 6),
        "output": (3, 6),
    }
    y = jax.random.normal(jax.random.key(7), (8, 3))
    batch = {"x": x, "y": y}
    tx = wtfree.optimizer(optax.sgd(1.0), variables)
    state = learn.init_train_state(variables, tx)
    step = learn.make_train_step(model, tx, _mse, inputs=lambda b: (b["x"],))
    new, _ = step(state, batch, jax.random.key(0))
    got = jax.tree.map(lambda a, b: a - b, variables["params"], new["variables"]["params"])

    p, fb = variables["params"], variables["feedback"]
    a1 = x @ p["input"]["kernel"] + p["input"]["bias"]
    h1 = jax.nn.relu(a1)
    a2 = h1 @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    h2 = jax.nn.relu(a2)
    out = h2 @ p["output"]["kernel"] + p["output"]["bias"]
    e = 2 * (out - y) / out.size  # the MSE's gradient at the output
    delta2 = (e @ fb["output"][d]) * (a2 > 0)  # the output layer's B, not W^T
    delta1 = (e @ fb["hidden"][d]) * (a1 > 0)
    want = {"output": h2.T @ e, "hidden": h1.T @ delta2, "input": x.T @ delta1}
    for name, dw in want.items():
        np.testing.assert_allclose(got[name]["kernel"], dw, rtol=1e-4, atol=1e-6)
    # The fixed B do not move, and without the output error the forward pass is the stock one.
    jax.tree.map(np.testing.assert_array_equal, new["variables"]["feedback"], variables["feedback"])
    stock = Mlp().apply({"params": p}, x)
    np.testing.assert_array_equal(model.apply(variables, x), stock)


def test_dfa_needs_the_output_width():
    with pytest.raises(ValueError, match="rule 'dfa' needs outputs="):
        wtfree.convert(Mlp(), "dfa")


class NormedMlp(nn.Module):
    """A stock model with batch norm and a train flag, as a ResNet has."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8, name="hidden")(x.reshape(x.shape[0], -1))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn")(x))
        return nn.Dense(3, name="output")(x)


@pytest.mark.parametrize("rule", ["bp", "dfa"])
def test_batch_norm_statistics_update_and_bp_is_jax_grad(rule):
    """The library's step keeps and updates batch_stats as the stock model's apply does in
    training, and under bp its update is SGD on jax.grad of the unconverted model."""
    x = jax.random.normal(jax.random.key(0), (6, 4))
    batch = {"image": x, "label": jnp.array([0, 1, 2, 0, 1, 2])}
    model = wtfree.convert(NormedMlp(), rule, **({"outputs": 3} if rule == "dfa" else {}))
    variables = model.init(jax.random.key(1), x)
    tx = wtfree.optimizer(optax.sgd(0.1), variables)
    state = wtfree.init_train_state(variables, tx)
    assert "batch_stats" in state["variables"]

    def loss_fn(logits, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    step = wtfree.make_train_step(model, tx, loss_fn, apply_kwargs={"train": True})
    new, _ = jax.jit(step)(state, batch, jax.random.key(2))

    def plain_loss(params):
        logits, updated = NormedMlp().apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return loss_fn(logits, batch), updated

    (_, updated), grads = jax.value_and_grad(plain_loss, has_aux=True)(variables["params"])
    np.testing.assert_allclose(
        new["variables"]["batch_stats"]["bn"]["mean"], updated["batch_stats"]["bn"]["mean"]
    )
    assert not np.allclose(updated["batch_stats"]["bn"]["mean"], 0)
    if rule == "bp":
        want = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
            new["variables"]["params"],
            want,
        )
