"""The settling rules (ar, pc, di, pal) through train.py's code: the Trainer's step, the loop's
checkpoints and resume, the config checks (wtfree.kinds.settling)."""

import functools
import itertools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import config_helpers, fake_data
from wtfree import checkpoints, config_lib, errors, loop, metrics
from wtfree import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist_resnet, mnist_settling  # noqa: E402


def tiny_config(rule: str, model: str = "mlp", **overrides):
    config = mnist_settling.get_config(f"rule={rule},model={model}")
    if model == "mlp":
        config.model_kwargs.widths = (12, 8)
    config.batch_size = 16
    config.eval_batch_size = 64
    config.num_train_steps = 6
    config.log_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_devices = 1
    config.settling.loss_scale = 1.0  # the tests set the learning rate for the mean loss
    if rule == "pc":  # 40 steps of 2 x 0.05 leave 0.9^40 = 1.5% of the error unsettled
        config.settling.steps, config.settling.step_size = 40, 0.05
    return config_helpers.override(config, overrides)


@pytest.fixture(autouse=True, scope="module")
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=64):
        yield


# Trainers built once for the module: building and compiling one is most of a test's time.
SETUPS = {
    # 400 steps of 0.1 from the activations: 0.9^400 of them is left, nothing in float32.
    "ar": ("ar", {"settling.steps": 400}),
    "ar_fa": ("ar", {"settling.feedback": "fa"}),
    # E without the identity starts the errors at the activations: 400 steps settle them.
    "pc": ("pc", {"settling.error_weights": True, "settling.steps": 400}),
    # W drawn at the usual scale (the authors' U(-0.01, 0.01) learns slowly at first), and a
    # small rate: the pseudo-inverse's steps are large where W's singular values are small.
    "di": ("di", {"model_kwargs.kernel_scale": 1.0, "optimizer.learning_rate": 0.05}),
    "pal": ("pal", {"settling.steps": 5}),
}
# LeNet (conv, max pool, conv, max pool, dense, dense, dense) on standardized 28 x 28 inputs;
# the exact tests resize them to 32 x 32 as well, so that the chain's input transform is checked
# against the model's.
LENET = {
    "model": "lenet",
    "optimizer.learning_rate": 0.005,
    "model_kwargs.input_mean": 0.13,
    "model_kwargs.input_std": 0.31,
}
SETUPS.update(
    {
        "lenet_ar": ("ar", {**LENET, "model_kwargs.input_size": 32, "settling.steps": 400}),
        "lenet_ar_fa": ("ar", {**LENET, "settling.feedback": "fa"}),
        # Fixed predictions settle as AR does: 400 steps of 2 x 0.05 leave nothing in float32.
        # PC's error is mu - prediction, the value nodes' small offset from the activations: at
        # the mean loss float32 keeps 3 digits of it, at 1000 times the loss 5 (rtol 1e-5).
        "lenet_pc": (
            "pc",
            {
                **LENET,
                "model_kwargs.input_size": 32,
                "settling.steps": 400,
                "settling.loss_scale": 1000.0,
                "optimizer.learning_rate": 5e-6,
            },
        ),
        "lenet_pc_short": ("pc", {**LENET, "settling.steps": 20}),
        # NDI solves conv_1's 864 x 864 system by SVD at every step: seconds a step here.
        "lenet_di": ("di", {**LENET, "optimizer.learning_rate": 0.1}),
        # Sigmoid and squared error (PAL's setting); at 0.5 the loss diverged (0.37 to 20 in 6
        # steps).
        "lenet_pal": ("pal", {**LENET, "settling.steps": 5, "optimizer.learning_rate": 0.05}),
    }
)


@functools.cache
def setup(name: str):
    rule, overrides = SETUPS[name]
    overrides = dict(overrides)
    model = overrides.pop("model", "mlp")
    config = tiny_config(rule, model, **{"optimizer.learning_rate": 0.5, **overrides})
    trainer = trainer_lib.Trainer(config)
    batch = jax.tree.map(jnp.asarray, next(trainer.train_batches(0)))
    return trainer, batch


