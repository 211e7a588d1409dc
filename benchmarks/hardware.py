"""What a benchmark ran on: the CPU model (or the accelerator kind), cores and load."""
import os
import platform


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def describe(jax_module=None) -> str:
  """'CPU <model>, N cores, load L' or '<accelerator kind> xN' when jax runs on one."""
  if jax_module is not None:
    dev = jax_module.devices()[0]
    if dev.platform != "cpu":
      return f"{dev.device_kind} x{jax_module.local_device_count()}"
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return f"CPU {cpu_name()}, {os.cpu_count()} cores, load average {load:.1f} at start"
