"""B's error at the mirror's fixed point per noise, and the mirror batch sized from it."""

import math

import jax
import jax.numpy as jnp
import pytest

from wtfree import rules


@pytest.mark.parametrize("noise", ["normal", "rademacher"])
def test_mirror_error_matches_a_simulated_mirror(noise):
    """B <- (1 - decay) B + decay S W with S from n noise vectors: the mean of ||B - W||^2 /
    ||W||^2 over the steps is the closed form, (d + 1) / n for normal noise and (d - 1) / n for
    Rademacher (d = 8 tells them apart by 30%)."""
    d, m, batch, decay, steps, burn_in = 8, 6, 16, 0.5, 4000, 40
    w = jax.random.normal(jax.random.PRNGKey(0), (d, m))

    def step(b, rng):
        b = rules.mirror_update(
            jnp.dot, w, b, rng, (batch, d), learning_rate=decay / batch, decay=decay, noise=noise
        )
        return b, jnp.sum(jnp.square(b - w)) / jnp.sum(jnp.square(w))

    _, errors = jax.lax.scan(step, w, jax.random.split(jax.random.PRNGKey(1), steps))
    expected = rules.mirror_error(decay, d, batch, noise=noise)
    assert expected == pytest.approx(
        decay / (2 - decay) * (d + (1 if noise == "normal" else -1)) / batch
    )
    assert float(jnp.mean(errors[burn_in:])) == pytest.approx(expected, rel=0.06)


@pytest.mark.parametrize("noise", rules.MIRROR_NOISES)
@pytest.mark.parametrize("fan_in, positions", [(256, 1), (120, 1), (150, 64), (1, 1)])
def test_mirror_batch_size_is_the_fewest_vectors_within_the_error(noise, fan_in, positions):
    error = rules.mirror_error(0.5, 256, 640)  # LeNet's dense_0 at its mirror: 20 degrees
    assert math.degrees(math.atan(math.sqrt(error))) == pytest.approx(20.1, abs=0.05)
    n = rules.mirror_batch_size(0.5, fan_in, error, positions=positions, noise=noise)
    assert n >= 1
    assert rules.mirror_error(0.5, fan_in, n, positions=positions, noise=noise) <= error
    if n > 1:
        assert rules.mirror_error(0.5, fan_in, n - 1, positions=positions, noise=noise) > error


@pytest.mark.parametrize("noise", ["normal", "rademacher"])
def test_mirror_error_of_a_valid_conv_averages_over_its_positions(noise):
    """LeNet's conv_1 (5x5x6 -> 16 on 12x12, VALID: P = 64 positions): its patches overlap, yet
    the simulated error is the closed form with n P vectors, so 6 noise images suffice where a
    dense layer of the same d = 150 would need 377."""
    batch, decay, steps, burn_in = 6, 0.5, 600, 40
    w = jax.random.normal(jax.random.PRNGKey(0), (5, 5, 6, 16))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def step(b, rng):
        shape = (batch, 12, 12, 6)
        b = rules.mirror_update(
            conv, w, b, rng, shape, learning_rate=decay / batch, decay=decay, noise=noise
        )
        return b, jnp.sum(jnp.square(b - w)) / jnp.sum(jnp.square(w))

    _, errors = jax.lax.scan(step, w, jax.random.split(jax.random.PRNGKey(1), steps))
    expected = rules.mirror_error(decay, 150, batch, positions=64, noise=noise)
    assert float(jnp.mean(errors[burn_in:])) == pytest.approx(expected, rel=0.06)
