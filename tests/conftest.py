"""Test setup: CPU only, several simulated devices, fixed seeds, one compilation cache."""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")
# One JAX compilation cache for the whole run, read by every test, by pytest-xdist's workers
# (they inherit this environment) and by the train.py subprocesses the tests start: most tests
# compile the same tiny programs again. Removed at the end by the process that made it.
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="wtfree-jax-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import fake_data  # noqa: E402

# Several CPU devices so that sharding code paths are exercised; single-device tests ignore them.
jax.config.update("jax_num_cpu_devices", 4)


def pytest_unconfigure(config):
    del config
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)


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
