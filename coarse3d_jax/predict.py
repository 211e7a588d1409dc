"""Benchmark-format predictions from raw scans: python -m coarse3d_jax.predict ...

    python -m coarse3d_jax.predict --workdir DIR --raw_dir RAW --out_dir OUT [--split val|test]
        [--sequences 08,...] [--checkpoint latest|best|STEP] [--knn] [--zip]
        [--batch_size 4] [--pictures N] [--ply N] [--tta [--tta_rolls N]] [--mc_dropout N]
        [--save_probs] [--save_uncertainty]

Raw scans are read and projected on the host (numpy, the data_prep projection), a batch of B
range images goes through the model (static shapes: a short last batch is padded with empty
images), and each point gets the class of its pixel, or with --knn the RangeNet++ KNN vote (on
device, points padded to a fixed count with a mask). Every point of the stored scan gets a label:
points outside the vertical field of view take the pixel their row is clamped to; points with
non-finite coordinates (not projectable) take the scan's most frequent predicted class.

--tta averages the class probabilities over the y-mirror and --tta_rolls yaw rolls, --mc_dropout
over dropout samples, in one jitted program per batch (coarse3d_jax.test_time); --save_probs and
--save_uncertainty write per-point probabilities, entropy and mutual information beside each
label file (coarse3d_jax.point_outputs).
"""
from collections.abc import Callable, Sequence
import concurrent.futures
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Protocol

from absl import flags
import numpy as np

from coarse3d_jax import knn as knn_lib
from coarse3d_jax import point_outputs
from coarse3d_jax import startup
from coarse3d_jax import submission
from coarse3d_jax import test_time
from coarse3d_jax import visualize
from coarse3d_jax.data import datasets
from coarse3d_jax.data import errors as data_errors
from coarse3d_jax.data import pixels
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers
from coarse3d_jax.data import weak_label_files
from coarse3d_jax.data import weak_labels

POINT_PAD = 16384  # KNN point buckets: one compile per bucket, not per scan.


class PredictError(Exception):
  """Input that cannot be predicted (message names the file)."""


class PredictorLike(Protocol):
  info: datasets.DatasetInfo

  def predict(self, range_images: np.ndarray) -> np.ndarray:
    ...


@dataclasses.dataclass
class PreparedScan:
  """One raw scan projected: points (N, 4); finite (N,) bool; row, col, depth (M,) for the M
  finite points; image (H, W, 5) (-1 empty); winner (H, W) index into the finite points or -1."""
  ref: Any
  points: np.ndarray
  finite: np.ndarray
  row: np.ndarray
  col: np.ndarray
  depth: np.ndarray
  image: np.ndarray
  winner: np.ndarray


def geometry_of(predictor: PredictorLike) -> dict[str, Any]:
  """Image geometry the model was trained with (height, width, fov_*): the one saved with the
  run when the predictor has it, else its dataset's default."""
  saved = getattr(predictor, "geometry", None)
  return dict(saved) if saved else dict(predictor.info.geometry)


def prepare_scan(dataset: str, ref, geometry: dict[str, Any]) -> PreparedScan:
  """Reads and projects one scan; raises PredictError when no point lands in the image."""
  points = readers.read_points(dataset, ref)
  finite = pixels.projectable(points)
  if not finite.any():
    raise PredictError(f"{ref.points_path}: none of its {len(points)} points is finite and "
                       "off the origin, so the scan has no pixel to predict")
  row, col, depth = pixels.scan_pixels(dataset, ref, points, finite, geometry)
  image, winner = projection.range_image_np(points[finite], row, col, depth,
                                            geometry["height"], geometry["width"])
  return PreparedScan(ref, points, finite, row, col, depth, image, winner)


def pixel_argmax(probs: np.ndarray) -> np.ndarray:
  """probs (B, H, W, C) -> (B, H, W) int32 in 1..C-1 (the ignore class is never predicted)."""
  return np.argmax(probs[..., 1:], axis=-1).astype(np.int32) + 1


def _padded_points(scans: Sequence[PreparedScan], batch: int, pad_to: int):
  """(B, P) depth, row, col, valid for the KNN; P = pad_to."""
  depth = np.zeros((batch, pad_to), np.float32)
  row, col = np.zeros((batch, pad_to), np.int32), np.zeros((batch, pad_to), np.int32)
  valid = np.zeros((batch, pad_to), bool)
  for i, s in enumerate(scans):
    n = len(s.depth)
    depth[i, :n], row[i, :n], col[i, :n], valid[i, :n] = s.depth, s.row, s.col, True
  return depth, row, col, valid


