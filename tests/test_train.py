"""End to end on random in-memory data: every rule trains, logs, resumes and evaluates."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import config_helpers, fake_data
from wtfree import checkpoints, logs, loop, metrics, rules
from wtfree import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mnist_mlp  # noqa: E402


def tiny_config(rule: str, **overrides):
    config = mnist_mlp.get_config(f"rule={rule}")
    config.model_kwargs.widths = (16,)
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = 6
    config.log_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_devices = 1
    config.mirror.batch_size = 8
    config.mirror.pretrain_batches = 2
    config.mirror.learning_rate = 0.1
    return config_helpers.override(config, overrides)


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=256):
        yield


# The error at the logits is the same under every rule, and the input layer's B sends no error
# anywhere: neither is measured.
DELTA_LAYERS = ("hidden_0",)
WEIGHT_LAYERS = ("output",)


# The settling rules (their own step and measurements) are tested in test_settling_train.py.
ONE_PASS_RULES = sorted(r for r, rule in rules.RULES.items() if rule.feedback != rules.SETTLING)


@pytest.mark.parametrize("rule", ONE_PASS_RULES)
def test_each_rule_trains_and_writes_every_metric(rule, tmp_path):
    final = loop.train_and_evaluate(tiny_config(rule), str(tmp_path))
    lines = logs.read_metrics(str(tmp_path))
    keys = set().union(*lines)
    expected = {"step", "epoch", "train/loss", "train/accuracy", "test/loss", "test/accuracy"}
    expected |= {f"align/delta_angle/{layer}" for layer in DELTA_LAYERS}
    if rules.get(rule).matrix is not None:  # DFA's B is not shaped like any W
        expected |= {
            f"align/{k}/{layer}"
            for k in ("weight_angle", "weight_cosine", "norm_ratio")
            for layer in WEIGHT_LAYERS
        }
    assert expected <= keys, expected - keys
    assert {k for k in keys if k.startswith("align/")} <= expected
    last_train = [line for line in lines if "train/loss" in line][-1]
    assert last_train["step"] == 6 and np.isfinite(last_train["train/loss"])
    # The whole mock test set (256 examples) was counted once, and logged as returned.
    hits = final["test/accuracy"] * 256
    assert hits == pytest.approx(round(hits), abs=1e-4)
    assert {k: lines[-1][k] for k in final} == final
    assert os.path.exists(tmp_path / "config.json")
    assert any(
        name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard")
    )
    # Backprop's own error is backprop's: delta angles 0 (up to float noise).
    if rule == "bp":
        assert all(last_train[f"align/delta_angle/{layer}"] < 0.1 for layer in DELTA_LAYERS)
    elif rule != "dfa":
        assert last_train["align/delta_angle/hidden_0"] > 1.0


def _final_state(workdir, config):
    trainer = trainer_lib.Trainer(config)
    with checkpoints.make_manager(workdir) as manager:
        return checkpoints.restore(manager, trainer.abstract_state)


def interrupt_at_step_6(monkeypatch, config, workdir) -> None:
    """Runs ``config`` in ``workdir`` until an exception stops it while logging step 6, as a
    preemption between checkpoints would."""
    write = logs.MetricWriter.write

    def interrupt(self, step, epoch, values):
        if step == 6:
            raise KeyboardInterrupt("simulated preemption")
        return write(self, step, epoch, values)

    monkeypatch.setattr(logs.MetricWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(config, workdir)
    monkeypatch.setattr(logs.MetricWriter, "write", write)


@pytest.mark.parametrize("rule", ["wm", "brsf"])
def test_resume_after_interruption_ends_where_an_uninterrupted_run_does(
    rule, tmp_path, monkeypatch
):
    config = tiny_config(rule, num_train_steps=12, checkpoint_every_steps=4, log_every_steps=2)
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    loop.train_and_evaluate(config, whole)

    interrupt_at_step_6(monkeypatch, config, broken)
    with checkpoints.make_manager(broken) as manager:
        assert manager.latest_step() == 4
    loop.train_and_evaluate(config, broken)

    a, b = _final_state(whole, config), _final_state(broken, config)
    assert int(a["step"]) == int(b["step"]) == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluate_checkpoint_reproduces_the_logged_test_accuracy(tmp_path):
    config = tiny_config("kp")
    final = loop.train_and_evaluate(config, str(tmp_path))
    result = loop.evaluate_checkpoint(str(tmp_path))
    assert result["step"] == 6
    assert result["test/accuracy"] == pytest.approx(final["test/accuracy"], abs=1e-7)
    assert result["test/loss"] == pytest.approx(final["test/loss"], rel=1e-6)
    with open(tmp_path / "eval_6.json") as f:
        assert json.load(f)["test/accuracy"] == result["test/accuracy"]


def test_mirror_step_moves_b_towards_w():
    config = tiny_config(
        "wm", **{"mirror.learning_rate": 0.01, "mirror.batch_size": 64, "mirror.noise_std": 1.0}
    )
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()

    def angle(s, layer="output"):
        w, b = s["params"][layer]["kernel"], s["feedback"][layer]["feedback_kernel"]
        return float(metrics.angle(w, b))

    before = angle(state)
    input_b = np.asarray(state["feedback"]["hidden_0"]["feedback_kernel"])
    for i in range(20):
        state = trainer.mirror_step(state, jax.random.PRNGKey(i))
    assert before > 80 and angle(state) < before - 20
    # The input layer's B sends no error anywhere: it is not mirrored.
    np.testing.assert_array_equal(state["feedback"]["hidden_0"]["feedback_kernel"], input_b)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config=configs/mnist_mlp.py:rule=xx"], "unknown rule 'xx'; known rules: aa, ar, bp"),
        (["--config=configs/mnist_mlp.py", "--config.optimizr.lr=1"], "unknown config key"),
        (["--config=configs/mnist_mlp.py", "--config.no_such_key=1"], "unknown config key"),
        (
            ["--config=configs/mnist_mlp.py", "--config.model=xx"],
            "unknown model 'xx'; known models",
        ),
        (["--config=configs/mnist_mlp.py", "--config.dataset=xx"], "unknown dataset 'xx'"),
        (["--config=configs/mnist_mlp.py:rul=kp"], "bad config argument 'rul=kp'"),
        (
            ["--config=configs/mnist_mlp.py:rule=ia", "--config.alignment.input=gaussian"],
            "alignment.input='gaussian'; allowed: activations, normal, uniform",
        ),
    ],
)
def test_bad_configs_exit_2_with_one_line(args, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", f"--workdir={tmp_path}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_eval_steps_evaluates_the_first_batches_only():
    config = tiny_config("fa", eval_steps=1)
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    result = trainer.evaluate(state)
    first = next(trainer.ds.eval_batches(split="test", global_batch_size=config.eval_batch_size))
    variables = {k: state[k] for k in ("params", "feedback")}
    logits = trainer.model.apply(variables, first["image"])
    expected = float(np.mean(np.argmax(logits, -1) == first["label"]))
    assert result["test/accuracy"] == pytest.approx(expected, abs=1e-6)
    assert trainer.ds.num_examples("test") > config.eval_batch_size
