"""The shape of the house: imports run one way, the compute path needs no TensorFlow, and
training data and predictions place a scan's points on the same pixels."""
import ast
import pathlib
import subprocess
import sys

import numpy as np

from coarse3d_jax import predict
from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from data_prep import convert

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path: pathlib.Path) -> set[str]:
  """Top-level and nested imports of a source file, as dotted module names."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
  return names


def test_the_library_never_imports_data_prep():
  offenders = {str(path.relative_to(ROOT)): sorted(
      name for name in imported_modules(path) if name.split(".")[0] == "data_prep")
               for path in sorted((ROOT / "coarse3d_jax").rglob("*.py"))}
  assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_walk_sees_a_reverse_import(tmp_path):
  source = tmp_path / "bad.py"
  source.write_text("def f():\n  from data_prep import convert\n  return convert\n")
  assert "data_prep" in imported_modules(source)


# The compute path (and the benchmarks) must run where TensorFlow, TFDS and clu are absent,
# as on the GPU machines. A None in sys.modules is how Python spells "not installed": imports
# raise ModuleNotFoundError and importlib.util.find_spec answers None, so libraries that probe
# for TensorFlow (etils.epath, under JAX's compilation cache) take their no-TF path, as there.
_NO_TF_SCRIPT = r"""
import sys
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")
sys.modules.update(dict.fromkeys(BLOCKED))
import types
import numpy as np
from coarse3d_jax import (augment, knn, losses, metrics, models, programs, prototypes,
                          sampling, settings, train_step, inference)
from benchmarks import common, gpu_check
args = types.SimpleNamespace(model="salsanext", model_width=0.125, dtype="float32", batch=4,
                             height=16, width=64, label_fraction=0.05)
step, state, batch, _ = common.build("coarse3d", args)
state, logged = step(state, batch)
assert np.isfinite(float(logged["loss"])), logged
assert not [m for m, v in sys.modules.items() if m.split(".")[0] in BLOCKED and v is not None]
print("OK", float(logged["loss"]))
"""


def test_compute_path_and_benchmarks_run_without_tensorflow():
  result = subprocess.run([sys.executable, "-c", _NO_TF_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("OK"), result.stdout


def test_training_data_and_predict_put_real_points_on_the_same_pixels(sample_dir):
  info = datasets.get_info("semantickitti")
  settings = convert.Settings(dataset="semantickitti")
  for ref in readers.list_scans("semantickitti", sample_dir, sequences=["00"]):
    example, _ = convert.convert_scan(settings, ref, labeled=True)
    scan = predict.prepare_scan("semantickitti", ref, info.geometry)
    np.testing.assert_array_equal(scan.row, example["point_row"])
    np.testing.assert_array_equal(scan.col, example["point_col"])
    np.testing.assert_array_equal(scan.image, example["range_image"])
    assert len(scan.row) > 100_000
