"""Weight mirrors stay stable at backprop's own rate on a residual net (docs/weight_mirrors.md)."""

import os
import sys

import numpy as np
import pytest

from wtfree import sharding, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist_resnet  # noqa: E402

pytestmark = pytest.mark.usefixtures("rbg_prng_and_mock_data")


def _config(rule: str, learning_rate: float):
    # configs/fashion_mnist_resnet.py, its mirror settings untouched, on a narrower net.
    config = fashion_mnist_resnet.get_config(f"rule={rule}")
    config.model_kwargs.width = 4
    config.batch_size = 16
    config.num_devices = 1
    config.optimizer.learning_rate = learning_rate
    config.optimizer.schedule = "constant"
    config.mirror.batch_size = 32
    config.mirror.pretrain_batches = 30
    config.mirror.learning_rate = config.mirror.decay / 32  # B's fixed point stays W
    return config


def _memorize(config, steps: int) -> list[float]:
    """Training losses of ``steps`` steps on one fixed batch, a mirror batch after each."""
    trainer = train_lib.Trainer(config)
    batch = sharding.put_batch(next(iter(trainer.train_batches(0))), trainer.mesh)
    state = trainer.fresh_state()
    step = trainer.train_step
    if trainer.uses_mirror:
        state = trainer.mirror_pretrain(state)
        step = trainer.train_mirror_step
    losses = []
    for _ in range(steps):
        state, measurements = step(state, batch)
        losses.append(float(measurements["train/loss"]))
    return losses


@pytest.mark.parametrize("learning_rate", [0.1, 0.033])
def test_wm_on_a_residual_net_at_backprops_rate_stays_finite_and_learns(learning_rate):
    losses = _memorize(_config("wm", learning_rate), steps=40)
    assert np.all(np.isfinite(losses)), losses
    assert max(losses) < 3 * losses[0], losses  # no blow-up on the way
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_the_config_mirror_lags_w_by_at_most_ten_steps():
    """The lag (1 / decay steps between mirror batches) is what blew LeNet up at 30-100."""
    m = fashion_mnist_resnet.get_config("rule=wm").mirror
    assert m.every / m.decay <= 10
    assert m.learning_rate * m.batch_size * m.noise_std**2 == pytest.approx(m.decay)
