"""Weight mirrors stay stable at backprop's own rate on a residual net and on LeNet, and B's noise
has its closed form (docs/weight_mirrors.md)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wtfree import rules, sharding
from wtfree import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist_resnet, mnist_lenet  # noqa: E402


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


def _memorize(config, steps: int, one_batch: bool = True) -> list[float]:
    """Training losses of ``steps`` steps on one fixed batch (or, ``one_batch=False``, on the
    training set's batches in turn), a mirror batch after each."""
    trainer = trainer_lib.Trainer(config)
    batches = trainer.train_batches(0)
    batch = sharding.put_batch(next(iter(batches)), trainer.mesh)
    state = trainer.fresh_state()
    step = trainer.train_step
    if trainer.uses_mirror:
        state = trainer.mirror_pretrain(state)
        step = trainer.train_mirror_step
    losses = []
    for _ in range(steps):
        if not one_batch:
            batch = sharding.put_batch(next(batches), trainer.mesh)
        state, measurements = step(state, batch)
        losses.append(float(measurements["train/loss"]))
    return losses


@pytest.mark.usefixtures("rbg_prng_and_mock_data")
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


@pytest.mark.parametrize("decay, batch", [(0.1, 128), (0.5, 32), (0.5, 128)])
def test_mirror_noise_in_b_matches_its_closed_form(decay, batch):
    r"""B's error at the mirror's fixed point: with S = X^T X / n for n Gaussian noise vectors of
    size d, E[(S - I)^2] = (d + 1) / n I, and B <- (1 - decay) B + decay S W averages it over the
    lag, so E||B - W||^2 = decay / (2 - decay) * (d + 1) / n * ||W||^2. This is the noise the
    LeNet mirror batch is sized by (configs/mnist_lenet.py)."""
    d, m, steps, burn_in = 64, 16, 1200, 60
    w = jax.random.normal(jax.random.PRNGKey(0), (d, m))

    def step(b, rng):
        b = rules.mirror_update(
            jnp.dot, w, b, rng, (batch, d), learning_rate=decay / batch, decay=decay
        )
        return b, jnp.sum(jnp.square(b - w)) / jnp.sum(jnp.square(w))

    _, errors = jax.lax.scan(step, w, jax.random.split(jax.random.PRNGKey(1), steps))
    expected = decay / (2 - decay) * (d + 1) / batch
    assert float(jnp.mean(errors[burn_in:])) == pytest.approx(expected, rel=0.05)


def _lenet_losses(rule: str, mirror: dict | None = None) -> list[float]:
    """configs/mnist_lenet.py (LeNet, no batch norm), its mirror untouched unless ``mirror``
    says, memorizing one batch of 32 mock images at 5x backprop's learning rate (0.05)."""
    config = mnist_lenet.get_config(f"rule={rule}")
    config.batch_size = 32
    config.num_devices = 1
    config.optimizer.learning_rate = 0.05
    for key, value in (mirror or {}).items():
        config.mirror[key] = value
    m = config.mirror
    m.learning_rate = m.decay / (m.batch_size * m.noise_std**2)  # B's fixed point stays W
    return _memorize(config, steps=60)


def _memorized(losses: list[float]) -> bool:
    return bool(
        np.all(np.isfinite(losses))
        and max(losses) < 2 * losses[0]  # no blow-up on the way
        and np.mean(losses[-5:]) < 0.05
    )


@pytest.mark.usefixtures("rbg_prng_and_mock_data")
def test_at_5x_backprops_rate_the_lenet_mirror_blows_up_where_backprop_memorizes():
    """Measured, not wished (docs/weight_mirrors.md, finding 8): on TFDS's mock images the
    config's mirror (lag 2) memorized this batch, but on 4 of 4 draws of random images
    (tests/fake_data, seeds 0-3) it blows up (peaks 21.9, 5.1, 16.5, 7.9 from about 2.5) where
    backprop memorizes. A change that makes it memorize here should update that finding."""
    assert _memorized(_lenet_losses("bp"))
    losses = _lenet_losses("wm")
    assert max(losses) > 2 * losses[0], losses


@pytest.mark.usefixtures("rbg_prng_and_mock_data")
def test_a_mirror_lagging_ten_steps_blows_up_too():
    """Decay 0.1 with 128 noise vectors (lag 10, B's noise that of the config's mirror) blows
    up there as well (on the mock draw: the loss reached 8.6 from 2.5, then every unit died)."""
    mirror = dict(decay=0.1, batch_size=128, pretrain_batches=100)
    assert not _memorized(_lenet_losses("wm", mirror))


def test_the_lenet_mirror_lags_w_by_at_most_two_steps_at_the_noise_of_decay_01_with_128():
    """Lag every / decay <= 2, and B's noise, decay / ((2 - decay) n) (the closed form tested
    above), no larger than 1.3x (in variance) that of decay 0.1 with 128 noise vectors, which
    alone is harmless on LeNet; 128 at decay 0.5 (3.2x) blew it up."""
    m = mnist_lenet.get_config("rule=wm").mirror
    assert m.every / m.decay <= 2
    noise = m.decay / ((2 - m.decay) * m.batch_size * m.noise_std**2)
    assert noise <= 1.3 * 0.1 / (1.9 * 128)
    assert m.learning_rate * m.batch_size * m.noise_std**2 == pytest.approx(m.decay)
