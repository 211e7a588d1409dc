"""Conversion of raw scans to TFRecord shards: per-scan work, worker pool, resume, metadata.

Scans of a split are sorted and cut into shards of `shard_size` consecutive scans, so the shard
of a scan depends only on the input. Worker processes (spawn) convert scans to serialized
examples; the main process writes them in order, shard by shard, each under a temporary name that
is renamed once complete, after its statistics are saved next to it (`.data_prep/`). A rerun skips
shards whose final file exists and converts the others; a different configuration or input in
the same output directory is refused rather than mixed.

Weak labels are drawn per scan (coarse3d_jax.data.weak_labels), or read from per-scan files
(`Settings.weak_labels`, coarse3d_jax.data.weak_label_files), and can be written out as such
files too (`Settings.write_weak_labels`), by the worker that converts the scan, before its
shard is committed.
"""
import dataclasses
import hashlib
import json
import multiprocessing
import pathlib
import sys
import time
from typing import Any, Iterator

import numpy as np

from coarse3d_jax import files
from coarse3d_jax.data import dataset_config
from coarse3d_jax.data import datasets
from coarse3d_jax.data import pixels
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers
from coarse3d_jax.data import weak_label_files
from coarse3d_jax.data import weak_labels
from coarse3d_jax.data.errors import DataError
from data_prep import writer

