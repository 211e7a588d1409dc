"""2 processes x 2 CPU devices over jax.distributed (gloo) == 1 process with 4 devices.

Also kills both processes after a checkpoint, restarts them, and checks the resumed run ends
in exactly the state of the uninterrupted single-process run.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from coarse3d_jax import checkpoints
from coarse3d_jax import train
from tests import tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(data_dir: str, workdir: str, out: str, die_after: int | None = None) -> list[int]:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  port = _free_port()
  procs = []
  for pid in range(2):
    cmd = [sys.executable, "-m", "tests.mp_worker", "--process_id", str(pid),
           "--num_processes", "2", "--port", str(port), "--data_dir", data_dir,
           "--workdir", workdir, "--out", f"{out}.{pid}.npz"]
    if die_after is not None:
      cmd += ["--die_after", str(die_after)]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  codes = []
  for p in procs:
    out_text, _ = p.communicate(timeout=400)
    codes.append(p.returncode)
    if die_after is None and p.returncode != 0:
      pytest.fail(f"worker failed ({p.returncode}):\n{out_text[-4000:]}")
  return codes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_tiny_dataset(str(tmp_path_factory.mktemp("mp") / "tfds"))


def test_two_processes_equal_one_process_and_survive_a_kill(data_dir, tmp_path):
  config = tiny_data.tiny_config(data_dir, input_shards=2)
  reference_dir = str(tmp_path / "single")
  reference_results = train.train_and_evaluate(config, reference_dir)
  ckpt = checkpoints.Checkpoints(reference_dir)
  reference = ckpt.restore(train.initial_state(train.make_setup(config)))
  ckpt.close()

  workdir, out = str(tmp_path / "multi"), str(tmp_path / "state")
  codes = _launch(data_dir, workdir, out, die_after=7)
  assert codes == [-9, -9]  # SIGKILLed mid-run, after the step-6 checkpoint.
  assert checkpoints.Checkpoints(workdir).latest.latest_step() == 6
  _launch(data_dir, workdir, out)
  for pid in range(2):
    saved = np.load(f"{out}.{pid}.npz")
    leaves = jax.tree.leaves(reference)
    assert len(saved.files) == len(leaves) + 1
    for i, leaf in enumerate(leaves):
      np.testing.assert_allclose(saved[f"arr_{i}"], np.asarray(leaf), rtol=2e-4, atol=2e-6)
    assert float(saved["miou"]) == pytest.approx(reference_results["miou"], abs=1e-6)
