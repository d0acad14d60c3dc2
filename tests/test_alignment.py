"""Alignment rules (sa, aa, ia, wm_reg): primitives' B-gradients against hand-derived closed
forms (dense, and conv through an explicit im2col), SA's convergence, amp vs the mirror's Hebbian
product, and the train step's split: W learns from the task alone, B from its alignment loss."""

import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax import lax

from configs import common
from tests import config_helpers
from wtfree import config_lib, layers, metrics, models, optim, rules, sweep, trainer
from wtfree import steps as steps_lib
from wtfree.kinds import loss as loss_kind
from wtfree.models import mlp
from wtfree.rules import alignment

RTOL, ATOL = 1e-4, 1e-5
PAD = 1  # SAME for a 3x3 kernel at stride 1


def dense(x, w):
    return x @ w


def conv(x, w):
    return lax.conv_general_dilated(
        x, w, (1, 1), [(PAD, PAD)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def im2col(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """(n, H, W, C) -> (n * positions, kh * kw * C), rows in the conv output's order."""
    xp = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    n, hp, wp, _ = xp.shape
    rows = []
    for b in range(n):
        for i in range(hp - kh + 1):
            for j in range(wp - kw + 1):
                rows.append(xp[b, i : i + kh, j : j + kw, :].reshape(-1))
    return np.stack(rows)


def col2im(cols: np.ndarray, x_shape, kh: int, kw: int) -> np.ndarray:
    """The transpose of im2col: adds each row's patch back where it came from."""
    n, h, w, c = x_shape
    xp = np.zeros((n, h + 2 * PAD, w + 2 * PAD, c))
    k = 0
    for b in range(n):
        for i in range(h + 2 * PAD - kh + 1):
            for j in range(w + 2 * PAD - kw + 1):
                xp[b, i : i + kh, j : j + kw, :] += cols[k].reshape(kh, kw, c)
                k += 1
    return xp[:, PAD : PAD + h, PAD : PAD + w, :]


def _case(op: str, seed: int = 0):
    """(f, x, w, b, X, Wf, Bf, unflatten): the layer, and its matrix form Y = X Wf."""
    rng = np.random.default_rng(seed)
    if op == "dense":
        x, w, b = rng.normal(size=(6, 5)), rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
        return dense, x, w, b, x, w, b, lambda m: m
    shape = (3, 3, 2, 4)
    x, w, b = rng.normal(size=(2, 5, 5, 2)), rng.normal(size=shape), rng.normal(size=shape)
    return (
        conv,
        x,
        w,
        b,
        im2col(x, 3, 3),
        w.reshape(-1, 4),
        b.reshape(-1, 4),
        lambda m: m.reshape(shape),
    )


def _grad_b(name, f, x, w, b):
    return jax.grad(lambda b_: alignment.primitives(f, x, w, b_, (name,))[name])(
        jnp.asarray(b, jnp.float32)
    )


@pytest.mark.parametrize("op", ["dense", "conv"])
def test_each_primitive_value_and_b_gradient_match_their_closed_forms(op):
    f, x, w, b, xm, wf, bf, unflatten = _case(op)
    n = x.shape[0]
    ym = xm @ wf  # every position of every example, as rows
    if op == "dense":
        reconstruction = ym @ bf.T
        grad_null = 2 / n * reconstruction.T @ ym
    else:
        reconstruction = col2im(ym @ bf.T, x.shape, 3, 3)
        grad_null = 2 / n * im2col(reconstruction, 3, 3).T @ ym
    expected = {
        "decay": (np.sum(w**2) + np.sum(b**2), 2 * bf),
        "sparse": ((np.sum(ym**2) + np.sum((xm @ bf) ** 2)) / n, 2 / n * xm.T @ xm @ bf),
        "null": (np.sum(reconstruction**2) / n, grad_null),
        "self": (-np.sum(w * b), -wf),
        "amp": (-np.sum((xm @ bf) * ym) / n, -1 / n * xm.T @ ym),
    }
    args = [jnp.asarray(a, jnp.float32) for a in (x, w, b)]
    values = alignment.primitives(f, *args)
    assert set(values) == set(alignment.PRIMITIVES)
    for name, (value, grad) in expected.items():
        np.testing.assert_allclose(values[name], value, rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(
            _grad_b(name, f, *args), unflatten(grad), rtol=RTOL, atol=ATOL, err_msg=name
        )


@pytest.mark.parametrize("op", ["dense", "conv"])
def test_primitives_give_w_and_x_no_gradient(op):
    f, x, w, b, *_ = _case(op)
    args = [jnp.asarray(a, jnp.float32) for a in (x, w, b)]

    def total(x, w, b):
        return sum(alignment.primitives(f, x, w, b).values())

    gx, gw, gb = jax.grad(total, argnums=(0, 1, 2))(*args)
    assert not np.any(gx) and not np.any(gw) and np.any(gb)


@pytest.mark.parametrize("op", ["dense", "conv"])
def test_amp_gradient_is_minus_the_mirror_hebbian_product_times_positions_over_batch(op):
    # hebbian() sums over the batch and averages over a conv's P output positions; amp sums
    # over units (positions included) and averages over the batch: grad_B amp = -(P/n) H.
    f, x, w, b, *_ = _case(op)
    x, w, b = (jnp.asarray(a, jnp.float32) for a in (x, w, b))
    n, positions = x.shape[0], int(np.prod(f(x, w).shape[1:-1]))
    hebbian = rules.hebbian(f, w, x)
    np.testing.assert_allclose(
        _grad_b("amp", f, x, w, b), -positions / n * hebbian, rtol=RTOL, atol=ATOL
    )


def test_sa_gradient_descent_follows_its_closed_form_to_w():
    # SA = alpha decay + beta self is a quadratic in B with gradient 2 alpha B - beta W, so
    # B_t = B* + (1 - 2 eta alpha)^t (B_0 - B*), B* = beta / (2 alpha) W, whatever x is.
    f, x, w, b, *_ = _case("dense")
    x, w, b0 = (jnp.asarray(a, jnp.float32) for a in (x, w, b))
    coefficients, eta = {"alpha": 0.5, "beta": 0.3}, 0.2
    sa = alignment.ALIGNMENTS["sa"]

    def loss(b):
        return sa.loss(alignment.primitives(f, x, w, b, sa.primitives), coefficients)

    b = b0
    target = 0.3 / (2 * 0.5) * w
    for t in range(1, 61):
        b = b - eta * jax.grad(loss)(b)
        if t in (1, 10, 60):
            expected = target + (1 - 2 * eta * 0.5) ** t * (b0 - target)
            np.testing.assert_allclose(b, expected, rtol=1e-4, atol=1e-6)
    assert metrics.angle(b, w) < 0.01
    # With the authors' defaults (alpha 1e-3, beta 2e-3) the minimum is W itself.
    d = alignment.ALIGNMENTS["sa"].defaults
    assert d["beta"] / (2 * d["alpha"]) == 1.0


def _alignment_config(input="activations", input_std=1.0, **coefficients):
    config = common.base_config(
        rule="sa", dataset="mnist", model="mlp", batch_size=8, num_epochs=1, learning_rate=0.1
    )
    common.set_alignment(config, input=input, input_std=input_std)
    for rule, values in coefficients.items():
        config.alignment.coefficients[rule].update(values)
    return config.alignment


def _mlp(rule, **kwargs):
    return mlp.Model(num_classes=3, widths=(6,), rule=rule, activation="tanh", **kwargs)


def _batch(seed=0, n=8):
    kx, ky = jax.random.split(jax.random.key(seed))
    return {
        "image": jax.random.normal(kx, (n, 4, 3, 1)),
        "label": jax.random.randint(ky, (n,), 0, 3),
    }


def _state(model, tx, batch):
    return steps_lib.init_state(model, tx, jax.random.key(1), batch["image"].shape)


def _tx(model, batch, lr, weight_decay=0.0, momentum=0.0):
    _, flags = steps_lib.init_variables(model, jax.random.key(1), batch["image"].shape)
    return optim.make_optimizer(lr, flags, weight_decay=weight_decay, momentum=momentum)


MODELS = {
    "mlp": (_mlp, (8, 4, 3, 1)),
    "lenet": (lambda r: models.get("lenet")(num_classes=3, rule=r), (2, 28, 28, 1)),
}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("rule", sorted(alignment.ALIGNMENTS))
def test_task_loss_gives_w_fas_gradient_and_b_nothing(rule, model_name):
    model_fn, x_shape = MODELS[model_name]
    model, fa = model_fn(rule), model_fn("fa")
    x = jax.random.normal(jax.random.key(2), x_shape)
    labels = jnp.arange(x_shape[0]) % 3
    variables = model.init(jax.random.key(0), x)
    trainable = {k: variables[k] for k in ("params", "feedback")}

    def task(trainable, m):
        logits = m.apply(trainable, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    g = jax.grad(task)(trainable, model)
    g_fa = jax.grad(task)(trainable, fa)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), g["params"], g_fa["params"]
    )
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(g["feedback"]))


def _flat(tree):
    return traverse_util.flatten_dict(tree)


def _aligned_step(model, tx, config):
    """train.py's step with the alignment losses of ``config`` (as ``config.alignment``)."""
    extra = loss_kind.step_extra(config)
    return steps_lib.make_train_step(model, tx, "softmax_xent", extras=[extra])


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_train_step_moves_w_by_the_task_and_b_by_its_alignment_loss_alone(weight_decay):
    # SA and wm_reg: B_new = B - lr * grad R with R's closed-form gradient (SA: 2 alpha B -
    # beta W; wm_reg: 2 alpha B - beta/n h^T h W, h the layer's input), no weight decay on B even
    # when W has some; W's update is exactly FA's with the same B. The input layer's B sends no
    # error anywhere, so it gets no alignment loss and stays where it is.
    batch, lr = _batch(), 0.1
    fa = _mlp("fa")
    fa_step = steps_lib.make_train_step(fa, _tx(fa, batch, lr, weight_decay), "softmax_xent")
    coefficients = {"sa": {"alpha": 0.3, "beta": 0.2}, "wm_reg": {"alpha": 0.05, "beta": 0.7}}
    for rule in ("sa", "wm_reg"):
        model = _mlp(rule)
        tx = _tx(model, batch, lr, weight_decay)
        state = _state(model, tx, batch)
        step = _aligned_step(model, tx, _alignment_config(**coefficients))
        new, measurements = step(state, batch)
        fa_new, _ = fa_step(
            {
                **state,
                "opt_state": _tx(fa, batch, lr, weight_decay).init(
                    {"params": state["params"], "feedback": state["feedback"]}
                ),
            },
            batch,
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
            new["params"],
            fa_new["params"],
        )
        alpha, beta = coefficients[rule]["alpha"], coefficients[rule]["beta"]
        b, w = _flat(state["feedback"]), _flat(state["params"])
        x = np.asarray(batch["image"]).reshape(len(batch["image"]), -1)
        h = np.tanh(x @ w[("hidden_0", "kernel")] + w[("hidden_0", "bias")])
        for path, b_new in _flat(new["feedback"]).items():
            if path[0] == "hidden_0":
                np.testing.assert_array_equal(b_new, b[path])
                continue
            w_path = (*path[:-1], "kernel")  # B at <layer>/feedback_kernel, W at <layer>/kernel
            if rule == "sa":
                grad = 2 * alpha * b[path] - beta * w[w_path]
            else:
                grad = 2 * alpha * b[path] - beta / len(h) * h.T @ h @ w[w_path]
            np.testing.assert_allclose(b_new, b[path] - lr * grad, rtol=1e-5, atol=1e-6)
        assert float(measurements["train/alignment_loss"]) != 0.0


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_noise_input_has_the_configured_variance(distribution):
    # amp on noise of variance s^2: E[x^T x / n] = s^2 I, so grad_B amp -> -s^2 W. A zero
    # input shows the layer's own input is not what the loss sees.
    d, n = 4, 20000
    layer = layers.Dense(features=3, rule="wm_reg", alignment_input=distribution)
    x = jnp.zeros((n, d))
    variables = layer.init(jax.random.key(0), x)

    def amp(feedback):
        _, sown = layer.apply(
            {**variables, "feedback": feedback},
            x,
            rngs={layers.ALIGNMENT_RNG: jax.random.key(5)},
            mutable=[layers.ALIGNMENT_LOSS],
        )
        return sown[layers.ALIGNMENT_LOSS]["wm_reg"]["amp"]

    grad = jax.grad(amp)(variables["feedback"])["feedback_kernel"]
    w = variables["params"]["kernel"]
    np.testing.assert_allclose(grad, -w, atol=0.05 * float(jnp.abs(w).max()))


def test_train_step_scales_noise_primitives_by_the_noise_variance():
    batch, lr = _batch(), 1.0
    model = _mlp("wm_reg", alignment_input="normal")
    tx = _tx(model, batch, lr)
    state = _state(model, tx, batch)
    moves = []
    for std in (1.0, 2.0):
        config = _alignment_config("normal", std, wm_reg={"alpha": 0.0, "beta": 1.0})
        new, _ = _aligned_step(model, tx, config)(state, batch)
        moves.append(jax.tree.map(jnp.subtract, new["feedback"], state["feedback"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 4 * a, rtol=1e-5), *moves)


@pytest.mark.parametrize("name, input_layer", [("lenet", "conv_0"), ("resnet20", "conv_init")])
def test_every_layer_of_conv_models_sows_its_loss_and_is_trained_by_it(name, input_layer):
    # Every layer but the input one, whose B sends no error anywhere: no loss, not trained.
    model = models.get(name)(num_classes=3, rule="aa")
    x = jnp.ones((2, 28, 28, 1) if name == "lenet" else (2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    kernels = {p[:-1] for p in _flat(variables["feedback"])}
    assert (input_layer,) in kernels
    kernels.remove((input_layer,))
    flags = _flat(variables[layers.TRAINED_FEEDBACK])
    assert {p[:-1] for p in flags} == kernels
    assert all(p[-1] == layers.BY_ALIGNMENT_LOSS for p in flags)
    _, sown = model.apply(
        {k: v for k, v in variables.items() if k in steps_lib.STATE_COLLECTIONS},
        x,
        train=False,
        mutable=[layers.ALIGNMENT_LOSS],
    )
    sown = _flat(sown[layers.ALIGNMENT_LOSS])
    assert {p[:-2] for p in sown} == kernels
    assert all(p[-2] == "aa" and p[-1] in ("sparse", "amp", alignment.POSITIONS) for p in sown)


def test_registry_and_config_hold_every_alignment_rule():
    config = _alignment_config()
    for name, a in alignment.ALIGNMENTS.items():
        rule = rules.get(name)
        assert rule.feedback == rules.LOSS and rule.alignment is a and rule.stores_feedback
        assert dict(config.coefficients[name]) == dict(a.defaults)
        assert set(a.primitives) <= set(alignment.PRIMITIVES)
    bad = ml_collections.ConfigDict(
        common.base_config(
            rule="sa", dataset="mnist", model="mlp", batch_size=8, num_epochs=1, learning_rate=1
        )
    )
    bad.alignment.input = "gaussian"
    with pytest.raises(ValueError, match="alignment.input='gaussian'; allowed: activations"):
        config_lib.validate(bad)
    bad.alignment.input = "activations"
    bad.alignment.positions = "max"
    with pytest.raises(ValueError, match="alignment.positions='max'; allowed: sum, mean"):
        config_lib.validate(bad)
    bad.alignment.positions = "mean"
    bad.alignment.learning_rate_scale = -1.0
    with pytest.raises(ValueError, match="alignment.learning_rate_scale=-1.0; allowed: a number"):
        config_lib.validate(bad)
    assert config.learning_rate_scale == 1.0 and config.positions == "sum"  # the authors'


def test_alignment_loss_ignores_nn_modules_named_like_rules():
    # total_loss only weighs leaves shaped as {primitive: value}: a submodule called "sa"
    # holding a layer's sown losses is walked into, not weighed.
    sown = {"sa": {"layer": {"ia": {"amp": 2.0, "null": 3.0, "decay": 5.0}}}}
    total = alignment.total_loss(sown, {"ia": {"alpha": 1.0, "beta": 10.0, "gamma": 100.0}})
    assert float(total) == pytest.approx(2.0 + 30.0 + 500.0)


@pytest.mark.parametrize(
    "sweep_file",
    [
        "alignment_rules.py",
        "alignment_noise.py",
        "alignment_coefficients.py",
        "alignment_lenet.py",
        "alignment_resnet.py",
    ],
)
def test_alignment_sweeps_name_every_run_and_override_existing_keys(sweep_file):
    runs = sweep.load_sweep(os.path.join(sweep.REPO_ROOT, "configs", "sweeps", sweep_file))
    assert len({run.name for run in runs}) == len(runs)
    for run in runs:
        path, _, arg = run.config.partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        config = module.get_config(arg)
        for key, value in run.overrides.items():
            target, last = config_helpers.parent_and_name(config, key)
            assert last in target, key
            assert isinstance(value, type(target[last])) or target[last] is None, key


@pytest.mark.parametrize("rule", ["aa", "wm_reg", "ia"])
def test_conv_layer_positions_mean_divides_the_input_primitives_by_its_positions(rule):
    # A Conv layer (5x5 input, SAME, stride 1: P = 25 output positions) sows its primitives and
    # P. With positions="mean", amp's B-gradient is -(1/n) H, H the mirror mode's Hebbian
    # product (which averages over positions), sparse's (2/(nP)) X^T X B with X the im2col
    # matrix, null's 1/P of its closed form above; decay and self are left alone.
    f, x, w, b, xm, wf, bf, unflatten = _case("conv")
    n, positions = x.shape[0], 25
    layer = layers.Conv(features=4, kernel_size=(3, 3), padding=((PAD, PAD), (PAD, PAD)), rule=rule)
    x = jnp.asarray(x, jnp.float32)
    variables = {
        "params": {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.zeros(4)},
        "feedback": {"feedback_kernel": jnp.asarray(b, jnp.float32)},
    }
    coefficients = {rule: {"alpha": 0.3, "beta": 0.7, "gamma": 0.11}}

    def total(b_, mode):
        _, sown = layer.apply(
            {**variables, "feedback": {"feedback_kernel": b_}}, x, mutable=[layers.ALIGNMENT_LOSS]
        )
        assert float(sown[layers.ALIGNMENT_LOSS][rule][alignment.POSITIONS]) == positions
        return alignment.total_loss(sown[layers.ALIGNMENT_LOSS], coefficients, 1.0, mode)

    b0 = variables["feedback"]["feedback_kernel"]
    g_sum, g_mean = (jax.grad(total)(b0, mode) for mode in ("sum", "mean"))
    hebbian = np.asarray(rules.hebbian(f, jnp.asarray(w, jnp.float32), x)).reshape(-1, 4)
    ym = xm @ wf
    reconstruction = col2im(ym @ bf.T, x.shape, 3, 3)
    c = coefficients[rule]
    closed = {
        "aa": (c["alpha"] * 2 / n * xm.T @ xm @ bf, c["beta"] * -positions / n * hebbian, 0),
        "wm_reg": (0, c["beta"] * -positions / n * hebbian, c["alpha"] * 2 * bf),
        "ia": (
            c["beta"] * 2 / n * im2col(reconstruction, 3, 3).T @ ym,
            c["alpha"] * -positions / n * hebbian,
            c["gamma"] * 2 * bf,
        ),
    }
    first, amp_term, decay_term = closed[rule]  # x-dependent, x-dependent, not
    np.testing.assert_allclose(
        g_sum, unflatten(first + amp_term + decay_term), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        g_mean,
        unflatten((first + amp_term) / positions + decay_term),
        rtol=RTOL,
        atol=ATOL,
    )
    if rule == "wm_reg":  # amp alone, per position: exactly the mirror's Hebbian product
        np.testing.assert_allclose(
            g_mean - unflatten(decay_term), unflatten(-c["beta"] / n * hebbian), atol=ATOL
        )


def test_dense_layer_sows_one_position_so_mean_equals_sum():
    layer = layers.Dense(features=3, rule="aa")
    x = jax.random.normal(jax.random.key(0), (6, 5))
    variables = layer.init(jax.random.key(1), x)
    _, sown = layer.apply(variables, x, mutable=[layers.ALIGNMENT_LOSS])
    sown = sown[layers.ALIGNMENT_LOSS]
    assert float(sown["aa"][alignment.POSITIONS]) == 1.0
    coefficients = {"aa": {"alpha": 0.3, "beta": 0.7}}
    assert float(alignment.total_loss(sown, coefficients, 1.0, "mean")) == pytest.approx(
        float(alignment.total_loss(sown, coefficients, 1.0, "sum"))
    )
    with pytest.raises(ValueError, match="positions='max'; allowed: sum, mean"):
        alignment.total_loss(sown, coefficients, 1.0, "max")


def _sa_tree(w, b):
    return {"params": {"layer": {"kernel": w}}, "feedback": {"layer": {"feedback_kernel": b}}}


def _sa_descent(tx, w, b0, alpha, beta, steps):
    """B's trajectory under ``tx`` on SA's loss with W fixed (the optimizer's weight decay may
    move its copy of W; the loss reads the fixed one)."""
    tree = _sa_tree(w, b0)
    opt_state = tx.init(tree)
    trajectory = []
    for _ in range(steps):
        b = tree["feedback"]["layer"]["feedback_kernel"]
        grads = _sa_tree(jnp.zeros_like(w), 2 * alpha * b - beta * w)
        updates, opt_state = tx.update(grads, opt_state, tree)
        tree = optax.apply_updates(tree, updates)
        trajectory.append(tree["feedback"]["layer"]["feedback_kernel"])
    return trajectory


FLAGS = {"layer": {optim.BY_ALIGNMENT_LOSS: jnp.ones((), bool)}}


def test_sa_heavy_ball_at_its_own_rate_follows_its_closed_form():
    # SA's gradient is 2 alpha (B - B*), B* = beta/(2 alpha) W. With step s*eta and momentum mu,
    # e_t = B_t - B* obeys e_{t+1} = (1 + mu - a) e_t - mu e_{t-1}, a = 2 alpha s eta, e_1 =
    # (1 - a) e_0: e_t = c1 z1^t + c2 z2^t with z1, z2 the roots of z^2 - (1 + mu - a) z + mu.
    # W's rate (eta) and weight decay do not enter: B has its own step and no optimizer decay.
    rng = np.random.default_rng(3)
    w, b0 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
    alpha, beta, eta, mu, s = 0.1, 0.15, 0.1, 0.5, 3.0
    tx = optim.make_optimizer(eta, FLAGS, momentum=mu, weight_decay=0.3, alignment_scale=s)
    trajectory = _sa_descent(tx, w, b0, alpha, beta, 40)
    a = 2 * alpha * s * eta
    z1, z2 = np.roots([1.0, -(1 + mu - a), mu])
    e0 = np.asarray(b0 - beta / (2 * alpha) * w, np.float64)
    c2 = ((1 - a) - z1) / (z2 - z1)
    c1 = 1 - c2
    for t in (1, 5, 20, 40):
        expected = beta / (2 * alpha) * w + (c1 * z1**t + c2 * z2**t) * e0
        np.testing.assert_allclose(trajectory[t - 1], expected, rtol=1e-4, atol=1e-5)


def test_alignment_learning_rate_scale_multiplies_the_task_schedule():
    # Through the config: B's step is s times W's cosine schedule, so without momentum SA's
    # e_t = prod_k (1 - 2 alpha s eta_k) e_0, the closed form README's budget rests on.
    config = common.base_config(
        rule="sa", dataset="mnist", model="mlp", batch_size=8, num_epochs=1, learning_rate=0.2
    )
    config.optimizer.schedule = "cosine"
    common.set_alignment(config, learning_rate_scale=4.0)
    steps, alpha, beta = 12, 0.5, 0.3
    tx, schedule = trainer.make_optimizer(config, steps, steps, FLAGS)
    rng = np.random.default_rng(4)
    w, b0 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
    trajectory = _sa_descent(tx, w, b0, alpha, beta, steps)
    target = beta / (2 * alpha) * w
    factor = 1.0
    for t in range(steps):
        factor *= 1 - 2 * alpha * 4.0 * float(schedule(t))
        expected = target + factor * (b0 - target)
        np.testing.assert_allclose(trajectory[t], expected, rtol=1e-5, atol=1e-6)
    assert 0 < factor < 0.05  # the budget: 1 - this is how much of B0 - B* is gone


def test_alignment_momentum_zero_gives_b_plain_sgd_under_w_heavy_ball():
    # optimizer.momentum 0.9 for W; alignment.momentum 0 gives B plain SGD, so SA's
    # e_{t+1} = (1 - 2 alpha s eta) e_t, and with 2 alpha s eta = 1 B is on B* after one step.
    # alignment.momentum < 0 (the default) gives B W's momentum: the heavy-ball closed form.
    config = common.base_config(
        rule="sa", dataset="mnist", model="mlp", batch_size=8, num_epochs=1, learning_rate=0.1
    )
    config.optimizer.momentum = 0.9
    alpha, beta, eta = 0.5, 0.3, 0.1
    s = 1 / (2 * alpha * eta)
    common.set_alignment(config, learning_rate_scale=s, momentum=0.0)
    config_lib.validate(config)
    rng = np.random.default_rng(5)
    w, b0 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
    tx, _ = trainer.make_optimizer(config, 5, 5, FLAGS)
    target = beta / (2 * alpha) * w
    for b in _sa_descent(tx, w, b0, alpha, beta, 3):
        np.testing.assert_allclose(b, target, rtol=1e-5, atol=1e-6)
    config.alignment.momentum = -1.0  # W's: e_2 = (1 + mu - a) e_1 - mu e_0 with a = 1
    tx, _ = trainer.make_optimizer(config, 5, 5, FLAGS)
    second = _sa_descent(tx, w, b0, alpha, beta, 2)[1]
    np.testing.assert_allclose(second, target - 0.9 * (b0 - target), rtol=1e-5, atol=1e-5)
    config.alignment.momentum = 1.0
    with pytest.raises(ValueError, match=r"alignment.momentum=1.0; allowed: a number < 1"):
        config_lib.validate(config)


def test_feedback_at_weights_starts_sa_at_its_minimum():
    # SA's gradient on B is 2 alpha B - beta W, zero at B = W with the default beta = 2 alpha:
    # from wtfree.steps.feedback_at_weights a step moves W (by the task) and leaves B where it is.
    batch, lr = _batch(), 0.1
    model = _mlp("sa")
    tx = _tx(model, batch, lr, weight_decay=0.1, momentum=0.9)
    state = steps_lib.feedback_at_weights(_state(model, tx, batch))
    # B at <layer>/feedback_kernel, its W at <layer>/kernel.
    b = {k[:-1]: v for k, v in _flat(state["feedback"]).items()}
    w = {k[:-1]: v for k, v in _flat(state["params"]).items() if k[-1] == "kernel"}
    assert b.keys() == w.keys() and all(np.array_equal(b[k], w[k]) for k in b)
    new, _ = _aligned_step(model, tx, _alignment_config())(state, batch)
    new_w = {k[:-1]: v for k, v in _flat(new["params"]).items() if k[-1] == "kernel"}
    for k, v in _flat(new["feedback"]).items():
        np.testing.assert_allclose(v, b[k[:-1]], atol=1e-7)
        assert not np.allclose(new_w[k[:-1]], w[k[:-1]])
    with pytest.raises(ValueError, match="feedback without a weight of the same path: direct_0"):
        direct = mlp.Model(num_classes=3, widths=(6,), rule="dfa", activation="tanh")
        steps_lib.feedback_at_weights(_state(direct, _tx(direct, batch, lr), batch))
