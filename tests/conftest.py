"""Test setup: CPU only, several simulated devices, fixed seeds."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")

import jax  # noqa: E402

# Several CPU devices so that sharding code paths are exercised; single-device tests ignore them.
jax.config.update("jax_num_cpu_devices", 4)