def point_labels(scans: Sequence[PreparedScan], images: np.ndarray, pixel_pred: np.ndarray,
                 num_classes: int, knn: dict | None, pad_to: int) -> list[np.ndarray]:
  """Learning-id labels (N,) for every stored point of every scan of the batch."""
  if knn is not None:
    depth, row, col, valid = _padded_points(scans, len(images), pad_to)
    voted = np.asarray(knn_lib.knn_labels(images[..., 0], pixel_pred, depth, row, col, valid,
                                          num_classes=num_classes, **knn))
  out = []
  for i, s in enumerate(scans):
    projected = voted[i, :len(s.depth)] if knn is not None else pixel_pred[i, s.row, s.col]
    labels = np.empty(len(s.points), np.int32)
    labels[s.finite] = projected
    if not s.finite.all():
      labels[~s.finite] = np.bincount(projected, minlength=num_classes).argmax()
    out.append(labels)
  return out


def _scan_name(ref) -> str:
  return str(ref.scan_id).replace("/", "_")


def write_prediction(dataset: str, info, out_dir, split: str, scan: PreparedScan,
                     labels: np.ndarray) -> pathlib.Path:
  """The benchmark file of one scan (KITTI-style raw uint32 ids, or nuScenes uint8 1..16)."""
  if dataset == "nuscenes":
    return submission.write_nuscenes_labels(out_dir, split, str(scan.ref.scan_id), labels,
                                        len(scan.points), info.num_classes)
  raw = submission.to_raw_labels(info.learning_map_inv, labels)
  return submission.write_kitti_labels(out_dir, scan.ref.sequence, scan.ref.frame, raw,
                                   len(scan.points))


def _point_labels(dataset: str, info, scan: PreparedScan) -> np.ndarray | None:
  """Learning-map labels of the scan's projectable points; None for a scan without labels."""
  if scan.ref.label_path is None:
    return None
  raw = readers.read_labels(dataset, scan.ref, len(scan.points))
  return datasets.map_labels(info, raw, source=str(scan.ref.label_path))[scan.finite]


def training_weak_labels(predictor: PredictorLike) -> dict[str, Any] | None:
  """The data_prep settings of the run's training data, read from its data_dir: dataset and
  label_ratio, protocol, voxel_size, seed, or for weak labels read from files, weak_labels,
  weak_labels_format, weak_labels_root; None when unavailable (then no weak-label panel)."""
  config = getattr(predictor, "config", None)
  path = pathlib.Path(getattr(config, "data_dir", "") or "/nonexistent") / ".data_prep"
  try:
    settings = json.loads((path / "config.json").read_text())
    if settings.get("weak_labels"):
      return {"dataset": settings["dataset"], "weak_labels": settings["weak_labels"],
              "weak_labels_format": settings.get("weak_labels_format", "auto"),
              "weak_labels_root": settings.get("weak_labels_root")}
    return {k: settings[k] for k in ("dataset", "label_ratio", "protocol", "voxel_size",
                                     "seed")}
  except (OSError, ValueError, KeyError):
    return None


def _file_weak_labels(info, scan: PreparedScan, weak: dict[str, Any]) -> np.ndarray | None:
  """The scan's weak labels read from its file, for its projectable points; None without one."""
  try:
    path = weak_label_files.find(scan.ref, weak["weak_labels"], weak["weak_labels_format"],
                                 weak["weak_labels_root"])
    given = weak_label_files.read(info, path, len(scan.points), scan.ref.points_path)
  except data_errors.DataError:
    return None
  return given[scan.finite]


def _pixel_weak_labels(dataset: str, scan: PreparedScan, label: np.ndarray | None,
                       weak: dict[str, Any] | None, info=None) -> np.ndarray | None:
  """The weak labels data_prep gave this scan, as a pixel image: drawn again from its point
  labels `label` (the draw is a function of (seed, dataset, scan id)), or read from its file
  (through `info`'s learning map, default the dataset's); None without labels, settings of
  this dataset or the file."""
  name = datasets.name_of(dataset)
  if weak is None or weak["dataset"] != name or label is None:
    return None
  if weak.get("weak_labels"):
    given = _file_weak_labels(info or datasets.resolve(dataset), scan, weak)
    return None if given is None else projection.pixel_values(given, scan.winner)
  rng = weak_labels.scan_rng(weak["seed"], name, scan.ref.scan_id)
  drawn = weak_labels.weak_labels(weak["protocol"], scan.points[scan.finite, :3], label,
                                  weak["label_ratio"], weak["voxel_size"], rng)
  return projection.pixel_values(drawn, scan.winner)


