"""Shared test setup.

Four simulated CPU devices are requested before jax is imported anywhere, so the
multi-device tests can compare a 4-device mesh with a 1-device mesh in one process.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
  """The real SemanticKITTI sample (two scans of sequence 00); skips when unset."""
  path = os.environ.get("COARSE3D_SAMPLE_DIR")
  if not path:
    pytest.skip("COARSE3D_SAMPLE_DIR is not set")
  path = pathlib.Path(path)
  if not (path / "sequences" / "00" / "velodyne").is_dir():
    pytest.skip(f"COARSE3D_SAMPLE_DIR={path} holds no sequences/00/velodyne")
  return path


def pytest_configure(config):
  """Reuse compiled programs across tests (and test runs) that build identical computations."""
  del config
  import jax  # pylint: disable=g-import-not-at-top
  cache = os.environ.get("COARSE3D_TEST_JAX_CACHE",
                         os.path.join(os.path.dirname(__file__), "..", ".jax_test_cache"))
  os.environ["COARSE3D_TEST_JAX_CACHE"] = os.path.abspath(cache)  # For subprocesses too.
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
