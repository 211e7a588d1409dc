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


ON = {host_memory.OPT_IN: "1"}


@pytest.mark.parametrize("environ,system,libc,expected", [
    (ON, "Linux", "glibc", True),
    ({}, "Linux", "glibc", False),  # Opt-in only.
    ({host_memory.OPT_IN: "0"}, "Linux", "glibc", False),
    ({**ON, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "Linux", "glibc", True),
    ({**ON, "GLIBC_TUNABLES": host_memory.merged_tunables("")}, "Linux", "glibc", False),
    ({**ON, "COARSE3D_MALLOC_TUNED": "1"}, "Linux", "glibc", False),  # Never twice.
    (ON, "Darwin", "", False),
    (ON, "Linux", "", False),  # musl and others: GLIBC_TUNABLES means nothing there.
])
def test_should_reexec(environ, system, libc, expected):
  assert host_memory.should_reexec(environ, system, libc) is expected


# Allocates, frees and re-allocates 64 MB (above glibc's largest mmap threshold: by default a
# fresh mmap each time) and counts the page faults of the second allocation. numpy's own
# huge-page advice is turned off so that the faults are glibc's doing.
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
             if k not in ("GLIBC_TUNABLES", host_memory.OPT_IN, "COARSE3D_MALLOC_TUNED")}
  out = subprocess.run([sys.executable, "-c", _PROBE, "arg1"], env={**environ, **env},
                       capture_output=True, text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc tunables")
def test_opt_in_reexecution_reuses_freed_memory_without_page_faults():
  tuned, system = _probe(**ON), _probe()
  assert _parse(tuned["tunables"]) == OURS
  assert tuned["argv"] == ["arg1"]  # Same arguments after the re-execution.
  assert system["tunables"] == ""  # Not opted in: not re-executed.
  pages = 64 * 2**20 // 4096
  assert system["faults"] > pages // 2  # glibc's default: a fresh mmap, every page faulted.
  assert tuned["faults"] < pages // 50  # The freed block is reused: (almost) no fault.
