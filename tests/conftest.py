"""Shared test setup: an 8-device fake CPU mesh, JAX's persistent compilation cache, tiny models and inputs."""

import os

# Must precede the first jax import (CI sets it too).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/staged_vlm_jax/jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still run in CI; skip locally with -m 'not slow')")


@pytest.fixture(scope="session")
def device_count():
    return jax.device_count()
