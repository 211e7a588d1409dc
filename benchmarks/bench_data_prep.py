"""data_prep speed: per-scan stage times on one core, and end-to-end scans/s with N workers.

    COARSE3D_SAMPLE_DIR=/path/to/semantickitti_sample python benchmarks/bench_data_prep.py
        [--raw-dir DIR] [--repeats 20] [--scans 64] [--workers 1,2] [--no-reference]

Times are CPU time (process_time / getrusage), which other jobs on a shared machine disturb far
less than wall time; wall-clock rates are printed too.
Stages of one scan (medians over --repeats, per scan of sequence 00 of RAW):
read (points + labels + label map), weak labels (voxel protocol, 0.1%), projection (pixels,
range image, label images), statistics, serialization (tf.train.Example bytes).
"emulated reference weak labels" times the reference script's algorithm
(tasks/prepare_data/gen_sem_weak_label_rand_grid.py: a Python call per point to look up its
voxel, then a scan over all points per drawn voxel) with numpy standing in for Open3D's
`get_voxel`; the reference itself (with Open3D) is quoted at ~0.75 s per scan.
End to end: `convert.run` on --scans scans (the sample scans repeated through symlinks) with
each worker count, including TFRecord writing: wall scans/s, the steady-state wall rate (without
the one-time start-up: TensorFlow import for the writer, worker processes), and the CPU time per
scan summed over all processes (start-up subtracted with a 2-scan run), whose inverse is the
throughput per core that N idle cores would multiply.
"""
import argparse
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import hardware
from coarse3d_jax.data import datasets
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers
from coarse3d_jax.data import weak_labels
from data_prep import convert
from data_prep import writer


def median_ms(fn, repeats: int) -> float:
  """Median CPU milliseconds of fn() (CPU time: robust to other jobs on a shared machine)."""
  times = []
  for _ in range(repeats):
    start = time.process_time()
    fn()
    times.append(time.process_time() - start)
  return 1e3 * statistics.median(times)


def cpu_seconds() -> float:
  """CPU seconds of this process and of its finished children."""
  own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def emulated_reference_weak_labels(points: np.ndarray, labels: np.ndarray, ratio: float,
                                   voxel: float, rng: np.random.Generator) -> np.ndarray:
  """The reference algorithm, loops included (numpy in place of Open3D's voxel lookup)."""
  origin = points[:, :3].astype(np.float64).min(0) - voxel / 2
  point2voxel = np.asarray([np.floor((pt - origin) / voxel).astype(int) for pt in
                            points[:, :3].astype(np.float64)])
  coords, first = np.unique(point2voxel, return_index=True, axis=0)
  voxel_label = labels[first]
  count = max(1, int(np.around(len(points) * ratio)))
  sample = rng.choice(np.where(voxel_label > 0)[0], count, replace=False)
  weak = np.zeros_like(labels)
  for i, coord in zip(sample, coords[sample]):
    weak[(point2voxel == coord).min(1).nonzero()[0]] = voxel_label[i]
  return weak


