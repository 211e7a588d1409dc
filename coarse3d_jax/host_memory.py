"""glibc malloc settings under which XLA:CPU steps stop paying for fresh pages.

XLA:CPU allocates an executable's temporary buffers on every call: hundreds of MB per SalsaNext
train step. With glibc's defaults those come from fresh mmaps, or from per-thread heaps that
glibc shrinks with MADV_DONTNEED when they are freed, so every step touches newly mapped pages:
~290,000 page faults per 64x512 batch-2 train step, each faulted page zeroed by the kernel,
~15-20% of the step on 2 cores (README, Benchmarks). These tunables keep freed memory in one
heap that is never trimmed (no page faults after the first step) and back it with transparent
huge pages. The cost: the process keeps its peak heap until it exits, as a training job does
anyway.

glibc reads GLIBC_TUNABLES once, when a process starts, so the entry points re-execute
themselves with it set (same PID, same arguments) before importing anything heavy.
Set COARSE3D_SYSTEM_MALLOC=1 to keep the system's settings.
"""
from collections.abc import Mapping
import os
import platform
import sys

TUNABLES = (
    ("glibc.malloc.hugetlb", "1"),  # madvise(MADV_HUGEPAGE) on the heap: 512x fewer faults.
    ("glibc.malloc.arena_max", "1"),  # Thread arenas are mmaps that glibc shrinks.
    ("glibc.malloc.mmap_max", "0"),  # Large blocks from the heap too, not from fresh mmaps.
    ("glibc.malloc.trim_threshold", str(1 << 40)),  # Never hand the heap's top back.
)
OPT_OUT = "COARSE3D_SYSTEM_MALLOC"
_DONE = "COARSE3D_MALLOC_TUNED"  # Set on re-execution: never re-execute twice.


def merged_tunables(current: str) -> str:
  """GLIBC_TUNABLES with ours added; a tunable the user already set keeps the user's value."""
  entries = [e for e in current.split(":") if e]
  present = {e.split("=", 1)[0] for e in entries}
  return ":".join(entries + [f"{k}={v}" for k, v in TUNABLES if k not in present])


def should_reexec(environ: Mapping[str, str], system: str, libc: str) -> bool:
  """Whether a process with this environment, OS and C library should re-execute itself."""
  if system != "Linux" or libc != "glibc" or environ.get(OPT_OUT) or environ.get(_DONE):
    return False
  current = environ.get("GLIBC_TUNABLES", "")
  return merged_tunables(current) != current


def reexec_with_tunables() -> None:
  """Re-executes this Python process with `TUNABLES` in GLIBC_TUNABLES, where that applies.

  Call it first thing in a `__main__` block: whatever ran before is run again.
  """
  if not should_reexec(os.environ, platform.system(), platform.libc_ver()[0]):
    return
  env = dict(os.environ, GLIBC_TUNABLES=merged_tunables(os.environ.get("GLIBC_TUNABLES", "")))
  env[_DONE] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
