"""Test setup: CPU only, several simulated devices, fixed seeds."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")

import jax  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

# Several CPU devices so that sharding code paths are exercised; single-device tests ignore them.
jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture
def rbg_prng_and_mock_data():
    """Conv-net tests: 64 mock examples of whatever dataset is asked for, and the rbg PRNG."""
    # threefry's samplers take seconds per shape to compile on CPU; rbg's do not.
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
            yield
    finally:
        jax.config.update("jax_default_prng_impl", previous)