def fresh(name: str):
    trainer, batch = setup(name)
    return trainer, trainer.fresh_state(), batch


def assert_lowers_the_loss_and_measures(name: str, steps: int, measured_keys: set[str]):
    """``steps`` train steps on one batch take its loss below 0.9 of the first; the measure
    step then logs at least ``measured_keys``."""
    trainer, state, batch = fresh(name)
    losses = []
    for _ in range(steps):
        state, measurements = trainer.train_step(state, batch)
        losses.append(float(measurements["train/loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    assert set(trainer.measure_step(state, batch)) >= measured_keys


@pytest.mark.parametrize("name", ["ar", "pc", "di", "pal"])
def test_each_rule_lowers_the_loss_of_a_batch_through_the_trainers_step(name):
    assert_lowers_the_loss_and_measures(
        name,
        12,
        {
            "align/delta_angle/hidden_0",
            "align/delta_angle/hidden_1",
            "align/weight_angle/hidden_1",
            "align/weight_angle/output",
        },
    )


@pytest.mark.parametrize("name", ["lenet_ar_fa", "lenet_pc_short", "lenet_di", "lenet_pal"])
def test_each_rule_that_takes_conv_lowers_the_loss_of_a_batch_on_lenet(name):
    assert_lowers_the_loss_and_measures(
        name,
        6,
        {
            "align/delta_angle/conv_0",
            "align/delta_angle/conv_1",
            "align/error_angle/dense_1",
            "align/weight_angle/conv_1",
            "align/weight_angle/output",
        },
    )


@pytest.mark.parametrize("name", ["ar", "lenet_ar", "lenet_pc"])
def test_settling_through_w_transposed_makes_backprops_step_and_its_error_angles_are_zero(name):
    # AR, and PC with fixed predictions (Whittington & Bogacz), settle to backprop's errors:
    # the step is jax.grad's of the Flax model's own apply, conv and max pooling included.
    trainer, state, batch = fresh(name)
    rate = trainer.config.optimizer.learning_rate * trainer.config.settling.loss_scale
    params = jax.device_get(state["params"])
    image = trainer.ds.normalize(batch["image"]) if batch["image"].dtype == jnp.uint8 else None
    image = batch["image"] if image is None else image

    def loss(p):
        logits = trainer.model.apply({"params": p, "feedback": state["feedback"]}, image)
        return metrics.squared_error(logits, batch["label"]).mean()

    grads = jax.grad(loss)(params)
    expected = jax.tree.map(lambda w, g: w - rate * g, params, grads)
    measured = trainer.measure_step(state, batch)
    new, _ = trainer.train_step(state, batch)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new["params"], params)
    assert min(jax.tree.leaves(moved)) > 0  # every layer's step is checked, none is zero
    hidden = [k for k in params if k != "output"]
    assert len(hidden) == (4 if name.startswith("lenet") else 2)
    for layer in hidden:
        assert float(measured[f"align/delta_angle/{layer}"]) < 0.1
        assert float(measured[f"align/error_angle/{layer}"]) < 0.1
    assert float(measured["align/weight_angle/output"]) < 0.1  # the matrix is W itself


def test_ar_learned_b_gets_ws_step_and_fa_errors_are_measured_off_backprops():
    trainer, state, batch = fresh("ar_fa")
    old = jax.device_get(state)
    measured = trainer.measure_step(state, batch)
    new = jax.device_get(trainer.train_step(state, batch)[0])
    for layer in ("hidden_0", "hidden_1", "output"):
        dw = new["params"][layer]["kernel"] - old["params"][layer]["kernel"]
        db = new["feedback"][layer]["feedback_kernel"] - old["feedback"][layer]["feedback_kernel"]
        assert np.abs(dw).max() > 0
        np.testing.assert_allclose(db, dw, rtol=1e-5, atol=1e-7)  # W, B differ: rounding
    assert float(measured["align/delta_angle/hidden_1"]) > 10.0  # random B: not backprop's
    assert float(measured["align/weight_angle/output"]) > 45.0


def test_pal_state_round_trips_through_a_checkpoint_and_resuming_changes_nothing(tmp_path):
    trainer, state, batch = fresh("pal")
    batches = [jax.tree.map(jnp.asarray, b) for b in itertools.islice(trainer.train_batches(0), 6)]
    start = jax.device_get(state)
    whole = jax.tree.map(jnp.copy, state)  # the step donates its state
    for b in batches:
        whole, _ = trainer.train_step(whole, b)
    half = state
    for b in batches[:3]:
        half, _ = trainer.train_step(half, b)
    with checkpoints.make_manager(str(tmp_path)) as manager:
        checkpoints.save(manager, half)
        manager.wait_until_finished()
        resumed = checkpoints.restore(manager, trainer.abstract_state)
    for x, y in zip(jax.tree.leaves(half), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for b in batches[3:]:
        resumed, _ = trainer.train_step(resumed, b)
    # PAL's noise and filters are in the state and move; B moves by PAL's rule.
    assert np.abs(np.asarray(whole["settling"]["noise"][0])).max() > 0
    moved = (
        whole["feedback"]["output"]["feedback_kernel"]
        - start["feedback"]["output"]["feedback_kernel"]
    )
    assert np.abs(np.asarray(moved)).max() > 0
    assert int(whole["step"]) == int(resumed["step"]) == 6
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pal_on_lenet_trains_through_train_py_and_learns_b_in_the_dense_layers_only(tmp_path):
    # The config as documented (runlocal: 8 steps of 32, 100 time steps each), through the loop.
    config = mnist_settling.get_config("rule=pal,model=lenet,runlocal=True")
    config.num_devices = 1
    measurements = loop.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(float(measurements["test/accuracy"]))
    trainer = trainer_lib.Trainer(config)
    start = jax.device_get(trainer.fresh_state())
    with checkpoints.make_manager(str(tmp_path)) as manager:
        end = jax.device_get(checkpoints.restore(manager, trainer.abstract_state))
    assert int(end["step"]) == config.num_train_steps == 8

    def moved(layer, kind, leaf):
        return np.abs(end[kind][layer][leaf] - start[kind][layer][leaf]).max()

    for layer in ("conv_0", "conv_1", "dense_0", "dense_1", "output"):
        assert moved(layer, "params", "kernel") > 0
    for layer in ("conv_0", "conv_1"):  # B fixed in the conv layers, as the authors'
        assert moved(layer, "feedback", "feedback_kernel") == 0
    for layer in ("dense_0", "dense_1", "output"):
        assert moved(layer, "feedback", "feedback_kernel") > 0


def test_pc_error_weights_live_in_the_state_and_learn():
    trainer, state, batch = fresh("pc")
    before = [np.asarray(e) for e in state["settling"]["error_weights"]]
    assert [e.shape for e in before] == [(12, 12), (8, 8)]
    state, _ = trainer.train_step(state, batch)
    after = state["settling"]["error_weights"]
    assert any(np.abs(np.asarray(e) - b).max() > 0 for e, b in zip(after, before, strict=True))


def test_an_unstable_di_loop_stops_the_run_in_one_line_with_exit_code_2(tmp_path):
    # B = W (feedback bp): W B = W W^T has positive eigenvalues, so the loop diverges.
    config = tiny_config("di", **{"settling.dynamic": True, "settling.feedback": "bp"})
    with pytest.raises(errors.RunError) as raised:
        loop.train_and_evaluate(config, str(tmp_path))
    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith("di: the feedback loop of layer 2 is unstable")
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model": "vit"}, "^rule='ar' with model='vit'; allowed: mlp, lenet, resnet8"),
        ({"settling.feedback": "dfa"}, "^settling.feedback='dfa'; allowed: aa, bp, brsf, fa"),
        ({"settling.order": "random"}, "^settling: ar order 'random'; allowed: sequential"),
        ({"settling.feedback_init": "eye"}, "^settling.feedback_init='eye'; allowed: random"),
    ],
)
def test_bad_settling_entries_are_one_line(overrides, match):
    config = config_helpers.override(tiny_config("ar"), overrides)
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_an_unknown_settling_key_is_named():
    config = tiny_config("pc")
    with config.unlocked():
        config.settling.eta = 0.1
    with pytest.raises(ValueError, match="^settling.eta is no setting of rule='pc'; allowed: "):
        config_lib.validate(config)


def test_pc_error_weights_on_lenet_are_refused_in_one_line():
    config = tiny_config("pc", "lenet", **{"settling.error_weights": True})
    with pytest.raises(ValueError, match="^settling.error_weights=True with model='lenet'; "):
        config_lib.validate(config)


def test_the_config_takes_the_model_and_the_dataset():
    config = mnist_settling.get_config("rule=pc,model=lenet,dataset=fashion_mnist")
    assert (config.model, config.dataset, config.model_kwargs.activation) == (
        "lenet",
        "fashion_mnist",
        "relu",
    )
    config_lib.validate(config)
    with pytest.raises(ValueError, match="^model='resnet8'; allowed: mlp, lenet$"):
        mnist_settling.get_config("rule=ar,model=resnet8")
    with pytest.raises(ValueError, match="^dataset='cifar10'; allowed: mnist, fashion_mnist$"):
        mnist_settling.get_config("rule=ar,dataset=cifar10")


# ResNet-8's shape with 2 blocks of 4 channels (a stem, stage 0 and stage 1, each one basic
# block; stage 1's pads its shortcut), batch norm in train mode, through the Trainer's step.
# Plain SGD at a constant rate, so that one step is the rate times the gradient.
RESNET = {
    "model_kwargs.width": 4,
    "model_kwargs.stage_sizes": (1, 1),
    "batch_size": 8,
    "eval_batch_size": 64,
    "num_train_steps": 6,
    "log_every_steps": 3,
    "checkpoint_every_steps": 3,
    "num_devices": 1,
    "optimizer.momentum": 0.0,
    "optimizer.weight_decay": 0.0,
    "optimizer.schedule": "constant",
}


@functools.cache
def resnet_setup(rule: str, **settling):
    config = fashion_mnist_resnet.get_config(f"rule={rule}")
    overrides = {**RESNET, **{f"settling.{k}": v for k, v in settling.items()}}
    trainer = trainer_lib.Trainer(config_helpers.override(config, overrides))
    return trainer, jax.tree.map(jnp.asarray, next(trainer.train_batches(0)))


@pytest.mark.parametrize("feedback", ["bp", "fa"])
def test_ar_on_a_resnet_makes_the_step_of_the_flax_model_one_state_per_block(feedback):
    # 300 steps of 0.1 from zero settle each block's state to the error at its output; the
    # step is then jax.grad's of the model's own apply in train mode (batch norm's batch
    # statistics included) with its convs by the same rule: under bp backprop's, under fa
    # feedback alignment's (B inside every block); the running statistics are the model's.
    trainer, batch = resnet_setup("ar", steps=300, feedback=feedback)
    state = trainer.fresh_state()
    model = trainer.model.clone(rule=feedback)
    variables = {k: state[k] for k in ("feedback", "batch_stats")}
    image = trainer.ds.normalize(batch["image"]) if batch["image"].dtype == jnp.uint8 else None
    image = batch["image"] if image is None else image

    def loss(params):
        logits, new = model.apply(
            {"params": params, **variables}, image, train=True, mutable=["batch_stats"]
        )
        return metrics.get_loss(trainer.config.loss)(logits, batch["label"]).mean(), new

    grads, new_stats = jax.grad(loss, has_aux=True)(state["params"])
    rate = trainer.config.optimizer.learning_rate
    expected = jax.tree.map(lambda w, g: w - rate * g, state["params"], grads)
    measured = trainer.measure_step(state, batch)
    new, measurements = trainer.train_step(jax.tree.map(jnp.copy, state), batch)
    assert set(new["params"]) == {"conv_init", "bn_init", "stage0_block0", "stage1_block0",
                                  "output"}  # fmt: skip
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new["params"], state["params"])
    assert min(jax.tree.leaves(moved)) > 0  # every conv, norm and dense moved, each checked
    for a, b in zip(
        jax.tree.leaves(new["batch_stats"]), jax.tree.leaves(new_stats["batch_stats"]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(measurements["train/settling_steps"]) == 300
    nodes = ("stem", "stage0_block0", "stage1_block0")
    if feedback == "bp":
        for node in nodes:
            assert float(measured[f"align/error_angle/{node}"]) < 0.1
        assert float(measured["align/weight_angle/stage1_block0/conv_1"]) < 0.1  # W itself
    else:  # B's errors, measured against backprop's
        assert float(measured["align/error_angle/stem"]) > 10.0
        assert float(measured["align/weight_angle/stage1_block0/conv_1"]) > 45.0


@pytest.mark.parametrize(
    "rule, settling", [("ar", {"steps": 300, "feedback": "fa"}), ("pc", {"steps": 40})]
)
def test_settling_rules_lower_the_loss_of_a_resnet_through_the_trainers_step(rule, settling):
    trainer, batch = resnet_setup(rule, **settling)
    state = jax.device_get(trainer.fresh_state())
    losses = []
    for _ in range(6):
        state, measurements = trainer.train_step(state, batch)
        losses.append(float(measurements["train/loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    measured = trainer.measure_step(state, batch)
    assert float(measured["align/error_angle/stage0_block0"]) >= 0
    if settling.get("feedback") == "fa":  # B takes W's steps (no momentum, no decay)
        state = jax.device_get(state)  # the step donates its input
        new = jax.device_get(trainer.train_step(jax.tree.map(jnp.asarray, state), batch)[0])
        for path in (("stage0_block0", "conv_1"), ("stage1_block0", "conv_0"), ("output",)):
            dw = functools.reduce(dict.get, path, new["params"])["kernel"]
            dw = dw - functools.reduce(dict.get, path, state["params"])["kernel"]
            db = functools.reduce(dict.get, path, new["feedback"])["feedback_kernel"]
            db = db - functools.reduce(dict.get, path, state["feedback"])["feedback_kernel"]
            assert np.abs(dw).max() > 0
            np.testing.assert_allclose(db, dw, rtol=1e-4, atol=1e-7)
        assert float(measured["align/weight_angle/stage1_block0/conv_0"]) > 45.0
        assert float(measured["align/error_angle/stage0_block0"]) > 10.0  # B's, not W^T's


@pytest.mark.parametrize(
    "rule, overrides, match",
    [
        ("di", {}, "^rule='di' with model='resnet8'; allowed on a residual net: ar, pc \\(its"),
        ("pal", {}, "^rule='pal' with model='resnet8'; allowed on a residual net: ar, pc"),
        ("ar", {"settling.derivative": False}, "^settling.derivative=False with model='resnet8'"),
        ("pc", {"settling.fixed_predictions": False}, "^settling.fixed_predictions=False with "),
        ("pc", {"settling.error_weights": True}, "^settling.error_weights=True with model='resn"),
    ],
)
def test_what_a_settling_rule_cannot_do_on_a_resnet_is_one_line(rule, overrides, match):
    config = config_helpers.override(fashion_mnist_resnet.get_config(f"rule={rule}"), overrides)
    with pytest.raises(ValueError, match=match) as raised:
        config_lib.validate(config)
    assert "\n" not in str(raised.value)
