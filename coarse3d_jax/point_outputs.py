"""Per-point class probabilities and uncertainty, written beside each scan's prediction file.

For a scan predicted to `.../NNNNNN.label` (nuScenes: `<token>_lidarseg.bin`):
- `NNNNNN.probs.npy` (--save_probs): (N, C - 1) float16, the probabilities of learning classes
  1..C-1 (column j is class j + 1; the ignore class 0 is never predicted) of the pixel each point
  takes; rows sum to 1 up to float16 rounding;
- `NNNNNN.entropy.npy` (--save_uncertainty): (N,) float32 entropy of those probabilities, nats;
- `NNNNNN.mutual_information.npy` (--save_uncertainty with --mc_dropout): (N,) float32.
Points with non-finite coordinates have no pixel: their rows are NaN. `OUT/probabilities.json`
names the columns and says how the numbers were made (TTA set, dropout samples, checkpoint).

Rounding to float16 can make the predicted class tie with another one; there the predicted
class's probability is raised by one float16 step, so a file's argmax is the written label
(without --knn: the KNN vote may differ from its point's pixel).
"""
import io
import pathlib
from typing import Any

import numpy as np

from coarse3d_jax import files

DESCRIPTION_FILE = "probabilities.json"
UNCERTAINTY_KINDS = ("entropy", "mutual_information")


def output_path(label_path: str | pathlib.Path, kind: str) -> pathlib.Path:
  """`.../NNNNNN.label` -> `.../NNNNNN.<kind>.npy`."""
  label_path = pathlib.Path(label_path)
  return label_path.with_name(f"{label_path.stem}.{kind}.npy")


def point_values(pixel_values: np.ndarray, row: np.ndarray, col: np.ndarray,
                 finite: np.ndarray) -> np.ndarray:
  """Per-point values of the pixel each point takes.

  Args:
    pixel_values: (H, W, ...) one scan's per-pixel values.
    row, col: (M,) pixels of the M projectable points.
    finite: (N,) bool, which stored points are projectable (M of them).
  Returns:
    (N, ...) float32; NaN for points without a pixel.
  """
  out = np.full((len(finite),) + pixel_values.shape[2:], np.nan, np.float32)
  out[finite] = pixel_values[row, col]
  return out


def float16_probs(probs: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
  """(N, K) float32 probabilities -> float16, keeping argmax == label - 1 where `labels` (N,)
  (learning ids, the argmax + 1 of `probs`) are given: rounding is monotone, so the label can
  only tie; then its probability goes up by one float16 step. NaN rows stay NaN."""
  rounded = probs.astype(np.float16)
  if labels is None:
    return rounded
  rows = np.flatnonzero(np.isfinite(probs).all(axis=1))
  cols = np.asarray(labels)[rows] - 1
  top = rounded[rows, cols]
  tied = rounded[rows].argmax(axis=1) != cols
  rounded[rows[tied], cols[tied]] = np.nextafter(top[tied], np.float16(np.inf))
  return rounded


def _save_npy(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return files.atomic_write(path, buffer.getvalue())


def write_scan(label_path, pixel_outputs: dict[str, np.ndarray], row: np.ndarray,
               col: np.ndarray, finite: np.ndarray, labels: np.ndarray | None,
               save_probs: bool, save_uncertainty: bool) -> list[pathlib.Path]:
  """Writes the requested files of one scan beside its label file (each atomically).

  Args:
    label_path: the scan's prediction file.
    pixel_outputs: this scan's (H, W, ...) 'probs' and, when computed, 'entropy',
      'mutual_information' (`test_time.distribution_program` outputs).
    row, col, finite: the scan's pixels (`point_values`).
    labels: (N,) learning ids the points were given when they are the argmax of the
      probabilities (no KNN), else None.
    save_probs, save_uncertainty: which files.
  """
  written = []
  if save_probs:
    probs = point_values(pixel_outputs["probs"], row, col, finite)
    written.append(_save_npy(output_path(label_path, "probs"), float16_probs(probs, labels)))
  if save_uncertainty:
    for kind in UNCERTAINTY_KINDS:
      if kind in pixel_outputs:
        values = point_values(pixel_outputs[kind], row, col, finite)
        written.append(_save_npy(output_path(label_path, kind), values))
  return written


def description(info, passes, save_probs: bool, save_uncertainty: bool, knn: bool,
                checkpoint_step: int | None) -> dict[str, Any]:
  """What `probabilities.json` says: the columns' classes and how the numbers were made."""
  names = list(info.class_names)
  files_written = {}
  if save_probs:
    files_written["<scan>.probs.npy"] = ("(N, C - 1) float16: probability of classes[j] in "
                                         "column j; NaN rows: points without a pixel")
  if save_uncertainty:
    files_written["<scan>.entropy.npy"] = "(N,) float32: entropy of the probabilities, nats"
    if passes.mc_samples:
      files_written["<scan>.mutual_information.npy"] = (
          "(N,) float32: mutual information between prediction and dropout mask, nats")
  return {
      "classes": [{"column": j - 1, "learning_id": j, "name": names[j]}
                  for j in range(1, len(names))],
      "files": files_written,
      "tta": [{"mirror_y": bool(m), "yaw_roll_columns": int(s)} for m, s in passes.transforms],
      "mc_dropout_samples": passes.mc_samples,
      "mc_dropout_seed": passes.seed if passes.mc_samples else None,
      "labels_are_argmax": not knn,
      "checkpoint_step": checkpoint_step,
  }


def write_description(out_dir, info, passes, save_probs: bool, save_uncertainty: bool,
                      knn: bool, checkpoint_step: int | None) -> pathlib.Path:
  return files.atomic_write_json(
      pathlib.Path(out_dir) / DESCRIPTION_FILE,
      description(info, passes, save_probs, save_uncertainty, knn, checkpoint_step), indent=2)