def write_extras(dataset: str, info, out_dir, scan: PreparedScan, pixel_pred: np.ndarray,
                 labels: np.ndarray, picture: bool, ply: bool,
                 weak: dict[str, Any] | None = None) -> None:
  """Optional picture (OUT/pictures/<id>.png) and colored cloud (OUT/ply/<id>.ply) of a scan.

  `weak`: the training data's data_prep settings, to draw the scan's weak labels too.
  """
  out_dir = pathlib.Path(out_dir)
  if picture:
    label = _point_labels(dataset, info, scan)
    truth = None if label is None else projection.pixel_values(label, scan.winner)
    panels = visualize.scan_panels(info.colors_rgb, scan.image[..., 0], pixel_pred, truth,
                                   _pixel_weak_labels(dataset, scan, label, weak, info),
                                   row_scale=2)
    visualize.write_png(out_dir / "pictures" / f"{_scan_name(scan.ref)}.png", panels)
  if ply:
    finite = scan.finite
    visualize.write_ply(out_dir / "ply" / f"{_scan_name(scan.ref)}.ply",
                        scan.points[finite, :3], info.colors_rgb[labels[finite]])


def _check_probs(probs: np.ndarray, batch: int, geometry: dict, num_classes: int) -> np.ndarray:
  probs = np.asarray(probs)
  expected = (batch, geometry["height"], geometry["width"], num_classes)
  if probs.shape != expected:
    raise PredictError(f"predictor returned {probs.shape}, expected {expected}")
  return probs


def _knn_params(knn: bool | dict) -> dict | None:
  if knn is False or knn is None:
    return None
  return {**knn_lib.DEFAULTS, **(knn if isinstance(knn, dict) else {})}


def predict_batch(scans: Sequence[PreparedScan], predictor: PredictorLike, batch_size: int,
                  geometry: dict, knn: dict | None, pad_to: int,
                  passes: test_time.Passes | None = None, batch_index: int = 0):
  """Model + labels of one batch -> (pixel_pred (B, H, W), [labels (N,) per scan], outputs):
  with `passes`, outputs are `predictor.distribution`'s (B, H, W, ...) arrays (TTA, MC
  dropout) and the labels their argmax; without, None."""
  num_classes = predictor.info.num_classes
  images = np.full((batch_size, geometry["height"], geometry["width"], 5), -1, np.float32)
  images[:len(scans)] = [s.image for s in scans]
  outputs = None
  if passes is None:
    probs = _check_probs(predictor.predict(images), batch_size, geometry, num_classes)
    pixel_pred = pixel_argmax(probs)
  else:
    outputs = predictor.distribution(images, passes, batch_index)
    pixel_pred = np.argmax(outputs["probs"], axis=-1).astype(np.int32) + 1
  return pixel_pred, point_labels(scans, images, pixel_pred, num_classes, knn, pad_to), outputs


