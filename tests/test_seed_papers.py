"""Lillicrap et al. 2016 and Song et al. 2021: the shallow rule, squared error, teacher data."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wtfree import data, layers, logs, loop, metrics, plot, sharding
from wtfree import trainer as trainer_lib
from wtfree.data import teacher
from wtfree.models import mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ------------------------------------------------------------------------------------------
# The shallow rule.
# ------------------------------------------------------------------------------------------


def test_shallow_sends_no_error_down_and_keeps_the_local_weight_gradient():
    dense = layers.Dense(features=3, rule="shallow")
    x = jax.random.normal(jax.random.key(0), (4, 5))
    variables = dense.init(jax.random.key(1), x)
    g = jax.random.normal(jax.random.key(2), (4, 3))

    def f(x, params):
        return jnp.vdot(dense.apply({"params": params}, x), g)

    dx, dparams = jax.grad(f, argnums=(0, 1))(x, variables["params"])
    np.testing.assert_array_equal(dx, np.zeros_like(x))
    np.testing.assert_allclose(dparams["kernel"], x.T @ g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dparams["bias"], g.sum(0), rtol=1e-5, atol=1e-6)
    assert "feedback" not in variables


def test_shallow_conv_sends_no_error_down():
    conv = layers.Conv(features=4, kernel_size=(3, 3), rule="shallow")
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = conv.init(jax.random.key(1), x)
    dx = jax.grad(lambda x: jnp.sum(conv.apply(variables, x) ** 2))(x)
    np.testing.assert_array_equal(dx, np.zeros_like(x))


def test_shallow_mlp_gradient_is_backprops_in_the_last_layer_and_zero_below():
    x = jax.random.normal(jax.random.key(0), (8, 6))
    y = jax.random.normal(jax.random.key(1), (8, 3))
    model = mlp.Model(num_classes=3, widths=(5, 4), rule="shallow", activation="tanh")
    params = model.init(jax.random.key(2), x)["params"]

    def grads(m):
        loss = lambda p: metrics.squared_error(m.apply({"params": p}, x), y).mean()  # noqa: E731
        return jax.grad(loss)(params)

    shallow, bp = grads(model), grads(model.clone(rule="bp"))
    for name in ("hidden_0", "hidden_1"):
        for leaf in jax.tree.leaves(shallow[name]):
            np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(shallow["output"][key], bp["output"][key], rtol=1e-5)
        assert np.abs(bp["output"][key]).max() > 0


def test_shallow_training_changes_only_the_last_layer_and_lowers_the_error(tmp_path):
    config = load_config("lillicrap_linear", "rule=shallow")
    config.dataset_kwargs.train_examples = 200
    config.dataset_kwargs.test_examples = 100
    config.optimizer.learning_rate = 0.3
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    start = jax.tree.map(np.asarray, state["params"])
    batches = trainer.train_batches(0)
    before = trainer.evaluate(state)["test/nse"]
    for _ in range(100):
        state, _ = trainer.train_step(state, sharding.put_batch(next(batches), trainer.mesh))
    after = trainer.evaluate(state)["test/nse"]
    np.testing.assert_array_equal(
        state["params"]["hidden_0"]["kernel"], start["hidden_0"]["kernel"]
    )
    assert np.abs(state["params"]["output"]["kernel"] - start["output"]["kernel"]).max() > 1e-3
    assert after < 0.8 * before, (before, after)


def test_feedback_scale_multiplies_b_and_leaves_w_alone():
    x = jnp.ones((2, 300))
    plain = mlp.Model(num_classes=200, widths=(), rule="fa").init(jax.random.key(0), x)
    scaled = mlp.Model(num_classes=200, widths=(), rule="fa", feedback_scale=4.0).init(
        jax.random.key(0), x
    )
    np.testing.assert_array_equal(
        scaled["params"]["output"]["kernel"], plain["params"]["output"]["kernel"]
    )
    np.testing.assert_allclose(
        scaled["feedback"]["output"]["feedback_kernel"],
        4.0 * plain["feedback"]["output"]["feedback_kernel"],
        rtol=1e-6,
    )


# ------------------------------------------------------------------------------------------
# Squared error, NSE and the alignment metrics.
# ------------------------------------------------------------------------------------------


def test_squared_error_is_the_mean_over_outputs_per_example():
    y = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(metrics.squared_error(y, t), [(0 + 4 + 9) / 3, 1.0])
    assert metrics.get_loss("squared_error") is metrics.squared_error


def test_normalized_squared_error_closed_forms():
    t = jnp.array([[1.0, 2.0], [3.0, -1.0], [5.0, 5.0]])
    assert float(metrics.normalized_squared_error(jnp.zeros_like(t), t)) == pytest.approx(1.0)
    assert float(metrics.normalized_squared_error(t, t)) == 0.0
    y = jnp.array([[0.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
    mask = jnp.array([1.0, 1.0, 0.0])
    # errors 1 and 4 over targets 5 and 10; the third example is padding.
    got = metrics.normalized_squared_error(y, t, mask)
    assert float(got) == pytest.approx(5 / 15)


def test_weight_cosine_is_the_cosine_of_b_and_w():
    model = mlp.Model(num_classes=1, widths=(7,), rule="fa", activation="tanh")
    x = jnp.ones((2, 3))
    variables = model.init(jax.random.key(0), x)
    _, sown = model.apply(variables, x, mutable=[layers.ALIGNMENT])
    out = metrics.alignment(sown[layers.ALIGNMENT])
    w = np.asarray(variables["params"]["output"]["kernel"]).ravel()
    b = np.asarray(variables["feedback"]["output"]["feedback_kernel"]).ravel()
    expected = w @ b / np.linalg.norm(w) / np.linalg.norm(b)
    assert float(out["align/weight_cosine/output"]) == pytest.approx(expected, abs=1e-5)


def test_delta_angle_is_lillicraps_hidden_update_angle_in_a_linear_network():
    # Lillicrap et al.: dh_FA = B e against dh_BP = W^T e (here row vectors: e B^T, e W^T).
    config = load_config("lillicrap_linear", "rule=fa")
    config.dataset_kwargs.train_examples = 20
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    batch = next(trainer.train_batches(0))
    got = trainer.measure_step(state, sharding.put_batch(batch, trainer.mesh))
    p, b = state["params"], state["feedback"]
    h = batch["image"] @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"]
    e = h @ p["output"]["kernel"] + p["output"]["bias"] - batch["label"]
    fa, bp = e @ b["output"]["feedback_kernel"].T, e @ p["output"]["kernel"].T
    cos = np.sum(fa * bp) / np.linalg.norm(fa) / np.linalg.norm(bp)
    expected = np.degrees(np.arccos(cos))
    assert float(got["align/delta_angle/hidden_0"]) == pytest.approx(expected, abs=0.05)


# ------------------------------------------------------------------------------------------
# The teacher data.
# ------------------------------------------------------------------------------------------


def test_teacher_targets_are_t_x_and_the_seed_fixes_everything():
    ds = data.get_dataset("linear_teacher", inputs=7, outputs=3, train_examples=50, seed=4)
    assert isinstance(ds, teacher.LinearTeacher)
    assert (ds.num_classes, ds.image_shape, ds.teacher.shape) == (3, (7,), (3, 7))
    assert np.abs(ds.teacher).max() <= 1.0
    x, y = ds.arrays("train")
    assert x.shape == (50, 7) and y.shape == (50, 3) and x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(y, x @ ds.teacher.T, rtol=1e-5, atol=1e-5)
    again = teacher.LinearTeacher(inputs=7, outputs=3, train_examples=50, seed=4)
    np.testing.assert_array_equal(again.arrays("test")[0], ds.arrays("test")[0])
    other = teacher.LinearTeacher(inputs=7, outputs=3, train_examples=50, seed=5)
    assert not np.allclose(other.teacher, ds.teacher)
    noisy = teacher.LinearTeacher(inputs=7, outputs=3, train_examples=2000, noise_std=0.5)
    xn, yn = noisy.arrays("train")
    assert np.std(yn - xn @ noisy.teacher.T) == pytest.approx(0.5, rel=0.05)


def test_teacher_batches_split_over_processes_and_eval_covers_each_example_once():
    ds = teacher.LinearTeacher(inputs=4, outputs=2, train_examples=40, test_examples=25)
    whole = next(ds.train_batches(8, seed=1, start_step=3))
    parts = [
        next(ds.train_batches(8, seed=1, start_step=3, process_index=i, process_count=2))
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])
    batches = list(ds.eval_batches(global_batch_size=10))
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 25 and len(mask) == 30
    x = np.concatenate([b["image"] for b in batches])[mask > 0]
    np.testing.assert_array_equal(x, ds.arrays("test")[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(inputs=0), "inputs=0"),
        (dict(noise_std=-1.0), "noise_std"),
        (dict(width=3), "width"),
    ],
)
def test_bad_teacher_options_are_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.get_dataset("linear_teacher", **kwargs)


def test_dataset_options_are_refused_for_other_datasets():
    with pytest.raises(
        ValueError, match="mnist takes no option inputs; allowed: data_dir, idx_dir"
    ):
        data.get_dataset("mnist", inputs=3)


def test_regression_run_logs_nse_and_no_accuracy(tmp_path):
    config = load_config("lillicrap_linear", "rule=fa,runlocal=True")
    loop.train_and_evaluate(config, str(tmp_path))
    lines = logs.read_metrics(str(tmp_path))
    keys = set().union(*lines)
    assert {"train/nse", "test/nse", "test/loss", "align/delta_angle/hidden_0"} <= keys
    assert not any("accuracy" in k for k in keys)
    assert 0.0 < lines[-1]["test/nse"] < 2.0
    fig = plot.make_figure([str(tmp_path)])
    assert "NSE" in fig.axes[0].get_title() and len(fig.axes[0].get_lines()) == 1


# ------------------------------------------------------------------------------------------
# Song et al.: L2 regularization aligns the second layer with B.
# ------------------------------------------------------------------------------------------


def _song_cosine(l2: float) -> float:
    config = load_config("song_two_layer")
    config.model_kwargs.widths = (200,)
    config.dataset_kwargs.test_examples = 10
    config.optimizer.learning_rate = 0.01
    config.optimizer.weight_decay = l2
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    batch = sharding.put_batch(next(trainer.train_batches(0)), trainer.mesh)  # the full batch
    for _ in range(300):
        state, _ = trainer.train_step(state, batch)
    return float(trainer.measure_step(state, batch)["align/weight_cosine/output"])


def test_song_config_with_l2_ends_better_aligned_than_without():
    without, with_l2 = _song_cosine(0.0), _song_cosine(1.0)
    assert with_l2 > without + 0.3, (without, with_l2)
    assert with_l2 > 0.5
