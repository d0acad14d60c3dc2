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

from tests import fake_data
from wtfree import checkpoints, config_lib, errors, loop, metrics
from wtfree import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mnist_settling  # noqa: E402


def tiny_config(rule: str, **overrides):
    config = mnist_settling.get_config(f"rule={rule}")
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
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return config


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


@functools.cache
def setup(name: str):
    rule, overrides = SETUPS[name]
    config = tiny_config(rule, **{"optimizer.learning_rate": 0.5, **overrides})
    trainer = trainer_lib.Trainer(config)
    batch = jax.tree.map(jnp.asarray, next(trainer.train_batches(0)))
    return trainer, batch


def fresh(name: str):
    trainer, batch = setup(name)
    return trainer, trainer.fresh_state(), batch


@pytest.mark.parametrize("name", ["ar", "pc", "di", "pal"])
def test_each_rule_lowers_the_loss_of_a_batch_through_the_trainers_step(name):
    trainer, state, batch = fresh(name)
    losses = []
    for _ in range(12):
        state, measurements = trainer.train_step(state, batch)
        losses.append(float(measurements["train/loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    measured = trainer.measure_step(state, batch)
    assert set(measured) >= {
        "align/delta_angle/hidden_0",
        "align/delta_angle/hidden_1",
        "align/weight_angle/hidden_1",
        "align/weight_angle/output",
    }


def test_ar_through_w_transposed_makes_backprops_step_and_its_error_angles_are_zero():
    trainer, state, batch = fresh("ar")
    params = jax.device_get(state["params"])
    image = trainer.ds.normalize(batch["image"]) if batch["image"].dtype == jnp.uint8 else None
    image = batch["image"] if image is None else image

    def loss(p):
        logits = trainer.model.apply({"params": p, "feedback": state["feedback"]}, image)
        return metrics.squared_error(logits, batch["label"]).mean()

    expected = jax.tree.map(lambda w, g: w - 0.5 * g, params, jax.grad(loss)(params))
    measured = trainer.measure_step(state, batch)
    new, _ = trainer.train_step(state, batch)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for layer in ("hidden_0", "hidden_1"):
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
        ({"model": "lenet"}, "^rule='ar' with model='lenet'; allowed: mlp"),
        ({"settling.feedback": "dfa"}, "^settling.feedback='dfa'; allowed: aa, bp, brsf, fa"),
        ({"settling.order": "random"}, "^settling: ar order 'random'; allowed: sequential"),
        ({"settling.feedback_init": "eye"}, "^settling.feedback_init='eye'; allowed: random"),
    ],
)
def test_bad_settling_entries_are_one_line(overrides, match):
    config = tiny_config("ar")
    with config.unlocked():
        for key, value in overrides.items():
            *path, last = key.split(".")
            target = config
            for p in path:
                target = target[p]
            target[last] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_an_unknown_settling_key_is_named():
    config = tiny_config("pc")
    with config.unlocked():
        config.settling.eta = 0.1
    with pytest.raises(ValueError, match="^settling.eta is no setting of rule='pc'; allowed: "):
        config_lib.validate(config)
