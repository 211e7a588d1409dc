"""The glibc allocator settings of the entry points (coarse3d_jax.host_memory)."""
import json
import os
import platform
import subprocess
import sys

import pytest

from coarse3d_jax import host_memory

OURS = dict(host_memory.TUNABLES)


def _parse(tunables: str) -> dict[str, str]:
  return dict(e.split("=", 1) for e in tunables.split(":") if e)


def test_merged_tunables_adds_ours_and_keeps_the_users():
  assert _parse(host_memory.merged_tunables("")) == OURS
  user = "glibc.malloc.arena_max=4:glibc.cpu.hwcaps=-AVX2"
  merged = host_memory.merged_tunables(user)
  assert merged.startswith(user + ":")
  assert _parse(merged) == {**OURS, "glibc.malloc.arena_max": "4", "glibc.cpu.hwcaps": "-AVX2"}
  assert host_memory.merged_tunables(merged) == merged


@pytest.mark.parametrize("environ,system,libc,expected", [
    ({}, "Linux", "glibc", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "Linux", "glibc", True),
    ({"GLIBC_TUNABLES": host_memory.merged_tunables("")}, "Linux", "glibc", False),
    ({host_memory.OPT_OUT: "1"}, "Linux", "glibc", False),
    ({"COARSE3D_MALLOC_TUNED": "1"}, "Linux", "glibc", False),  # Never a second re-execution.
    ({}, "Darwin", "", False),
    ({}, "Linux", "", False),  # musl and others: GLIBC_TUNABLES means nothing there.
])
def test_should_reexec(environ, system, libc, expected):
  assert host_memory.should_reexec(environ, system, libc) is expected


# Allocates, frees and re-allocates 64 MB (above glibc's largest mmap threshold: a fresh mmap
# each time) and counts the page faults of the second allocation. numpy's own huge-page advice
# is turned off so that the faults are glibc's doing.
_PROBE = """
import json, os, resource, sys
from coarse3d_jax import host_memory
host_memory.reexec_with_tunables()
import numpy as np
np._core.multiarray._set_madvise_hugepage(False)
n = 64 * 2**20 // 8
np.ones(n).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(n).sum()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "tunables": os.environ.get("GLIBC_TUNABLES", ""),
                  "argv": sys.argv[1:], "pid": os.getpid()}))
"""


def _probe(**env) -> dict:
  environ = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT, "COARSE3D_MALLOC_TUNED")}
  out = subprocess.run([sys.executable, "-c", _PROBE, "arg1"], env={**environ, **env},
                       capture_output=True, text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _transparent_huge_pages() -> bool:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[never]" not in f.read()
  except OSError:
    return False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                    or not _transparent_huge_pages(), reason="glibc tunables, huge pages")
def test_reexecution_backs_large_blocks_with_huge_pages():
  tuned, system = _probe(), _probe(**{host_memory.OPT_OUT: "1"})
  assert _parse(tuned["tunables"]) == OURS
  assert tuned["argv"] == ["arg1"]  # Same arguments after the re-execution.
  assert system["tunables"] == ""
  pages = 64 * 2**20 // 4096
  assert system["faults"] > pages // 2  # glibc's default: every 4 KB page faulted.
  assert tuned["faults"] < pages // 8  # Mostly 2 MB pages (512x fewer faults each).