STATE_DIR = ".data_prep"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a scan's conversion depends on (besides the scan).

  Weak labels are drawn (label_ratio, protocol, voxel_size, seed) unless `weak_labels` names the
  folder of weak-label files to read instead (then those four are None).
  """
  dataset: str
  label_ratio: float | None = 0.001
  protocol: str | None = "voxel"
  voxel_size: float | None = 0.06
  seed: int | None = 0
  weak_labels: str | None = None  # Folder sequences/NN/<weak_labels>/ of files to read.
  weak_labels_format: str = "auto"  # weak_label_files.FORMATS.
  weak_labels_root: str | None = None  # Where those folders live; None: the raw dataset.
  write_weak_labels: str | None = None  # Also write every scan's weak labels to this folder.
  info: datasets.DatasetInfo | None = None  # A custom dataset's description (else the table).

  def dataset_info(self) -> datasets.DatasetInfo:
    return self.info if self.info is not None else datasets.get_info(self.dataset)


@dataclasses.dataclass(frozen=True)
class Shard:
  split: str
  index: int
  num_shards: int
  refs: tuple[readers.ScanRef, ...]
  labeled: bool
  weak: bool = True  # Labeled scans get weak labels (not in a split without weak-label files).


# ----------------------------------------------------------------------------- one scan
def scan_weak_labels(settings: Settings, info: datasets.DatasetInfo, ref: readers.ScanRef,
                     points: np.ndarray, label: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """Weak labels (M,) uint8 of the M kept points: read from the scan's file, or drawn.

  Args:
    points: (M, 4) kept points; label: (M,) their learning ids; keep: (N,) bool over the file.
  """
  if settings.weak_labels:
    path = weak_label_files.find(ref, settings.weak_labels, settings.weak_labels_format,
                                 settings.weak_labels_root)
    return weak_label_files.read(info, path, len(keep), ref.points_path)[keep]
  if not len(points):
    return np.zeros_like(label)
  rng = weak_labels.scan_rng(settings.seed, settings.dataset, ref.scan_id)
  return weak_labels.weak_labels(settings.protocol, points[:, :3], label, settings.label_ratio,
                                 settings.voxel_size, rng)


def write_weak_label_file(settings: Settings, info: datasets.DatasetInfo, ref: readers.ScanRef,
                          weak: np.ndarray, keep: np.ndarray) -> None:
  """The `.label` file of the weak labels (M,) of the kept points: one entry per point of the
  scan file, 0 on the dropped ones, so that reading it back gives the same weak labels."""
  full = np.zeros(len(keep), np.uint8)
  full[keep] = weak
  folder = weak_label_files.sequence_dir(ref, settings.write_weak_labels,
                                         settings.weak_labels_root)
  weak_label_files.write(info, folder / f"{ref.frame}.label", full)


def convert_scan(settings: Settings, ref: readers.ScanRef, labeled: bool,
                 has_weak: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
  """One scan -> (TFRecord example, additive statistics).

  Points with non-finite coordinates or at the origin are dropped (and counted) with their
  labels and weak labels; all arrays of the example refer to the kept points, in file order.
  `has_weak`: False for a labeled scan that gets no weak labels (no weak-label file).
  """
  info = settings.dataset_info()
  points = readers.read_points(info, ref)
  if labeled:
    raw = readers.read_labels(info, ref, len(points))
    label = datasets.map_labels(info, raw, source=str(ref.label_path))
  else:
    label = np.zeros(len(points), np.uint8)
  keep = pixels.projectable(points)
  row, col, depth = pixels.scan_pixels(info, ref, points, keep, info.geometry)
  dropped = len(points) - len(row)
  if dropped:
    points, label = points[keep], label[keep]
  weak = np.zeros_like(label)
  if labeled and has_weak:
    weak = scan_weak_labels(settings, info, ref, points, label, keep)
    if settings.write_weak_labels:
      write_weak_label_file(settings, info, ref, weak, keep)
  image, winner = projection.range_image_np(points, row, col, depth, info.height, info.width)
  example = {
      "scan_id": ref.scan_id, "range_image": image,
      "label": projection.pixel_values(label, winner, np.uint8),
      "weak_label": projection.pixel_values(weak, winner, np.uint8), "points": points,
      "point_label": label, "point_weak_label": weak, "point_row": row.astype(np.int32),
      "point_col": col.astype(np.int32)}
  return example, _scan_stats(info.num_classes, example, dropped)


def _scan_stats(num_classes: int, example: dict[str, Any], dropped: int) -> dict[str, Any]:
  image = example["range_image"]
  # (5, M) float64 channels of the M valid pixels; row sums avoid BLAS thread start-up.
  valid = np.ascontiguousarray(image[image[..., 0] >= 0].T, np.float64)
  weak = example["point_weak_label"]
  return {"num_scans": 1, "num_points": len(weak), "num_weak_points": int((weak > 0).sum()),
          "num_nonfinite_dropped": dropped,
          "class_counts": np.bincount(example["point_label"], minlength=num_classes),
          "weak_class_counts": np.bincount(weak, minlength=num_classes),
          "num_pixels": valid.shape[1], "pixel_sum": valid.sum(axis=1),
          "pixel_sumsq": np.einsum("cm,cm->c", valid, valid)}


# ----------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_worker(settings: Settings) -> None:
  info = settings.dataset_info()
  _WORKER["settings"] = settings
  _WORKER["encode"] = writer.ExampleEncoder(info.height, info.width)


def _work(task: tuple[readers.ScanRef, bool, bool]) -> tuple[bytes, dict[str, Any]]:
  """Worker entry point: a scan -> (serialized example, statistics)."""
  ref, labeled, has_weak = task
  example, stats = convert_scan(_WORKER["settings"], ref, labeled, has_weak)
  return _WORKER["encode"](example), stats


def _results(settings: Settings, tasks: list, workers: int) -> Iterator:
  """Results of `_work` in task order, from `workers` spawned processes (or this one)."""
  if workers <= 1 or len(tasks) <= 1:
    _init_worker(settings)
    yield from map(_work, tasks)
    return
  context = multiprocessing.get_context("spawn")
  with context.Pool(min(workers, len(tasks)), _init_worker, (settings,)) as pool:
    try:
      yield from pool.imap(_work, tasks, chunksize=1)
    finally:
      pool.terminate()


# ----------------------------------------------------------------------------- planning
def plan_shards(splits: dict[str, list[readers.ScanRef]], shard_size: int,
                without_weak: frozenset[str] = frozenset()) -> list[Shard]:
  """Deterministic shards: consecutive runs of `shard_size` sorted scans per split.

  `without_weak`: labeled splits whose scans get no weak labels.
  """
  shards = []
  for split, refs in splits.items():
    num = -(-len(refs) // shard_size)
    shards += [Shard(split, i, num, tuple(refs[i * shard_size:(i + 1) * shard_size]),
                     labeled=split != "test", weak=split not in without_weak)
               for i in range(num)]
  return shards


def _settings_record(settings: Settings) -> dict[str, Any]:
  """The settings as JSON: the weak-label file options only when used (so that directories
  converted before they existed still resume), a custom dataset's whole description."""
  record = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.name != "info" and (f.name in ("dataset", "label_ratio", "protocol",
                                                "voxel_size", "seed")
                                     or getattr(settings, f.name) != f.default)}
  if settings.info is not None:
    record["dataset_description"] = dataset_config.to_dict(settings.info)
  return record


