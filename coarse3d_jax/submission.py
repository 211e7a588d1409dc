"""Benchmark-format prediction files (written atomically), submission packaging and validation.

Layouts:
- SemanticKITTI / SemanticPOSS: `OUT/sequences/NN/predictions/NNNNNN.label`, one uint32 raw label
  id per point (learning ids through the inverse learning map), exactly as many as the scan has.
- nuScenes-lidarseg: `OUT/lidarseg/<split>/<lidar sample_data token>_lidarseg.bin`, one uint8
  challenge class index (1..16) per point, plus `OUT/<split>/submission.json` = {"meta": {...}}
  with the five booleans the devkit's validate_submission checks.
- SemanticKITTI test zip: explicit directory entries `sequences/`, `sequences/NN/`,
  `sequences/NN/predictions/` for NN = 11..21 and every `.label` file, as semantic-kitti-api
  `validate_submission.py` requires.
"""
from collections.abc import Iterable
import json
import pathlib
import zipfile

import numpy as np

from coarse3d_jax import files

KITTI_TEST_SEQUENCES = tuple(f"{s:02d}" for s in range(11, 22))
NUSCENES_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                 "use_external": False}


class ExportError(Exception):
  """A prediction that cannot be written as asked (message names the file)."""


class SubmissionError(Exception):
  """A submission that the official validator would reject (message says why)."""


def kitti_prediction_path(out_dir, sequence: str, frame: str) -> pathlib.Path:
  return pathlib.Path(out_dir) / "sequences" / sequence / "predictions" / f"{frame}.label"


def nuscenes_prediction_path(out_dir, split: str, token: str) -> pathlib.Path:
  return pathlib.Path(out_dir) / "lidarseg" / split / f"{token}_lidarseg.bin"


