"""Convnets learn under every rule: LeNet and a tiny ResNet memorize one fixed batch of mock
CIFAR-10 through the real train step (and mirror step); cifar10_lenet runs end to end.

fa and dfa are tested on the ResNet only: on mock CIFAR-10 (independent random pixels) LeNet,
which has no batch norm, diverges under them even at small rates (measured: fa at 3e-3 and dfa
at 3e-4 reach losses of 1e6 and 1e2 from 5 within 60 steps; on real MNIST they learn at 1e-3 and
1e-4). wm is tested on LeNet only: the mirror's Hebbian product sums over a conv's output
positions, so one mirror rate cannot keep B near W's scale in both the 32x32 and the 16x16
stages of a ResNet (the tiny ResNet's loss explodes), while LeNet's can be balanced."""

import os
import sys

import jax
import numpy as np
import pytest

from wtfree import logs, loop, sharding
from wtfree import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import cifar10_lenet  # noqa: E402

BATCH = 16
STEPS = 40


pytestmark = pytest.mark.usefixtures("rbg_prng_and_mock_data")


def small_config(rule: str, model: str = "lenet", **model_kwargs):
    config = cifar10_lenet.get_config(f"rule={rule}")
    config.model = model
    if model_kwargs:
        config.model_kwargs = model_kwargs
    config.batch_size = BATCH
    config.num_devices = 1
    config.optimizer.learning_rate = 0.01
    config.optimizer.weight_decay = 0.0
    config.mirror.batch_size = 8
    config.mirror.pretrain_batches = 5
    config.mirror.decay = 0.1
    config.mirror.learning_rate = 0.1 / (4 * 8)  # dense B -> W / 4, as configs/mnist_lenet.py
    return config


def memorize(config, steps: int = STEPS) -> tuple[float, float]:
    """(first, last) training loss of ``steps`` steps on one fixed batch."""
    trainer = trainer_lib.Trainer(config)
    batch = sharding.put_batch(next(iter(trainer.train_batches(0))), trainer.mesh)
    state = trainer.fresh_state()
    if trainer.uses_mirror:
        state = trainer.mirror_pretrain(state)
    losses = []
    for step in range(steps):
        state, measurements = trainer.train_step(state, batch)
        if trainer.uses_mirror:
            state = trainer.mirror_step(state, jax.random.PRNGKey(step))
        losses.append(float(measurements["train/loss"]))
    assert np.all(np.isfinite(losses)), losses
    return losses[0], losses[-1]


@pytest.mark.parametrize("rule", ["bp", "usf", "kp", "wm"])
def test_lenet_memorizes_one_batch(rule):
    config = small_config(rule)
    steps = STEPS
    if rule == "wm":
        # Until the mirror has aligned B, wm learns as fa does, which diverges here (see above).
        config.mirror.pretrain_batches = 20
        config.optimizer.learning_rate = 0.003
        steps = 60
    first, last = memorize(config, steps)
    assert last < 0.7 * first, (first, last)


# dfa's stable window is narrow: its direct B (std 1/sqrt(classes)) sends every unit an error of
# the output's size, far above backprop's, so 0.01 explodes and 0.001 barely moves (measured);
# at 0.005 the loss falls to 0.73 of its start.
@pytest.mark.parametrize(
    "rule, learning_rate, bound",
    [("bp", 0.1, 0.7), ("fa", 0.1, 0.7), ("kp", 0.1, 0.7), ("dfa", 0.005, 0.8)],
)
def test_tiny_resnet_memorizes_one_batch(rule, learning_rate, bound):
    # ResNet-20's structure (cifar stem, option A shortcuts, batch norm), one block per stage.
    config = small_config(rule, "resnet20", stage_sizes=(1, 1), width=4)
    config.optimizer.learning_rate = learning_rate
    first, last = memorize(config, steps=60)
    assert last < bound * first, (first, last)


def test_cifar10_lenet_runs_end_to_end_with_augmentation(tmp_path):
    config = cifar10_lenet.get_config("rule=usf,runlocal=True")
    config.num_devices = 1
    config.eval_batch_size = 32
    assert config.augment is False  # biotorch's LeNet setting; the flag must still work
    config.augment = True
    final = loop.train_and_evaluate(config, str(tmp_path))
    lines = logs.read_metrics(str(tmp_path))
    assert max(line["step"] for line in lines) == config.num_train_steps
    # eval_steps=2 batches of 32: the accuracy counts 64 examples, as logged.
    hits = final["test/accuracy"] * 64
    assert hits == pytest.approx(round(hits), abs=1e-4) and np.isfinite(final["test/loss"])
    assert {k: lines[-1][k] for k in final} == final