def fingerprint(settings: Settings, shard_size: int, splits: dict[str, list],
                without_weak: frozenset[str] = frozenset()) -> dict[str, Any]:
  """What must match for a rerun to reuse the shards of an output directory."""
  ids = {s: hashlib.sha256("\n".join(r.scan_id for r in refs).encode()).hexdigest()[:16]
         for s, refs in splits.items()}
  record = {**_settings_record(settings), "shard_size": shard_size,
            "splits": {s: {"num_scans": len(refs), "scan_ids_sha256": ids[s]}
                       for s, refs in splits.items()}}
  if without_weak:
    record["splits_without_weak_labels"] = sorted(without_weak)
  return record


def prepare_out_dir(out_dir: pathlib.Path, config: dict[str, Any]) -> pathlib.Path:
  """Creates OUT, refuses a different earlier configuration, removes stale temporary files."""
  state = out_dir / STATE_DIR
  try:
    state.mkdir(parents=True, exist_ok=True)
    probe = state / f"probe.tmp-{id(config)}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise DataError(f"{out_dir}: cannot write the output directory ({e.strerror})") from None
  for folder in (out_dir, state):
    for path in folder.iterdir():
      if writer.is_temp(path):
        path.unlink()
  config_path = state / "config.json"
  if config_path.exists():
    old = json.loads(config_path.read_text())
    if old != json.loads(json.dumps(config)):
      changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
      raise DataError(f"{out_dir}: holds a conversion with other settings or inputs "
                      f"({', '.join(changed)} differ); use another --out-dir or delete it")
  files.atomic_write_json(config_path, config, indent=1)
  return state


def _stats_path(state: pathlib.Path, shard: Shard) -> pathlib.Path:
  return state / f"{shard.split}-{shard.index:05d}-of-{shard.num_shards:05d}.json"


def _shard_path(out_dir: pathlib.Path, dataset: str, shard: Shard) -> pathlib.Path:
  return out_dir / writer.shard_name(dataset, shard.split, shard.index, shard.num_shards)


def shard_done(out_dir: pathlib.Path, state: pathlib.Path, dataset: str, shard: Shard) -> bool:
  return _shard_path(out_dir, dataset, shard).exists() and _stats_path(state, shard).exists()


