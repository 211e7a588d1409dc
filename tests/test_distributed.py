"""Multi-process start-up decisions (the 2-process run itself is tests/test_multiprocess.py)."""
from absl import logging
import jax
import pytest

from coarse3d_jax import distributed

_ENV = ("SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


@pytest.fixture
def clean_env(monkeypatch):
  for key in _ENV:
    monkeypatch.delenv(key, raising=False)
  return monkeypatch


@pytest.mark.parametrize("key,value,multi", [
    (None, None, False), ("SLURM_NTASKS", "1", False), ("SLURM_NTASKS", "8", True),
    ("OMPI_COMM_WORLD_SIZE", "2", True), ("TPU_WORKER_HOSTNAMES", "h0,h1", True),
    ("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234", True)])
def test_cluster_environments_are_recognized(clean_env, key, value, multi):
  if key:
    clean_env.setenv(key, value)
  assert distributed.is_multi_process_env() == multi


@pytest.mark.parametrize("kwargs", [dict(num_processes=2), dict(process_id=1),
                                    dict(coordinator_address="h:1", num_processes=2)])
def test_partial_launch_flags_are_refused(clean_env, kwargs):
  with pytest.raises(distributed.LaunchError, match="go together"):
    distributed.initialize(**kwargs)


def test_only_process_zero_logs_info(clean_env):
  before = logging.get_verbosity()
  try:
    clean_env.setattr(jax, "process_index", lambda: 1)
    distributed.initialize()  # Single process environment: no jax.distributed call.
    assert logging.get_verbosity() == logging.WARNING
    logging.set_verbosity(logging.INFO)
    clean_env.setattr(jax, "process_index", lambda: 0)
    distributed.initialize()
    assert logging.get_verbosity() == logging.INFO
  finally:
    logging.set_verbosity(before)