def predict_scans(refs: Sequence[Any], dataset: str, predictor: PredictorLike, out_dir, *,
                  batch_size: int = 1, knn: bool | dict = False, split: str = "val",
                  pictures: int = 0, ply: int = 0, max_points: int = 0,
                  passes: test_time.Passes | None = None, save_probs: bool = False,
                  save_uncertainty: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Predicts every scan of `refs` and writes its benchmark file under `out_dir`.

  Args:
    refs: coarse3d_jax.data.readers.ScanRef list.
    dataset: reader name ('semantickitti', 'semanticposs', 'nuscenes', 'synthetic'), or the
      DatasetInfo of a custom dataset.
    predictor: `.info` (DatasetInfo; `info.geometry` is the image geometry) and
      `.predict(images (B, H, W, 5) raw, -1 on empty) -> probs (B, H, W, C)`.
    out_dir: output root (layouts in coarse3d_jax.submission).
    batch_size: B scans per model call (the last batch is padded, so shapes never change).
    knn: False, True (RangeNet++ defaults) or a dict of k/search/sigma/cutoff.
    split: split name (nuScenes output folders; submission.json is written for nuScenes).
    pictures, ply: number of leading scans to also draw as PNG panels / export as .ply.
    max_points: minimum KNN pad length (points per scan); grows in buckets when exceeded.
    passes: TTA transforms and MC dropout samples to average (`test_time.Passes`; the predictor
      needs `.distribution`); None: one plain pass.
    save_probs, save_uncertainty: also write per-point probabilities / entropy (and mutual
      information with MC dropout) beside each label file, and OUT/probabilities.json.
    log: progress/throughput printer.

  Returns:
    dict with num_scans, num_points, seconds, scans_per_second, model_seconds, files.
  """
  if not refs:
    raise PredictError("no scans to predict")
  info, geometry, knn_params = predictor.info, geometry_of(predictor), _knn_params(knn)
  weak = training_weak_labels(predictor) if pictures else None
  saving = save_probs or save_uncertainty
  passes = test_time.Passes() if saving and passes is None else passes
  write_outputs = _outputs_writer(save_probs, save_uncertainty, bool(knn_params))
  batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
  prepare = lambda batch: [prepare_scan(dataset, ref, geometry) for ref in batch]
  files, num_points, model_seconds, pad_to, start = [], 0, 0.0, max_points, time.time()
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(prepare, batches[0])
    for index in range(len(batches)):
      scans = pending.result()
      if index + 1 < len(batches):  # Read and project the next batch during this one.
        pending = pool.submit(prepare, batches[index + 1])
      tic = time.time()
      pad_to = max(pad_to, -(-max(len(s.depth) for s in scans) // POINT_PAD) * POINT_PAD)
      pixel_pred, labels, outputs = predict_batch(scans, predictor, batch_size, geometry,
                                                  knn_params, pad_to, passes, index)
      model_seconds += time.time() - tic
      for i, scan in enumerate(scans):
        files.append(write_prediction(dataset, info, out_dir, split, scan, labels[i]))
        files += write_outputs(files[-1], outputs, i, scan, labels[i])
        rank = index * batch_size + i
        write_extras(dataset, info, out_dir, scan, pixel_pred[i], labels[i],
                     rank < pictures, rank < ply, weak)
        num_points += len(scan.points)
      _log_progress(log, index, len(batches), min((index + 1) * batch_size, len(refs)),
                    len(refs), start)
  if dataset == "nuscenes":
    files.append(submission.write_nuscenes_submission_json(out_dir, split))
  if saving:
    files.append(point_outputs.write_description(out_dir, info, passes, save_probs,
                                                 save_uncertainty, bool(knn_params),
                                                 getattr(predictor, "step", None)))
  seconds = time.time() - start
  summary = {"num_scans": len(refs), "num_points": num_points, "seconds": seconds,
             "scans_per_second": len(refs) / seconds, "model_seconds": model_seconds,
             "files": files}
  log(f"done: {len(refs)} scans ({num_points} points) in {seconds:.1f} s = "
      f"{summary['scans_per_second']:.2f} scans/s end to end; model{'+KNN' * bool(knn_params)} "
      f"{len(refs) / max(model_seconds, 1e-9):.2f} scans/s")
  return summary


def _outputs_writer(save_probs: bool, save_uncertainty: bool, knn: bool) -> Callable:
  """`(label_path, batch outputs, index in the batch, scan, labels) -> [files]`: the scan's
  per-point probability / uncertainty files (none unless asked for)."""
  def write(label_path, outputs, i: int, scan: PreparedScan, labels: np.ndarray):
    if not (save_probs or save_uncertainty):
      return []
    return point_outputs.write_scan(label_path, {k: v[i] for k, v in outputs.items()}, scan.row,
                                    scan.col, scan.finite, None if knn else labels, save_probs,
                                    save_uncertainty)
  return write


def _log_progress(log, index: int, num_batches: int, done: int, total: int, start: float):
  if index == 0 or index + 1 == num_batches or index % 50 == 0:
    log(f"predicted {done}/{total} scans, {done / max(time.time() - start, 1e-9):.2f} scans/s")


def define_flags(fv: flags.FlagValues, argv) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.", flag_values=fv)
  flags.DEFINE_string("raw_dir", None, "Raw dataset root.", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Where the prediction files go.", flag_values=fv)
  flags.DEFINE_string("split", "val", "Split to predict (val, test, ...).", flag_values=fv)
  flags.DEFINE_list("sequences", None, "Comma-separated sequences; overrides --split.",
                    flag_values=fv)
  flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.", flag_values=fv)
  flags.DEFINE_bool("knn", False, "RangeNet++ KNN post-processing.", flag_values=fv)
  flags.DEFINE_bool("zip", False, "Pack OUT/submission.zip (SemanticKITTI test split) and "
                    "validate it.", flag_values=fv)
  flags.DEFINE_integer("batch_size", 1, "Scans per model call.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("pictures", 0, "PNG panels of the first N scans.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_integer("ply", 0, "Colored .ply of the first N scans.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_bool("tta", False, "Test-time augmentation: average the class probabilities over "
                    "the set {identity, y-mirror} x {yaw rolls by k * 360 / N degrees, k < N} "
                    "(N = --tta_rolls; 2 N passes), the exact range-image transforms of training's "
                    "augmentation, each mapped back to the scan's pixels.", flag_values=fv)
  flags.DEFINE_integer("tta_rolls", 1, "N yaw rolls of --tta (whole columns: N must divide the "
                       "image width); 1: the mirror only.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("mc_dropout", 0, "MC dropout: average N passes with dropout sampled "
                       "(BatchNorm in inference mode); needs a model with dropout. 0: off.",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("mc_seed", 0, "Seed of the MC dropout masks.", flag_values=fv)
  flags.DEFINE_bool("save_probs", False, "Also write <scan>.probs.npy beside each label file: "
                    "(N, C-1) float16 probabilities of classes 1..C-1, named in "
                    "OUT/probabilities.json.", flag_values=fv)
  flags.DEFINE_bool("save_uncertainty", False, "Also write <scan>.entropy.npy (and with "
                    "--mc_dropout <scan>.mutual_information.npy): (N,) float32, nats.",
                    flag_values=fv)
  flags.mark_flags_as_required(["workdir", "raw_dir", "out_dir"], flag_values=fv)


def _load_predictor(workdir: str, checkpoint: str | int) -> PredictorLike:
  from coarse3d_jax import inference  # pylint: disable=g-import-not-at-top  # Heavy; CLI only.
  return inference.load_predictor(workdir, checkpoint)


def passes_from_flags(args: flags.FlagValues, predictor: PredictorLike
                      ) -> test_time.Passes | None:
  """What --tta, --tta_rolls, --mc_dropout (and the --save flags) ask for; None: plain."""
  if not (args.tta or args.mc_dropout or args.save_probs or args.save_uncertainty):
    return None
  config = getattr(predictor, "config", None)
  if args.mc_dropout and config is not None and config.model.get("dropout_rate") == 0:
    raise PredictError(f"--mc_dropout: {args.workdir} was trained without dropout "
                       "(config.model.dropout_rate = 0), so every sample would be the same")
  transforms = test_time.IDENTITY
  if args.tta:
    try:
      transforms = test_time.transform_set(True, args.tta_rolls, geometry_of(predictor)["width"])
    except ValueError as e:
      raise PredictError(f"--tta_rolls: {e}") from None
  return test_time.Passes(transforms, args.mc_dropout, args.mc_seed)


def run(args: flags.FlagValues) -> dict[str, Any]:
  """The CLI body (raises the project's error classes on bad input)."""
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  if args.zip and args.split != "test":
    raise PredictError("--zip packs a SemanticKITTI test submission: use it with --split test")
  if args.tta_rolls > 1 and not args.tta:
    raise PredictError("--tta_rolls sets the yaw rolls of --tta: add --tta")
  predictor = _load_predictor(args.workdir, checkpoint)
  passes = passes_from_flags(args, predictor)
  name = predictor.info.name
  if args.zip and name != "semantickitti":
    raise PredictError(f"--zip is for SemanticKITTI test submissions, this model is {name}")
  # A custom dataset is known only by the description its run saved.
  dataset = name if name in datasets.NAMES else predictor.info
  sequences = args.sequences or None
  refs = readers.list_scans(dataset, args.raw_dir, None if sequences else args.split, sequences)
  summary = predict_scans(refs, dataset, predictor, args.out_dir, batch_size=args.batch_size,
                          knn=args.knn, split=args.split, pictures=args.pictures, ply=args.ply,
                          passes=passes, save_probs=args.save_probs,
                          save_uncertainty=args.save_uncertainty)
  if args.zip:
    bundle = submission.zip_kitti_submission(args.out_dir,
                                         pathlib.Path(args.out_dir) / "submission.zip")
    submission.validate_kitti_submission(bundle, args.raw_dir)
    print(f"{bundle}: passes the semantic-kitti-api validate_submission checks")
  return summary


def _errors() -> tuple[type[BaseException], ...]:
  from coarse3d_jax import checkpoints  # pylint: disable=g-import-not-at-top  # Heavy; CLI only.
  return (PredictError, submission.ExportError, submission.SubmissionError,
          data_errors.DataError, checkpoints.CheckpointError)


def program() -> startup.Program:
  return startup.Program("coarse3d_jax.predict", __doc__, define_flags, run, _errors(),
                         multi_process=False)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI on argv (without the program name; default sys.argv[1:])."""
  argv = sys.argv[1:] if argv is None else argv
  return startup.run(program(), ["predict", *argv])


if __name__ == "__main__":
  sys.exit(main())