def to_raw_labels(learning_map_inv: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(N,) learning ids -> (N,) uint32 raw ids of the dataset's label files."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= len(learning_map_inv)):
    raise ExportError(f"learning ids must lie in [0, {len(learning_map_inv)}), got "
                      f"[{labels.min()}, {labels.max()}]")
  return np.asarray(learning_map_inv, np.uint32)[labels]


def write_kitti_labels(out_dir, sequence: str, frame: str, raw_labels: np.ndarray,
                       num_points: int) -> pathlib.Path:
  """Writes (N,) uint32 raw ids for one SemanticKITTI/POSS scan; N must equal `num_points`."""
  path = kitti_prediction_path(out_dir, sequence, frame)
  raw_labels = np.asarray(raw_labels)
  if raw_labels.shape != (num_points,):
    raise ExportError(f"{path}: {raw_labels.shape} labels for a scan of {num_points} points")
  return files.atomic_write(path, raw_labels.astype("<u4").tobytes())


def write_nuscenes_labels(out_dir, split: str, token: str, labels: np.ndarray,
                          num_points: int, num_classes: int = 17) -> pathlib.Path:
  """Writes (N,) challenge class indices 1..num_classes-1 as uint8 for one nuScenes sweep."""
  path = nuscenes_prediction_path(out_dir, split, token)
  labels = np.asarray(labels)
  if labels.shape != (num_points,):
    raise ExportError(f"{path}: {labels.shape} labels for a sweep of {num_points} points")
  if labels.size and (labels.min() < 1 or labels.max() >= num_classes):
    raise ExportError(f"{path}: labels must lie in 1..{num_classes - 1}, got "
                      f"[{labels.min()}, {labels.max()}]")
  return files.atomic_write(path, labels.astype(np.uint8).tobytes())


def write_nuscenes_submission_json(out_dir, split: str, **meta: bool) -> pathlib.Path:
  """`OUT/<split>/submission.json` with the devkit's five `meta` booleans (lidar only default)."""
  unknown = set(meta) - set(NUSCENES_META)
  if unknown:
    raise ExportError(f"unknown submission meta keys {sorted(unknown)}")
  values = {k: bool(meta.get(k, v)) for k, v in NUSCENES_META.items()}
  path = pathlib.Path(out_dir) / split / "submission.json"
  return files.atomic_write_json(path, {"meta": values}, indent=2)


def zip_kitti_submission(pred_dir, zip_path, sequences: Iterable[str] = KITTI_TEST_SEQUENCES
                         ) -> pathlib.Path:
  """Packs `pred_dir/sequences/NN/predictions/*.label` into a CodaLab-ready zip (atomically)."""
  pred_dir, zip_path = pathlib.Path(pred_dir), pathlib.Path(zip_path)
  if zip_path.suffix != ".zip":
    raise ExportError(f"{zip_path}: a submission bundle must end with .zip")
  with files.atomic_path(zip_path) as tmp:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
      bundle.writestr("sequences/", b"")
      for sequence in sequences:
        source = pred_dir / "sequences" / sequence / "predictions"
        if not source.is_dir():
          raise ExportError(f"{source}: missing; predict every test sequence before --zip")
        bundle.writestr(f"sequences/{sequence}/", b"")
        bundle.writestr(f"sequences/{sequence}/predictions/", b"")
        for label in sorted(source.glob("*.label")):
          bundle.write(label, f"sequences/{sequence}/predictions/{label.name}")
  return zip_path


def validate_kitti_submission(zip_path, raw_dir,
                              sequences: Iterable[str] = KITTI_TEST_SEQUENCES) -> None:
  """Every check of semantic-kitti-api `validate_submission.py --task segmentation`.

  1. the name ends with '.zip'; 2. directory entries 'sequences/', 'sequences/NN/' and
  'sequences/NN/predictions/' exist; 3. for every file of `raw_dir/sequences/NN/velodyne/` there
  is 'sequences/NN/predictions/<stem>.label' with (uncompressed size / 4) == (scan size / 16).
  Raises SubmissionError with the first failure.
  """
  zip_path = str(zip_path)
  if not zip_path.endswith(".zip"):
    raise SubmissionError('Competition bundle must end with ".zip"')
  with zipfile.ZipFile(zip_path) as bundle:
    infos = bundle.infolist()
  directories = {i.filename for i in infos if i.filename.endswith("/")}
  entries = {i.filename: i for i in infos if not i.filename.endswith("/")}
  if "sequences/" not in directories:
    raise SubmissionError('Directory "sequences" missing inside zip file.')
  for sequence in sequences:
    for directory in (f"sequences/{sequence}/", f"sequences/{sequence}/predictions/"):
      if directory not in directories:
        raise SubmissionError(f'Directory "{directory}" missing inside zip file.')
  for sequence in sequences:
    velodyne = pathlib.Path(raw_dir) / "sequences" / sequence / "velodyne"
    if not velodyne.is_dir():
      raise SubmissionError(f"{velodyne}: missing; the validator needs the test scans")
    for scan in sorted(velodyne.iterdir()):
      name = f"sequences/{sequence}/predictions/{scan.stem}.label"
      if name not in entries:
        raise SubmissionError(f'"{name}" is missing inside zip.')
      num_points, num_labels = scan.stat().st_size / 16, entries[name].file_size / 4
      if num_points != num_labels:
        raise SubmissionError(f'label file "{name}" should have {num_points:.0f} labels, but '
                              f"found {num_labels:.0f} labels!")


def validate_nuscenes_submission(results_dir, split: str, num_points: dict[str, int]) -> None:
  """The nuscenes-devkit lidarseg `validate_submission` checks, given {token: point count}.

  `results_dir/<split>/submission.json` with exactly the five boolean meta keys, and
  `results_dir/lidarseg/<split>/<token>_lidarseg.bin` with one uint8 per point of every sweep.
  """
  results_dir = pathlib.Path(results_dir)
  meta_path = results_dir / split / "submission.json"
  if not meta_path.is_file():
    raise SubmissionError(f"submission.json ({meta_path}) does not exist.")
  meta = json.loads(meta_path.read_text()).get("meta", {})
  if set(meta) != set(NUSCENES_META):
    raise SubmissionError(f"{meta_path} must contain {sorted(NUSCENES_META)}.")
  if any(type(v) is not bool for v in meta.values()):  # pylint: disable=unidiomatic-typecheck
    raise SubmissionError(f"{meta_path}: every meta value must be a bool.")
  for token, count in num_points.items():
    path = nuscenes_prediction_path(results_dir, split, token)
    if not path.is_file():
      raise SubmissionError(f"The prediction .bin file {path} does not exist.")
    if path.stat().st_size != count:
      raise SubmissionError(f"{path}: {path.stat().st_size} predictions for {count} points.")
