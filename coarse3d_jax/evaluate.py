"""Official-protocol evaluation of prediction files: python -m coarse3d_jax.evaluate ...

    python -m coarse3d_jax.evaluate --dataset semantickitti --raw_dir RAW --pred_dir OUT
        [--split val] [--sequences 08,...] [--json FILE]
    python -m coarse3d_jax.evaluate --dataset custom --dataset_config my_sensor.yaml ...

Ground truth and predictions are mapped with the dataset's learning map, one confusion matrix is
accumulated over all points of the split, and per-class IoU / mIoU follow the dataset's official
evaluator (coarse3d_jax.metrics; SemanticKITTI/POSS: semantic-kitti-api, nuScenes: devkit).
As in semantic-kitti-api, only the low 16 bits of a prediction are read and raw ids absent from
the learning map count as class 0 (a miss); nuScenes predictions must lie in 1..16.
"""
from collections.abc import Sequence
import pathlib
import sys
from typing import Any

from absl import flags
import numpy as np

from coarse3d_jax import files
from coarse3d_jax import metrics
from coarse3d_jax import startup
from coarse3d_jax import submission
from coarse3d_jax.data import dataset_config
from coarse3d_jax.data import datasets
from coarse3d_jax.data import errors as data_errors
from coarse3d_jax.data import readers


class EvaluateError(Exception):
  """A prediction folder that cannot be evaluated (message names the file)."""


def prediction_path(dataset: str, pred_dir, split: str, ref) -> pathlib.Path:
  if dataset == "nuscenes":
    return submission.nuscenes_prediction_path(pred_dir, split, str(ref.scan_id))
  return submission.kitti_prediction_path(pred_dir, ref.sequence, ref.frame)


def read_prediction(dataset: str, info, path: pathlib.Path, num_points: int,
                    scan_path) -> np.ndarray:
  """(N,) learning ids of one prediction file; EvaluateError if missing or of the wrong length."""
  if not path.is_file():
    raise EvaluateError(f"{path}: missing prediction for scan {scan_path}")
  item = 1 if dataset == "nuscenes" else 4
  size = path.stat().st_size
  if size != num_points * item:
    raise EvaluateError(f"{path}: {size / item:g} labels, but scan {scan_path} has "
                        f"{num_points} points")
  if dataset == "nuscenes":
    pred = np.fromfile(path, np.uint8).astype(np.int64)
    if pred.size and (pred.min() < 1 or pred.max() >= info.num_classes):
      raise EvaluateError(f"{path}: nuScenes predictions must lie in 1..{info.num_classes - 1}")
    return pred
  raw = np.fromfile(path, "<u4") & 0xFFFF
  lut = np.asarray(info.learning_map, np.int64)
  mapped = np.where(raw < len(lut), lut[np.minimum(raw, len(lut) - 1)], 0)
  return np.where(mapped < info.num_classes, mapped, 0)  # Unknown ids: a miss, as officially.


def _check_no_extra_files(dataset: str, pred_dir, split: str, refs) -> None:
  """The official script pairs sorted file lists and asserts equal counts: refuse extras."""
  expected = {prediction_path(dataset, pred_dir, split, ref) for ref in refs}
  folders = {p.parent for p in expected}
  suffix = "_lidarseg.bin" if dataset == "nuscenes" else ".label"
  extra = sorted(p for f in folders for p in f.glob(f"*{suffix}") if p not in expected)
  if extra:
    raise EvaluateError(f"{extra[0]}: prediction for a scan outside the evaluated split "
                        f"({len(extra)} such files); the official evaluator would refuse them")


def evaluate_predictions(dataset: readers.Dataset, raw_dir, pred_dir, split: str = "val",
                         sequences: Sequence[str] | None = None) -> dict[str, Any]:
  """Confusion matrix, per-class IoU and mIoU of `pred_dir` against the raw ground truth.

  `dataset`: a built-in dataset's name, or a custom dataset's DatasetInfo.
  """
  info = datasets.resolve(dataset)
  refs = readers.list_scans(dataset, raw_dir, None if sequences else split, sequences)
  if not refs:
    raise EvaluateError(f"{raw_dir}: no scans in split {split}")
  _check_no_extra_files(dataset, pred_dir, split, refs)
  conf = np.zeros((info.num_classes, info.num_classes), np.int64)
  for ref in refs:
    if ref.label_path is None:
      raise EvaluateError(f"{ref.points_path}: no ground-truth label file; is {split} labeled?")
    num_points = len(readers.read_points(dataset, ref))
    raw = readers.read_labels(dataset, ref, num_points)
    label = datasets.map_labels(info, raw, source=str(ref.label_path))
    pred = read_prediction(dataset, info, prediction_path(dataset, pred_dir, split, ref),
                           num_points, ref.points_path)
    conf += metrics.confusion_matrix_np(pred, label, info.num_classes)
  return metrics.results_from_confusion(info, conf, len(refs))


def define_flags(fv: flags.FlagValues, argv) -> None:
  del argv
  flags.DEFINE_enum("dataset", None, [*datasets.NAMES, "custom"],
                    "Dataset of the scans (custom: described by --dataset_config).",
                    flag_values=fv)
  flags.DEFINE_string("dataset_config", None, "With --dataset custom: the YAML file that "
                      "describes the dataset (as given to data_prep).", flag_values=fv)
  flags.DEFINE_string("raw_dir", None, "Raw dataset root (the ground truth).", flag_values=fv)
  flags.DEFINE_string("pred_dir", None, "Root of the prediction files.", flag_values=fv)
  flags.DEFINE_string("split", "val", "Split to evaluate.", flag_values=fv)
  flags.DEFINE_list("sequences", None, "Comma-separated sequences; overrides --split.",
                    flag_values=fv)
  flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)
  flags.mark_flags_as_required(["dataset", "raw_dir", "pred_dir"], flag_values=fv)


def _dataset(args: flags.FlagValues) -> readers.Dataset:
  if (args.dataset == "custom") != bool(args.dataset_config):
    raise startup.UsageError("--dataset custom and --dataset_config FILE go together (the YAML "
                             "file describes the custom dataset)")
  return dataset_config.load(args.dataset_config) if args.dataset_config else args.dataset


def run(args: flags.FlagValues) -> None:
  dataset = _dataset(args)
  results = evaluate_predictions(dataset, args.raw_dir, args.pred_dir, args.split,
                                 args.sequences or None)
  print(metrics.report(datasets.resolve(dataset), results))
  if args.json:
    files.atomic_write_json(args.json, results, indent=2)


PROGRAM = startup.Program("coarse3d_jax.evaluate", __doc__, define_flags, run,
                          (EvaluateError, data_errors.DataError))


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI on argv (without the program name; default sys.argv[1:])."""
  argv = sys.argv[1:] if argv is None else argv
  return startup.run(PROGRAM, ["evaluate", *argv])


if __name__ == "__main__":
  sys.exit(main())
