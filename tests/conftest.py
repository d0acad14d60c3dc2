"""Test setup: CPU only, several simulated devices, fixed seeds."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import fake_data  # noqa: E402

# Several CPU devices so that sharding code paths are exercised; single-device tests ignore them.
jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture
def rbg_prng_and_mock_data():
    """Conv-net tests: 64 random examples of whatever image dataset is asked for (registered in
    memory, `tests/fake_data.py`), and the rbg PRNG."""
    # threefry's samplers take seconds per shape to compile on CPU; rbg's do not.
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        with fake_data.synthetic_images(num_examples=64):
            yield
    finally:
        jax.config.update("jax_default_prng_impl", previous)
