"""Point-level semantic segmentation metrics, as the official benchmark evaluators compute them.

Confusion matrices are laid out rows = ground truth, columns = prediction, in learning ids.

Two official conventions exist and differ only on edge cases; `iou_from_confusion(protocol=...)`
reproduces either:
- 'semantickitti' (semantic-kitti-api `np_ioueval.py`, also used for SemanticPOSS): points whose
  ground truth is an ignored class are dropped; a prediction of an ignored class on a valid point
  still counts as a false negative of the true class; IoU = TP / (TP + FP + FN + 1e-15), so a class
  with neither ground truth nor prediction gets IoU 0 and still counts in the mean.
- 'nuscenes' (nuscenes-devkit `ConfusionMatrix`): ignored rows AND columns are dropped; a class
  whose union is empty gets NaN and is left out of the mean (nanmean).
"""
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

PROTOCOLS = ("semantickitti", "nuscenes")


def confusion_matrix(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                     mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """Counts of (ground truth, prediction) pairs; jit-able, static shapes.

  Args:
    pred: (...) int predicted learning ids.
    label: (...) int ground-truth learning ids, same shape.
    num_classes: C.
    mask: (...) bool, entries to count (None = all). Ids outside [0, C) are never counted.

  Returns:
    (C, C) int32, rows = ground truth, columns = prediction.
  """
  pred = jnp.asarray(pred).astype(jnp.int32).reshape(-1)
  label = jnp.asarray(label).astype(jnp.int32).reshape(-1)
  keep = (pred >= 0) & (pred < num_classes) & (label >= 0) & (label < num_classes)
  if mask is not None:
    keep = keep & jnp.asarray(mask).reshape(-1)
  index = jnp.where(keep, label * num_classes + pred, 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(keep.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def confusion_matrix_np(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
  """Host version for the evaluation CLI: (N,) pred, (N,) label -> (C, C) int64 (rows = truth)."""
  pred = np.asarray(pred, np.int64).reshape(-1)
  label = np.asarray(label, np.int64).reshape(-1)
  keep = (pred >= 0) & (pred < num_classes) & (label >= 0) & (label < num_classes)
  index = label[keep] * num_classes + pred[keep]
  return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf, ignore: Sequence[int] = (0,),
                       protocol: str = "semantickitti") -> tuple[np.ndarray, float]:
  """Per-class IoU = TP / (TP + FP + FN) and their mean over the non-ignored classes.

  Args:
    conf: (C, C) confusion matrix, rows = ground truth, columns = prediction.
    ignore: learning ids left out of the metric (ground truth of these classes is dropped).
    protocol: 'semantickitti' or 'nuscenes' (see the module docstring for the difference).

  Returns:
    per_class_iou: (C,) float64, NaN for ignored classes (and, for 'nuscenes', for classes with
      neither ground truth nor prediction).
    miou: float, the mean over the included classes.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  conf = np.array(conf, dtype=np.float64)
  ignore = list(ignore)
  conf[ignore, :] = 0.0
  if protocol == "nuscenes":
    conf[:, ignore] = 0.0
  tp = np.diag(conf)
  union = conf.sum(axis=0) + conf.sum(axis=1) - tp
  if protocol == "semantickitti":
    iou = tp / (union + 1e-15)
  else:
    with np.errstate(divide="ignore", invalid="ignore"):
      iou = tp / union
  iou[ignore] = np.nan
  included = iou[[c for c in range(len(iou)) if c not in ignore]]
  miou = float(np.nanmean(included)) if np.any(np.isfinite(included)) else float("nan")
  return iou, miou


def protocol_for(dataset_name: str) -> str:
  """The official convention of a dataset: 'nuscenes' for nuScenes, else 'semantickitti'."""
  return "nuscenes" if dataset_name == "nuscenes" else "semantickitti"


def accuracy_from_confusion(conf, ignore: Sequence[int] = (0,)) -> float:
  """Point accuracy over points with non-ignored ground truth."""
  conf = np.array(conf, dtype=np.float64)
  conf[list(ignore), :] = 0.0
  return float(np.trace(conf) / max(conf.sum(), 1e-15))


def format_iou_table(per_class_iou, class_names: Sequence[str], miou: float,
                     present: np.ndarray | None = None, ignore: Sequence[int] = (0,)) -> str:
  """A fixed-width table: one row per non-ignored class, then the mean.

  Args:
    per_class_iou: (C,) IoU in [0, 1] (NaN shown as 'nan').
    class_names: C names.
    miou: the mean to print.
    present: optional (C,) bool; classes with neither ground truth nor prediction are marked.
    ignore: class ids without a row.
  """
  per_class_iou = np.asarray(per_class_iou, dtype=np.float64)
  width = max(len(n) for n in class_names)
  lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 10)]
  for c, name in enumerate(class_names):
    if c in ignore:
      continue
    value = "   nan" if np.isnan(per_class_iou[c]) else f"{100 * per_class_iou[c]:6.2f}"
    note = "  (absent)" if present is not None and not present[c] else ""
    lines.append(f"{name:<{width}}  {value}{note}")
  lines.append("-" * (width + 10))
  lines.append(f"{'mIoU':<{width}}  {100 * miou:6.2f}")
  return "\n".join(lines)


def metric_ignore(info) -> tuple[int, ...]:
  """Classes left out of a dataset's mIoU: 'unlabeled' and classes its data never contains."""
  return tuple(int(c) for c in np.flatnonzero(info.ignore)) or (0,)


def results_from_confusion(info, conf: np.ndarray, num_scans: int) -> dict[str, Any]:
  """JSON-ready results of a (C, C) confusion matrix (rows = truth) under the official rules."""
  ignore = metric_ignore(info)
  protocol = protocol_for(info.name)
  per_class, miou = iou_from_confusion(conf, ignore, protocol)
  kept = conf.copy()
  kept[list(ignore), :] = 0
  present = (kept.sum(axis=0) + kept.sum(axis=1)) > 0
  included = [c for c in range(info.num_classes) if c not in ignore]
  present_ious = [per_class[c] for c in included if present[c]]
  return {
      "dataset": info.name, "protocol": protocol, "num_scans": num_scans,
      "num_points": int(conf.sum()), "miou": miou,
      "miou_present_classes": float(np.mean(present_ious)) if present_ious else float("nan"),
      "accuracy": accuracy_from_confusion(conf, ignore),
      "per_class_iou": {info.class_names[c]: float(per_class[c]) for c in included},
      "absent_classes": [info.class_names[c] for c in included if not present[c]],
      "confusion_matrix": conf.tolist()}


def report(info, results: dict[str, Any]) -> str:
  """The per-class table and summary lines printed by the CLI."""
  names = info.class_names
  per_class = np.array([results["per_class_iou"].get(n, np.nan) for n in names])
  present = np.array([n not in results["absent_classes"] for n in names])
  ignore = metric_ignore(info)
  table = format_iou_table(per_class, names, results["miou"], present, ignore)
  lines = [f"{info.name}: {results['num_scans']} scans, {results['num_points']} points, "
           f"protocol {results['protocol']}", table,
           f"accuracy {100 * results['accuracy']:.2f} %"]
  if results["absent_classes"]:
    lines.append(f"classes with neither ground truth nor prediction: "
                 f"{', '.join(results['absent_classes'])} (mIoU over the others: "
                 f"{100 * results['miou_present_classes']:.2f})")
  return "\n".join(lines)
