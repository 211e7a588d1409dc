"""Multi-process start-up: jax.distributed on GPU clusters, TPU pods and CPU (gloo)."""
import os

from absl import logging
import jax

# Environment variables that mean "this process is one of several" to jax.distributed's
# auto-detection (SLURM, Open MPI, TPU pod slices, an explicit coordinator).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS")


class LaunchError(ValueError):
  """Inconsistent multi-process launch flags."""


def _slurm_multi_task() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def is_multi_process_env() -> bool:
  return _slurm_multi_task() or any(os.environ.get(k) for k in _CLUSTER_ENV)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Calls jax.distributed.initialize when several processes take part; else does nothing.

  Explicit arguments win; otherwise the cluster environment (SLURM, TPU pod, Open MPI) is
  auto-detected by JAX. CPU processes exchange collectives through gloo. Only process 0 logs
  at INFO level.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise LaunchError("--coordinator_address, --num_processes and --process_id go together: "
                      "give all three (or none, to use the cluster's environment)")
  explicit = all(given)
  if explicit or is_multi_process_env():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
      kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                    process_id=process_id)
    jax.distributed.initialize(**kwargs)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