# ----------------------------------------------------------------------------- progress
class Progress:
  """A progress line with scans/s and ETA on stderr, at most every `every` seconds."""

  def __init__(self, total: int, every: float = 1.0, stream=None):
    self.total, self.done, self.every = total, 0, every
    self.stream = stream or sys.stderr
    self.start = self.last = time.monotonic()
    self.tty = getattr(self.stream, "isatty", lambda: False)()

  def update(self, count: int = 1) -> None:
    self.done += count
    now = time.monotonic()
    if now - self.last >= self.every or self.done == self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      end = "\r" if self.tty and self.done < self.total else "\n"
      print(f"  {self.done}/{self.total} scans  {rate:.2f} scans/s  ETA {_duration(eta)}",
            end=end, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# ----------------------------------------------------------------------------- orchestration
def resolve_splits(dataset: readers.Dataset, raw_dir,
                   split_sequences: dict[str, list[str]] | None = None
                   ) -> dict[str, list[readers.ScanRef]]:
  """Split name -> scans: the given sequences per split, else the official splits.

  The official test split is left out when none of its sequences is present. Every split must
  have scans, and every split but 'test' must have labels.
  """
  info = datasets.resolve(dataset)
  if split_sequences:
    splits = {name: readers.list_scans(info, raw_dir, sequences=seqs)
              for name, seqs in split_sequences.items()}
  else:
    if not info.splits:
      raise DataError(f"{info.name} has no official splits: name them with "
                      "--split NAME=SEQ[,SEQ...] (or add splits: to its dataset config)")
    try:
      splits = {name: readers.list_scans(info, raw_dir, split=name) for name in info.splits}
    except DataError as e:
      raise DataError(f"{e}; the official {info.name} splits need it (convert other sequences "
                      "with --split NAME=SEQ,...)") from None
    if not splits.get("test", True):
      del splits["test"]
  for name, refs in splits.items():
    if not refs:
      what = ",".join(split_sequences[name]) if split_sequences else f"official {name}"
      raise DataError(f"{raw_dir}: split {name!r} has no scans (sequences {what})")
    if name != "test":
      _check_labeled(name, refs)
  return splits


def _check_labeled(split: str, refs: list[readers.ScanRef]) -> None:
  for ref in refs:
    if ref.label_path is None:
      where = (ref.points_path.parent.parent / "labels" if ref.points_path.parent.name ==
               "velodyne" else ref.points_path)
      raise DataError(f"{where}: missing labels (split {split!r} needs them; only 'test' is "
                      "unlabeled)")


def splits_without_weak_files(settings: Settings, splits: dict[str, list[readers.ScanRef]]
                              ) -> frozenset[str]:
  """Labeled splits none of whose sequences has the weak-label folder: they get no weak labels
  (ScribbleKITTI has scribbles for the training sequences only).

  Raises:
    DataError: a split where some sequences have the folder and others not, or no split with it.
  """
  without, first_missing = set(), None
  for name, refs in splits.items():
    if name == "test":
      continue
    folders = {ref.sequence: weak_label_files.sequence_dir(ref, settings.weak_labels,
                                                           settings.weak_labels_root)
               for ref in refs}
    missing = [folder for folder in folders.values() if not folder.is_dir()]
    if len(missing) == len(folders):
      without.add(name)
      first_missing = first_missing or missing[0]
    elif missing:
      raise DataError(f"{missing[0]}: missing weak-label folder (other sequences of split "
                      f"{name!r} have one)")
  if first_missing is not None and without == set(splits) - {"test"}:
    raise DataError(f"{first_missing}: missing weak-label folder (no labeled split has "
                    f"{settings.weak_labels}/ folders)")
  return frozenset(without)


def _write_shards(settings: Settings, out_dir: pathlib.Path, state: pathlib.Path,
                  pending: list[Shard], workers: int, log) -> None:
  tasks = [(ref, shard.labeled, shard.weak) for shard in pending for ref in shard.refs]
  progress = Progress(len(tasks), stream=log)
  results = _results(settings, tasks, workers)
  try:
    for shard in pending:
      shard_writer = writer.ShardWriter(_shard_path(out_dir, settings.dataset, shard))
      try:
        stats = writer.empty_stats(settings.dataset_info().num_classes)
        for ref, (record, scan_stats) in zip(shard.refs, results):
          shard_writer.write(record)
          stats = writer.add_stats(stats, scan_stats)
          if scan_stats["num_nonfinite_dropped"]:
            print(f"warning: {ref.points_path}: dropped {scan_stats['num_nonfinite_dropped']} "
                  "points with NaN/inf coordinates or at the origin", file=log)
          progress.update()
        files.atomic_write_json(_stats_path(state, shard), writer.stats_to_json(stats),
                                 indent=1)
        shard_writer.commit()
      except BaseException:
        shard_writer.abort()
        raise
  finally:
    results.close()


def _finish(settings: Settings, out_dir: pathlib.Path, state: pathlib.Path,
            shards: list[Shard]) -> dict[str, Any]:
  """Merges shard statistics into stats.json, writes the TFDS metadata and dataset.json."""
  info = settings.dataset_info()
  totals, lengths, sizes = {}, {}, {}
  for shard in shards:
    part = writer.stats_from_json(json.loads(_stats_path(state, shard).read_text()))
    totals[shard.split] = writer.add_stats(totals.get(shard.split, writer.empty_stats(
        info.num_classes)), part)
    lengths.setdefault(shard.split, []).append(len(shard.refs))
    sizes[shard.split] = sizes.get(shard.split, 0) + _shard_path(
        out_dir, settings.dataset, shard).stat().st_size
  poss_tags = settings.dataset == "semanticposs" and any(
      r.tag_path is not None for s in shards for r in s.refs)
  stats = {"dataset": settings.dataset, "label_ratio": settings.label_ratio,
           "protocol": settings.protocol, "voxel_size": settings.voxel_size,
           "seed": settings.seed, "weak_labels": settings.weak_labels,
           "height": info.height, "width": info.width,
           "projection": "tag" if poss_tags else "spherical",
           "splits": {s: writer.finalize_stats(t) for s, t in totals.items()}}
  writer.write_tfds_metadata(
      out_dir, writer.features(info.height, info.width), lengths, sizes,
      description=f"{settings.dataset} range images from python -m data_prep, "
                  f"{_weak_source(settings)}")
  dataset_config.write_description(out_dir, info)
  files.atomic_write_json(out_dir / writer.STATS_FILE, stats, indent=1)
  return stats


def _weak_source(settings: Settings) -> str:
  if settings.weak_labels:
    return f"weak labels read from the {settings.weak_labels}/ files"
  return (f"label ratio {settings.label_ratio} ({settings.protocol} protocol, voxel "
          f"{settings.voxel_size} m, seed {settings.seed})")


def run(settings: Settings, raw_dir, out_dir, split_sequences=None, workers: int = 1,
        shard_size: int = 64, log=None) -> dict[str, Any]:
  """Converts the splits of `raw_dir` into `out_dir`; returns the stats.json content.

  Raises:
    DataError: bad input or unwritable output (nothing half-written is left behind).
  """
  log = log or sys.stderr
  start = time.monotonic()
  out_dir = pathlib.Path(out_dir)
  splits = resolve_splits(settings.dataset_info(), raw_dir, split_sequences)
  without_weak = frozenset()
  if settings.weak_labels:
    without_weak = splits_without_weak_files(settings, splits)
    for name in sorted(without_weak):
      print(f"data_prep: split {name!r} has no {settings.weak_labels}/ folders: its scans get no "
            "weak labels (evaluation uses the full labels)", file=log)
  state = prepare_out_dir(out_dir, fingerprint(settings, shard_size, splits, without_weak))
  shards = plan_shards(splits, shard_size, without_weak)
  pending = [s for s in shards if not shard_done(out_dir, state, settings.dataset, s)]
  print(f"data_prep: {settings.dataset} {', '.join(f'{k}={len(v)}' for k, v in splits.items())}"
        f" scans, {len(pending)}/{len(shards)} shards to write, {workers} worker(s)", file=log)
  _write_shards(settings, out_dir, state, pending, workers, log)
  stats = _finish(settings, out_dir, state, shards)
  labeled = [s for name, s in stats["splits"].items() if name != "test"]
  points = sum(s["num_points"] for s in labeled)
  weak = sum(s["num_weak_points"] for s in labeled)
  scans = sum(s["num_scans"] for s in stats["splits"].values())
  print(f"data_prep: {scans} scans ({len(shards) - len(pending)} of {len(shards)} shards were "
        f"already done), {points:,} labeled-split points, {100 * weak / max(points, 1):.3f}% "
        f"weakly labeled, "
        f"{time.monotonic() - start:.1f} s -> {out_dir}", file=log)
  return stats