def stage_times(ref: readers.ScanRef, repeats: int, reference: bool) -> dict[str, float]:
  info = datasets.get_info("semantickitti")
  settings = convert.Settings("semantickitti")
  encode = writer.ExampleEncoder(info.height, info.width)
  points = readers.read_points("semantickitti", ref)
  labels = datasets.map_labels(info, readers.read_labels("semantickitti", ref, len(points)))
  rng = weak_labels.scan_rng(0, "semantickitti", ref.scan_id)
  example, _ = convert.convert_scan(settings, ref, True)

  def project():
    row, col, depth = projection.project_np(points[:, :3], **info.geometry)
    _, winner = projection.range_image_np(points, row, col, depth, info.height, info.width)
    for _ in range(2):  # label and weak label images
      convert._pixel_values(labels, winner)  # pylint: disable=protected-access

  times = {
      "read": median_ms(lambda: datasets.map_labels(info, readers.read_labels(
          "semantickitti", ref, len(readers.read_points("semantickitti", ref)))), repeats),
      "weak labels": median_ms(lambda: weak_labels.voxel_weak_labels(
          points[:, :3], labels, 0.001, 0.06, rng), repeats),
      "projection": median_ms(project, repeats),
      "statistics": median_ms(lambda: convert._scan_stats(  # pylint: disable=protected-access
          info.num_classes, example, 0), repeats),
      "serialization": median_ms(lambda: encode(example), repeats),
      "convert_scan + serialization (all)": median_ms(
          lambda: encode(convert.convert_scan(settings, ref, True)[0]), repeats),
  }
  if reference:
    times["emulated reference weak labels"] = median_ms(lambda: emulated_reference_weak_labels(
        points, labels, 0.001, 0.06, rng), max(1, repeats // 10))
  return times


def replicated_tree(refs: list[readers.ScanRef], count: int, root: pathlib.Path) -> pathlib.Path:
  """A KITTI tree of `count` scans that are symlinks to the given ones."""
  seq = root / "sequences" / "00"
  (seq / "velodyne").mkdir(parents=True)
  (seq / "labels").mkdir()
  for i in range(count):
    ref = refs[i % len(refs)]
    (seq / "velodyne" / f"{i:06d}.bin").symlink_to(ref.points_path)
    (seq / "labels" / f"{i:06d}.label").symlink_to(ref.label_path)
  return root


def end_to_end(refs, scans: int, workers: int) -> tuple[float, float, float]:
  """(wall seconds, CPU seconds, steady-state scans/s) of a conversion of `scans` scans.

  CPU seconds add up the main process and the worker processes. Steady state: scans per wall
  second between the first and the last scan handed to the writer, i.e. without the one-time
  start-up (TensorFlow import for the writer, worker processes).
  """
  stamps = []
  produce = convert._results  # pylint: disable=protected-access

  def timed(*args, **kwargs):
    for item in produce(*args, **kwargs):
      stamps.append(time.perf_counter())
      yield item

  with tempfile.TemporaryDirectory() as tmp:
    raw = replicated_tree(refs, scans, pathlib.Path(tmp) / "raw")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    convert._results = timed  # pylint: disable=protected-access
    try:
      with open(os.devnull, "w") as quiet:
        convert.run(convert.Settings("semantickitti"), raw, pathlib.Path(tmp) / "out",
                    {"train": ["00"]}, workers=workers, shard_size=16, log=quiet)
    finally:
      convert._results = produce  # pylint: disable=protected-access
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
  steady = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9) if len(stamps) > 1 else 0.0
  return wall, cpu, steady


def scaling_rows(refs, scans: int, workers_list: list[int]) -> list[str]:
  """Wall and CPU figures per worker count; CPU per scan leaves out start-up: the difference
  with a 2-scan run, both after a first run has paid the one-time imports of this process."""
  rows = []
  end_to_end(refs, 2, 1)  # TensorFlow (the shard writer) imported once, in this process.
  for workers in workers_list:
    _, cpu_small, _ = end_to_end(refs, 2, workers)
    wall, cpu, steady = end_to_end(refs, scans, workers)
    per_scan = (cpu - cpu_small) / (scans - 2)
    rows.append(f"| {workers} | {scans / wall:.1f} | {steady:.1f} | {1e3 * per_scan:.0f} | "
                f"{1 / per_scan:.1f} |")
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--raw-dir", default=os.environ.get("COARSE3D_SAMPLE_DIR"),
                      help="a SemanticKITTI tree with sequence 00 (default $COARSE3D_SAMPLE_DIR)")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--scans", type=int, default=64)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--no-reference", action="store_true")
  args = parser.parse_args()
  if not args.raw_dir:
    parser.error("pass --raw-dir or set COARSE3D_SAMPLE_DIR to a SemanticKITTI tree")
  refs = readers.list_scans("semantickitti", args.raw_dir, sequences=["00"])
  print(f"# data_prep benchmark: {hardware.describe()}")
  print(f"# {len(refs)} real scans of {args.raw_dir}, "
        f"{np.mean([r.points_path.stat().st_size / 16 for r in refs]):.0f} points on average\n")
  rows = [stage_times(ref, args.repeats, not args.no_reference) for ref in refs]
  print("| stage (one core) | CPU ms per scan (median) |\n|---|---|")
  for stage in rows[0]:
    print(f"| {stage} | {np.mean([r[stage] for r in rows]):.1f} |")
  total = np.mean([r["convert_scan + serialization (all)"] for r in rows])
  print(f"\nper core: {1e3 / total:.1f} scans/s for the whole conversion of a scan; "
        f"{750 / total:.0f}x faster than the reference's ~750 ms per scan for its weak labels "
        "alone")
  if "emulated reference weak labels" in rows[0]:
    emulated = np.mean([r["emulated reference weak labels"] for r in rows])
    print(f"(and {emulated / total:.0f}x faster than the emulated reference weak labels measured "
          "here)")
  print(f"\n| workers | wall scans/s over {args.scans} scans (start-up included) | steady-state "
        "wall scans/s | CPU ms per scan (all processes) | scans per CPU-second |")
  print("|---|---|---|---|---|")
  for row in scaling_rows(refs, args.scans, [int(w) for w in args.workers.split(",")]):
    print(row, flush=True)


if __name__ == "__main__":
  main()
