"""Opt-in glibc malloc settings under which XLA:CPU train steps stop faulting in fresh pages.

XLA:CPU allocates an executable's temporary buffers on every call: over 1 GB for a
SalsaNext train step. With glibc's defaults, large blocks come from fresh mmaps (or thread
arenas that glibc shrinks with MADV_DONTNEED), so every step touches newly mapped pages:
~290,000 page faults per 64x512 batch-2 train step, each page zeroed by the kernel. With
COARSE3D_MALLOC_TUNING=1 the entry points re-execute themselves (same PID, same arguments)
with GLIBC_TUNABLES keeping freed memory in one heap that is never trimmed: no fault after the
first step. Measured (README, Benchmarks), it is a trade-off, hence opt-in: once the step's
temporaries were halved (`heads.conv_kernel_gradient`), the bare CPU train step gained only ~1%
(full COARSE3D step 2.32 -> 2.30 s; 2.86 -> 2.17 s before), while the demo's training ran 10%
slower (tf.data's threads contend for the one arena) with 2.3-3.8x the peak memory (the heap
only grows). Transparent huge pages alone (glibc.malloc.hugetlb) made the plain step erratically
slower (2.4 -> 3.4 s), so they are not part of it.

glibc reads GLIBC_TUNABLES once, when a process starts, hence the re-execution, done before the
entry points import anything heavy.
"""
from collections.abc import Mapping
import os
import platform
import sys

TUNABLES = (
    ("glibc.malloc.arena_max", "1"),  # Thread arenas are mmaps that glibc shrinks.
    ("glibc.malloc.mmap_max", "0"),  # Large blocks from the heap too, not from fresh mmaps.
    ("glibc.malloc.trim_threshold", str(1 << 40)),  # Never hand the heap's top back.
)
OPT_IN = "COARSE3D_MALLOC_TUNING"
_DONE = "COARSE3D_MALLOC_TUNED"  # Set on re-execution: never re-execute twice.


def merged_tunables(current: str) -> str:
  """GLIBC_TUNABLES with ours added; a tunable the user already set keeps the user's value."""
  entries = [e for e in current.split(":") if e]
  present = {e.split("=", 1)[0] for e in entries}
  return ":".join(entries + [f"{k}={v}" for k, v in TUNABLES if k not in present])


def should_reexec(environ: Mapping[str, str], system: str, libc: str) -> bool:
  """Whether a process with this environment, OS and C library should re-execute itself."""
  if (system != "Linux" or libc != "glibc" or environ.get(OPT_IN, "0") in ("", "0")
      or environ.get(_DONE)):
    return False
  current = environ.get("GLIBC_TUNABLES", "")
  return merged_tunables(current) != current


def reexec_with_tunables() -> None:
  """With COARSE3D_MALLOC_TUNING=1 on Linux/glibc: re-executes with `TUNABLES` set.

  Call it first thing in a `__main__` block: whatever ran before is run again.
  """
  if not should_reexec(os.environ, platform.system(), platform.libc_ver()[0]):
    return
  env = dict(os.environ, GLIBC_TUNABLES=merged_tunables(os.environ.get("GLIBC_TUNABLES", "")))
  env[_DONE] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
