"""What a training run reports: the progress line, TensorBoard scalars and pictures, the
evaluation table and results.json, and the inference facts saved beside the checkpoints."""
import contextlib
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from coarse3d_jax import files
from coarse3d_jax import metrics
from coarse3d_jax import visualize
from coarse3d_jax.data import dataset_config


class TrainingError(RuntimeError):
  """A run that cannot start or must stop (empty split, bad batch size, NaN loss)."""


class Progress:
  """A progress line with loss, rate (scans/s) and ETA at every log step.

  The rate counts training time only: time spent inside `paused()` (evaluations, checkpoint
  saves) is left out, so the line after an evaluation does not report a spurious slowdown.
  """

  def __init__(self, start_step: int, total_steps: int, global_batch: int):
    self.total, self.global_batch = total_steps, global_batch
    self.last_step, self.last_time, self.excluded = start_step, time.time(), 0.0

  @contextlib.contextmanager
  def paused(self):
    start = time.time()
    try:
      yield
    finally:
      self.excluded += time.time() - start

  def __call__(self, step: int, loss: float) -> float:
    now = time.time()
    elapsed = now - self.last_time - self.excluded
    rate = (step - self.last_step) * self.global_batch / max(elapsed, 1e-9)
    eta = (self.total - step) * self.global_batch / max(rate, 1e-9)
    logging.info("step %d/%d | loss %.4f | %.2f scans/s | ETA %s", step, self.total, loss,
                 rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
    self.last_step, self.last_time, self.excluded = step, now, 0.0
    return rate


def diagnostic_values(host: list[dict]) -> dict[str, float]:
  """The training diagnostics of a logging window: per name, the sum of its steps' numerators
  over the sum of their denominators. A name whose denominators are all 0 (nothing to measure:
  the warm-up, no full labels, no logging step in the window) is left out, never NaN."""
  sums = {}
  for scalars in host:
    for name, pair in scalars.get("diagnostics", {}).items():
      sums[name] = sums.get(name, 0.0) + np.asarray(pair, np.float64)
  return {name: float(total[0] / total[1]) for name, total in sums.items() if total[1] > 0}


def flush_metrics(pending: list[dict], step: int, writer, progress: Progress,
                  last_saved: int | None) -> dict[str, float]:
  """Averages the buffered step scalars, stops on a non-finite loss, logs the rest.

  Returns the window's training diagnostics (`diagnostic_values`), written as contrast/<name>.
  """
  if not pending:
    return {}
  host = jax.device_get(pending)
  losses_seen = np.asarray([m["loss"] for m in host], np.float64)
  if not np.all(np.isfinite(losses_seen)):
    bad = step - len(host) + 1 + int(np.argmin(np.isfinite(losses_seen)))
    kept = f"step {last_saved}" if last_saved is not None else "none saved yet"
    raise TrainingError(f"loss is {losses_seen[~np.isfinite(losses_seen)][0]} at step {bad}: "
                        f"stopping; the last checkpoint ({kept}) is kept")
  means = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]
           if k != "diagnostics"}
  means["train/scans_per_second"] = progress(step, means["train/loss"])
  diagnostics = diagnostic_values(host)
  writer.write_scalars(step, {**means, **{f"contrast/{k}": v for k, v in diagnostics.items()}})
  pending.clear()
  return diagnostics


def picture_writer(info, num_pictures: int, writer, step: int):
  """A `picture_fn(batch, pred)` that sends the first `num_pictures` scans to TensorBoard."""
  remaining = [num_pictures if jax.process_index() == 0 else 0]

  def write(batch: dict[str, np.ndarray], pred: np.ndarray) -> None:
    count = min(remaining[0], int(batch["example_valid"].sum()))
    if count <= 0:
      return
    images = np.stack([visualize.scan_panels(
        info.colors_rgb, batch["range_image"][i, ..., 0], pred[i], batch["label"][i],
        batch["weak_label"][i], row_scale=2) for i in range(count)])
    writer.write_images(step, {"eval/scans": images})
    remaining[0] -= count

  return write


def report_evaluation(info, results: dict[str, Any], workdir: str, writer) -> None:
  """results.json, TensorBoard scalars and the per-class table (point-level mIoU).

  results.json also holds what `results` carries besides the metrics, e.g. the training loop's
  'contrast': the last logged value of each training diagnostic.
  """
  table = metrics.report(info, results)
  logging.info("Evaluation on %s at step %d (point-level, official protocol):\n%s\n"
               "pixel-level mIoU (2D, not the benchmark metric): %.4f",
               results["split"], results["step"], table, results["pixel_miou"])
  scalars = {"eval/miou": results["miou"], "eval/pixel_miou": results["pixel_miou"],
             "eval/scans_per_second": results["scans_per_second"]}
  scalars.update({f"eval_iou/{k}": v for k, v in results["per_class_iou"].items()})
  writer.write_scalars(results["step"], scalars)
  if jax.process_index() == 0:
    summary = {k: v for k, v in results.items() if k != "confusion_matrix"}
    files.atomic_write_json(os.path.join(workdir, "results.json"), summary, indent=2,
                            sort_keys=True)


def write_data_info(workdir: str, dataset: str, derived, info=None) -> None:
  """What inference needs besides the checkpoint: the input normalization and geometry, and
  the dataset's description (`info`: class names, label maps, colors; custom datasets)."""
  content = {"dataset": dataset, "mean": list(derived.mean), "std": list(derived.std),
             "geometry": derived.geometry_dict, "num_classes": derived.num_classes}
  if info is not None:
    content["dataset_description"] = dataset_config.to_dict(info)
  files.atomic_write_json(os.path.join(workdir, "data_info.json"), content, indent=2,
                          sort_keys=True)
