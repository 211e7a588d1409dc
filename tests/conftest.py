"""Shared test setup, in the environment so that the tests' subprocesses inherit it.

Four simulated CPU devices are requested before jax is imported anywhere, so the
multi-device tests can compare a 4-device mesh with a 1-device mesh in one process.
Compile time dominates the suite, so programs are compiled without LLVM's optimizer and with
XLA:CPU's older loop emitters (same arithmetic up to the last bit of some square roots; the tiny
test shapes run as fast; a train step compiles in ~half the time), and cached on disk across
tests, subprocesses and runs that build identical computations. `make demo` and the
benchmarks run XLA's defaults.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(os.environ.get(
    "COARSE3D_TEST_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_test_cache")))
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

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


# The longest single test starts first, so that the two test processes (make test: pytest-xdist,
# work stealing) never wait on it at the end of the run. Whole modules move, so module fixtures
# are still built once.
_FIRST_MODULES = ("test_multiprocess.py",)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _FIRST_MODULES)  # Stable: order kept.
