"""python -m data_prep end to end: real sample round trip, resume, workers, readers, bad input."""
import io
import json
import pathlib
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from coarse3d_jax.data import weak_labels
import data_prep
from data_prep import __main__ as cli
from data_prep import writer
from tests.test_projection import KITTI
from tests.test_projection import reference_float32

KITTI_RAW_IDS = np.array([10, 40, 44, 48, 50, 70, 72, 80, 252], np.uint32)
FEATURES = {"scan_id": ((), np.object_), "range_image": ((64, 2048, 5), np.float32),
            "label": ((64, 2048), np.uint8), "weak_label": ((64, 2048), np.uint8),
            "points": ((None, 4), np.float32), "point_label": ((None,), np.uint8),
            "point_weak_label": ((None,), np.uint8), "point_row": ((None,), np.int32),
            "point_col": ((None,), np.int32)}


def run_cli(*argv) -> tuple[int, str]:
  log = io.StringIO()
  rc = cli.main([str(a) for a in argv], log=log)
  return rc, log.getvalue()


def random_points(rng, n: int) -> np.ndarray:
  """(n, 4) float32 points around a sensor, inside the KITTI field of view."""
  azimuth = rng.uniform(-np.pi, np.pi, n)
  distance = rng.uniform(2.0, 30.0, n)
  z = rng.uniform(-1.5, 0.5, n)
  return np.stack([distance * np.cos(azimuth), distance * np.sin(azimuth), z,
                   rng.uniform(0, 1, n)], 1).astype(np.float32)


def write_kitti_scan(raw: pathlib.Path, seq: str, frame: str, points: np.ndarray,
                     labels: np.ndarray | None) -> None:
  seq_dir = raw / "sequences" / seq
  (seq_dir / "velodyne").mkdir(parents=True, exist_ok=True)
  points.astype(np.float32).tofile(seq_dir / "velodyne" / f"{frame}.bin")
  if labels is not None:
    (seq_dir / "labels").mkdir(exist_ok=True)
    labels.astype("<u4").tofile(seq_dir / "labels" / f"{frame}.label")


def make_kitti_tree(raw: pathlib.Path, layout: dict[str, int], seed: int = 0,
                    unlabeled=("11",), n: int = 300) -> pathlib.Path:
  """sequence -> number of scans; labels carry instance ids in their high 16 bits."""
  rng = np.random.default_rng(seed)
  for seq, count in layout.items():
    for i in range(count):
      labels = rng.choice(KITTI_RAW_IDS, n) | (rng.integers(0, 5, n).astype(np.uint32) << 16)
      write_kitti_scan(raw, seq, f"{i:06d}", random_points(rng, n),
                       None if seq in unlabeled else labels)
  return raw


def load_split(out: pathlib.Path, split: str) -> list[dict]:
  builder = tfds.builder_from_directory(str(out))
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def shard_files(out: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord-*"))}


def assert_nothing_partial(out: pathlib.Path) -> None:
  assert not [p for p in out.rglob("*") if writer.is_temp(p)]


# ----------------------------------------------------------------------------- real sample
@pytest.fixture(scope="module")
def sample_out(sample_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("sample") / "out"
  rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", sample_dir, "--out_dir", out,
                    "--label_ratio", "0.001", "--split", "train=00")
  assert rc == 0, log
  return out, log


def test_real_sample_round_trip(sample_out, sample_dir):
  out, log = sample_out
  info = datasets.get_info("semantickitti")
  builder = tfds.builder_from_directory(str(out))
  assert set(builder.info.splits.keys()) == {"train"}
  feats = builder.info.features
  assert set(feats.keys()) == set(FEATURES)
  for name, (shape, dtype) in FEATURES.items():
    assert feats[name].shape == shape and feats[name].np_dtype == dtype, name
  examples = load_split(out, "train")
  assert [e["scan_id"] for e in examples] == [b"00/000000", b"00/000001"]
  seq = sample_dir / "sequences" / "00"
  for e in examples:
    frame = e["scan_id"].decode().split("/")[1]
    points = np.fromfile(seq / "velodyne" / f"{frame}.bin", np.float32).reshape(-1, 4)
    raw = np.fromfile(seq / "labels" / f"{frame}.label", "<u4") & 0xFFFF
    label = info.learning_map[raw]
    np.testing.assert_array_equal(e["points"], points)
    np.testing.assert_array_equal(e["point_label"], label)
    row, col, depth, winner = reference_float32(points, **KITTI)  # RangeProjection's own.
    np.testing.assert_array_equal(e["point_row"], row)
    np.testing.assert_array_equal(e["point_col"], col)
    has = winner >= 0
    np.testing.assert_array_equal(e["label"], np.where(has, label[winner], 0))
    np.testing.assert_array_equal(e["weak_label"], np.where(has, e["point_weak_label"][winner], 0))
    np.testing.assert_array_equal(e["range_image"][has, 1:], points[winner[has]])
    np.testing.assert_array_equal(e["range_image"][has, 0], depth[winner[has]].astype(np.float32))
    weak = e["point_weak_label"]
    assert 0.001 <= (weak > 0).mean() <= 0.002
    np.testing.assert_array_equal(weak[weak > 0], label[weak > 0])  # ~always, on real scans
  assert "2 scans" in log and "% weakly labeled" in log


def test_real_sample_stats(sample_out):
  out, _ = sample_out
  stats = json.loads((out / "stats.json").read_text())
  assert {k: stats[k] for k in ("dataset", "label_ratio", "protocol", "voxel_size", "seed",
                                "height", "width")} == {
      "dataset": "semantickitti", "label_ratio": 0.001, "protocol": "voxel",
      "voxel_size": 0.06, "seed": 0, "height": 64, "width": 2048}
  split = stats["splits"]["train"]
  examples = load_split(out, "train")
  labels = np.concatenate([e["point_label"] for e in examples])
  weak = np.concatenate([e["point_weak_label"] for e in examples])
  valid = np.concatenate([e["range_image"][e["range_image"][..., 0] >= 0] for e in examples])
  assert split["num_scans"] == 2 and split["num_points"] == len(labels) == 249273
  assert split["num_weak_points"] == (weak > 0).sum()
  assert split["weak_fraction"] == pytest.approx((weak > 0).mean())
  assert split["class_counts"] == np.bincount(labels, minlength=20).tolist()
  assert split["weak_class_counts"] == np.bincount(weak, minlength=20).tolist()
  np.testing.assert_allclose(split["mean"], valid.astype(np.float64).mean(0), rtol=1e-9)
  np.testing.assert_allclose(split["std"], valid.astype(np.float64).std(0), rtol=1e-6)
  assert split["num_nonfinite_dropped"] == 0


# ----------------------------------------------------------------------------- resume, workers
@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
  return make_kitti_tree(tmp_path_factory.mktemp("tiny") / "raw",
                         {"00": 3, "08": 2, "11": 2})


def convert_tiny(raw, out, *extra):
  return run_cli("--dataset", "semantickitti", "--raw_dir", raw, "--out_dir", out,
                 "--label_ratio", "0.01", "--split", "train=00", "--split", "val=08",
                 "--split", "test=11", "--shard_size", "2", *extra)


def test_rerun_skips_finished_shards(tiny_raw, tmp_path):
  out = tmp_path / "out"
  assert convert_tiny(tiny_raw, out)[0] == 0
  first = shard_files(out)
  assert sorted(first) == ["semantickitti-test.tfrecord-00000-of-00001",
                           "semantickitti-train.tfrecord-00000-of-00002",
                           "semantickitti-train.tfrecord-00001-of-00002",
                           "semantickitti-val.tfrecord-00000-of-00001"]
  mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord-*")}
  # Temporaries a killed run leaves (a shard's and an atomic JSON write's) are cleaned up.
  (out / "semantickitti-train.tfrecord-00000-of-00002.tmp-123").write_bytes(b"x")
  (out / ".stats.json.abc123.tmp").write_bytes(b"x")
  rc, log = convert_tiny(tiny_raw, out)
  assert rc == 0 and "0/4 shards to write" in log
  assert_nothing_partial(out)
  assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord-*")} == mtimes
  (out / "semantickitti-train.tfrecord-00001-of-00002").unlink()
  rc, log = convert_tiny(tiny_raw, out)
  assert rc == 0 and "1/4 shards to write" in log
  assert shard_files(out) == first
  assert [e["scan_id"] for e in load_split(out, "train")] == [
      b"00/000000", b"00/000001", b"00/000002"]


def test_unlabeled_test_split(tiny_raw, tmp_path):
  out = tmp_path / "out"
  assert convert_tiny(tiny_raw, out)[0] == 0
  test = load_split(out, "test")
  assert len(test) == 2
  for e in test:
    assert not e["label"].any() and not e["weak_label"].any()
    assert not e["point_label"].any() and not e["point_weak_label"].any()
    assert (e["range_image"][..., 0] > 0).sum() > 200
  stats = json.loads((out / "stats.json").read_text())["splits"]
  assert stats["test"]["num_weak_points"] == 0 and stats["val"]["num_weak_points"] > 0
  assert stats["train"]["num_weak_points"] == 3 * weak_labels.num_to_label(300, 0.01)


def test_workers_give_identical_output(tiny_raw, tmp_path):
  assert convert_tiny(tiny_raw, tmp_path / "one", "--workers", "1")[0] == 0
  rc, log = convert_tiny(tiny_raw, tmp_path / "two", "--workers", "2")
  assert rc == 0, log
  assert shard_files(tmp_path / "one") == shard_files(tmp_path / "two")
  assert ((tmp_path / "one" / "stats.json").read_text() ==
          (tmp_path / "two" / "stats.json").read_text())


def test_other_settings_in_the_same_out_dir_are_refused(tiny_raw, tmp_path):
  out = tmp_path / "out"
  assert convert_tiny(tiny_raw, out)[0] == 0
  rc, log = convert_tiny(tiny_raw, out, "--seed", "3")
  assert rc == 1 and f"error: {out}: holds a conversion with other settings" in log
  assert "seed" in log


def test_point_protocol_and_full_labels(tiny_raw, tmp_path):
  rc, _ = run_cli("--dataset", "semantickitti", "--raw_dir", tiny_raw, "--out_dir",
                  tmp_path / "full", "--label_ratio", "1", "--split", "train=00")
  assert rc == 0
  for e in load_split(tmp_path / "full", "train"):
    np.testing.assert_array_equal(e["point_weak_label"], e["point_label"])
  rc, _ = run_cli("--dataset", "semantickitti", "--raw_dir", tiny_raw, "--out_dir",
                  tmp_path / "point", "--label_ratio", "0.02", "--protocol", "point",
                  "--split", "train=00")
  assert rc == 0
  for e in load_split(tmp_path / "point", "train"):
    assert (e["point_weak_label"] > 0).sum() == 6


# ----------------------------------------------------------------------------- bad input
def two_scan_tree(tmp_path) -> pathlib.Path:
  return make_kitti_tree(tmp_path / "raw", {"00": 2}, unlabeled=())


def convert_two(raw, out, *splits):
  return run_cli("--dataset", "semantickitti", "--raw_dir", raw, "--out_dir", out,
                 "--label_ratio", "0.01", "--shard_size", "1",
                 *(splits or ("--split", "train=00")))


def corrupt(tmp_path, kind: str) -> tuple[pathlib.Path, tuple[str, ...], str]:
  """A two-scan tree broken in one way: (raw, splits, expected error prefix)."""
  raw = two_scan_tree(tmp_path)
  seq = raw / "sequences" / "00"
  bad_bin, bad_label = seq / "velodyne" / "000001.bin", seq / "labels" / "000001.label"
  splits = ("--split", "train=00")
  if kind == "truncated_bin":
    bad_bin.write_bytes(bad_bin.read_bytes()[:-3])
    return raw, splits, f"{bad_bin}: size 4797 bytes is not a multiple of 16"
  if kind == "label_count":
    bad_label.write_bytes(bad_label.read_bytes()[:-4])
    return raw, splits, f"{bad_label}: 299 labels, but {bad_bin} has 300 points"
  if kind == "unknown_label":
    labels = np.fromfile(bad_label, "<u4")
    labels[7] = 2 | (3 << 16)
    labels.tofile(bad_label)
    return raw, splits, f"{bad_label}: raw label id(s) [2] (1 points) are not in"
  if kind == "missing_velodyne":
    (raw / "sequences" / "05" / "labels").mkdir(parents=True)
    return raw, ("--split", "train=00,05"), f"{raw / 'sequences' / '05' / 'velodyne'}: missing"
  if kind == "missing_labels":
    for p in (seq / "labels").iterdir():
      p.unlink()
    (seq / "labels").rmdir()
    return raw, splits, f"{seq / 'labels'}: missing labels (split 'train' needs them"
  if kind == "empty_split":
    (raw / "sequences" / "07" / "velodyne").mkdir(parents=True)
    return raw, ("--split", "train=00", "--split", "val=07"), (
        f"{raw}: split 'val' has no scans (sequences 07)")
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated_bin", "label_count", "unknown_label",
                                  "missing_velodyne", "missing_labels", "empty_split"])
def test_bad_input_is_one_clear_line_and_leaves_no_partial_shard(tmp_path, kind):
  raw, splits, expected = corrupt(tmp_path, kind)
  out = tmp_path / "out"
  rc, log = convert_two(raw, out, *splits)
  assert rc == 1
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), log
  if out.exists():
    assert_nothing_partial(out)
    assert not (out / "semantickitti-train.tfrecord-00001-of-00002").exists()
    assert not (out / "dataset_info.json").exists()


@pytest.mark.parametrize("kind", ["truncated_bin", "unknown_label"])
def test_bad_input_in_a_worker_process_is_the_same_clear_line(tmp_path, kind):
  """The error crosses the process pool intact; the pool stops; no temporary shard is left."""
  raw, splits, expected = corrupt(tmp_path, kind)
  out = tmp_path / "out"
  rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", raw, "--out_dir", out,
                    "--label_ratio", "0.01", "--shard_size", "1", "--workers", "2", *splits)
  assert rc == 1
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), log
  assert_nothing_partial(out)
  assert not (out / "dataset_info.json").exists()


def test_bad_scan_after_a_good_one_keeps_only_the_finished_shard(tmp_path):
  raw, splits, _ = corrupt(tmp_path, "truncated_bin")
  out = tmp_path / "out"
  assert convert_two(raw, out, *splits)[0] == 1
  assert sorted(shard_files(out)) == ["semantickitti-train.tfrecord-00000-of-00002"]
  assert_nothing_partial(out)
  bin_path = raw / "sequences" / "00" / "velodyne" / "000001.bin"
  random_points(np.random.default_rng(5), 300).tofile(bin_path)  # Fix the scan, resume.
  rc, log = convert_two(raw, out, *splits)
  assert rc == 0 and "1/2 shards to write" in log
  assert len(load_split(out, "train")) == 2


def test_unwritable_output(tmp_path):
  raw = two_scan_tree(tmp_path)
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  rc, log = convert_two(raw, blocker / "out")
  assert rc == 1 and f"error: {blocker / 'out'}: cannot write the output directory" in log


def test_non_finite_points_are_dropped_counted_and_reported(tmp_path):
  raw = two_scan_tree(tmp_path)
  path = raw / "sequences" / "00" / "velodyne" / "000000.bin"
  points = np.fromfile(path, np.float32).reshape(-1, 4)
  points[3, 0], points[10, 2], points[20, 3], points[30, :3] = np.nan, np.inf, -np.inf, 0.0
  points.tofile(path)
  out = tmp_path / "out"
  rc, log = convert_two(raw, out)
  assert rc == 0
  assert f"warning: {path}: dropped 4 points with NaN/inf coordinates or at the origin" in log
  first = load_split(out, "train")[0]
  keep = np.ones(300, bool)
  keep[[3, 10, 20, 30]] = False
  np.testing.assert_array_equal(first["points"], points[keep])
  stats = json.loads((out / "stats.json").read_text())["splits"]["train"]
  assert stats["num_nonfinite_dropped"] == 4 and stats["num_points"] == 596


def test_bad_arguments_exit_2():
  for argv in (["--label_ratio", "0"], ["--label_ratio", "0.1", "--split", "train"],
               ["--label_ratio", "0.1", "--workers", "0"]):
    rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", "r", "--out_dir", "o", *argv)
    assert rc == 2 and log.startswith("error: "), (argv, log)


# ----------------------------------------------------------------------------- official splits
def test_synthetic_generates_raw_data_then_converts_official_splits(tmp_path, monkeypatch):
  calls = []

  def generate_tree(raw_dir, *, sequences=("00", "01", "02", "03", "04"),
                    scans_per_sequence=20, seed=0, workers=1):
    calls.append(tuple(sequences))
    make_kitti_tree(pathlib.Path(raw_dir), {s: 1 for s in sequences}, unlabeled=())
    return []

  fake = types.ModuleType("data_prep.synthetic")
  fake.generate_tree = generate_tree
  monkeypatch.setitem(sys.modules, "data_prep.synthetic", fake)
  monkeypatch.setattr(data_prep, "synthetic", fake, raising=False)
  raw, out = tmp_path / "raw", tmp_path / "out"
  args = ("--dataset", "synthetic", "--raw_dir", raw, "--out_dir", out, "--label_ratio", "0.01")
  rc, log = run_cli(*args)
  assert rc == 0, log
  assert calls == [("00", "01", "02", "03", "04")]
  assert [e["scan_id"] for e in load_split(out, "train")] == [
      b"00/000000", b"01/000000", b"02/000000", b"03/000000"]
  assert [e["scan_id"] for e in load_split(out, "val")] == [b"04/000000"]
  assert json.loads((out / "stats.json").read_text())["dataset"] == "synthetic"
  assert run_cli(*args)[0] == 0 and len(calls) == 1  # Raw data present: no regeneration.


# ----------------------------------------------------------------------------- SemanticPOSS
def make_poss_tree(raw: pathlib.Path, rng, n: int = 250) -> tuple[np.ndarray, ...]:
  seq = raw / "sequences" / "02"
  for sub in ("velodyne", "labels", "tag"):
    (seq / sub).mkdir(parents=True)
  pixels = np.sort(rng.choice(40 * 1800, n, replace=False))
  tags = np.zeros(40 * 1800, np.uint8)
  tags[pixels] = 1
  points = random_points(rng, n)
  labels = rng.choice(np.array([0, 4, 5, 7, 9, 22], np.uint32), n)
  points.tofile(seq / "velodyne" / "000000.bin")
  labels.astype("<u4").tofile(seq / "labels" / "000000.label")
  tags.tofile(seq / "tag" / "000000.tag")
  return points, labels, pixels


def test_semanticposs_uses_tag_pixels(tmp_path):
  rng = np.random.default_rng(4)
  points, labels, pixels = make_poss_tree(tmp_path / "raw", rng)
  points[5, 1] = np.nan  # dropped together with its tag
  points.tofile(tmp_path / "raw" / "sequences" / "02" / "velodyne" / "000000.bin")
  out = tmp_path / "out"
  rc, log = run_cli("--dataset", "semanticposs", "--raw_dir", tmp_path / "raw", "--out_dir", out,
                    "--label_ratio", "1", "--split", "val=02")
  assert rc == 0, log
  (e,) = load_split(out, "val")
  keep = np.arange(len(points)) != 5
  np.testing.assert_array_equal(e["point_row"], pixels[keep] // 1800)
  np.testing.assert_array_equal(e["point_col"], pixels[keep] % 1800)
  mapped = datasets.get_info("semanticposs").learning_map[labels[keep]]
  np.testing.assert_array_equal(e["label"][e["point_row"], e["point_col"]], mapped)
  np.testing.assert_array_equal(e["range_image"][e["point_row"], e["point_col"], 1:],
                                points[keep])
  assert (e["range_image"][..., 0] >= 0).sum() == keep.sum()  # one point per pixel, no loss
  stats = json.loads((out / "stats.json").read_text())
  assert stats["projection"] == "tag" and stats["height"] == 40 and stats["width"] == 1800


def test_semanticposs_tag_count_mismatch(tmp_path):
  make_poss_tree(tmp_path / "raw", np.random.default_rng(4))
  tag = tmp_path / "raw" / "sequences" / "02" / "tag" / "000000.tag"
  tags = np.fromfile(tag, np.uint8)
  tags[np.flatnonzero(tags == 0)[0]] = 1
  tags.tofile(tag)
  rc, log = run_cli("--dataset", "semanticposs", "--raw_dir", tmp_path / "raw", "--out_dir",
                    tmp_path / "out", "--label_ratio", "0.1", "--split", "val=02")
  assert rc == 1 and f"error: {tag}: 251 pixels tagged, but" in log


# ----------------------------------------------------------------------------- nuScenes
def make_nuscenes_tree(raw: pathlib.Path, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """v1.0-mini tables for scene-0061 (mini_train) and scene-0103 (mini_val), two samples each.

  category.json numbers the classes with a rotated index, as a custom table could.
  """
  version = raw / "v1.0-mini"
  for d in (version, raw / "samples" / "LIDAR_TOP", raw / "lidarseg" / "v1.0-mini"):
    d.mkdir(parents=True)
  general = datasets.NUSCENES_GENERAL
  category = [{"token": f"c{i}", "name": name, "index": (i + 5) % 32}
              for i, name in enumerate(general)]
  scenes, samples, sample_data, lidarseg, truth = [], [], [], [], {}
  for s, name in enumerate(("scene-0103", "scene-0061")):
    scenes.append({"token": f"scene{s}", "name": name, "nbr_samples": 2})
    for k in (1, 0):  # tables list the later sample first: readers sort by time
      sample, lidar = f"sample{s}{k}", f"lidar{s}{k}"
      samples.append({"token": sample, "scene_token": f"scene{s}", "timestamp": 100 * k})
      n = 200 + 10 * k
      cloud = np.concatenate([random_points(rng, n), rng.integers(0, 32, (n, 1))], 1)
      filename = f"samples/LIDAR_TOP/n008__LIDAR_TOP__{s}{k}.pcd.bin"
      cloud.astype(np.float32).tofile(raw / filename)
      standard = rng.integers(0, 32, n)
      ((standard + 5) % 32).astype(np.uint8).tofile(
          raw / "lidarseg" / "v1.0-mini" / f"{lidar}_lidarseg.bin")
      truth[lidar] = (cloud[:, :4].astype(np.float32), standard)
      sample_data += [
          {"token": lidar, "sample_token": sample, "timestamp": 100 * k, "is_key_frame": True,
           "filename": filename, "fileformat": "pcd"},
          {"token": f"sweep{s}{k}", "sample_token": sample, "timestamp": 100 * k + 50,
           "is_key_frame": False, "filename": f"sweeps/LIDAR_TOP/x{s}{k}.pcd.bin"},
          {"token": f"cam{s}{k}", "sample_token": sample, "timestamp": 100 * k,
           "is_key_frame": True, "filename": f"samples/CAM_FRONT/x{s}{k}.jpg"}]
      lidarseg.append({"token": lidar, "sample_data_token": lidar,
                       "filename": f"lidarseg/v1.0-mini/{lidar}_lidarseg.bin"})
  for table, rows in (("scene", scenes), ("sample", samples), ("sample_data", sample_data),
                      ("lidarseg", lidarseg), ("category", category)):
    (version / f"{table}.json").write_text(json.dumps(rows))
  return truth


def test_nuscenes_reader_and_splits(tmp_path):
  truth = make_nuscenes_tree(tmp_path / "raw", np.random.default_rng(2))
  train = readers.list_scans("nuscenes", tmp_path / "raw", split="train")
  assert [(r.scan_id, r.sequence, r.frame) for r in train] == [
      ("lidar10", "scene-0061", "000000"), ("lidar11", "scene-0061", "000001")]
  assert [r.scan_id for r in readers.list_scans("nuscenes", tmp_path / "raw", split="val")] == [
      "lidar00", "lidar01"]
  assert readers.list_scans("nuscenes", tmp_path / "raw", split="test") == []
  for ref in train:
    points = readers.read_points("nuscenes", ref)
    np.testing.assert_array_equal(points, truth[ref.scan_id][0])
    np.testing.assert_array_equal(readers.read_labels("nuscenes", ref, len(points)),
                                  truth[ref.scan_id][1])
  assert len(readers.NUSCENES_VAL) == 150
  versions = {"v1.0-trainval": {"scene-0001": [], "scene-0003": [], "scene-1073": []}}
  assert readers.nuscenes_split_scenes(versions, "train") == ["scene-0001"]
  assert readers.nuscenes_split_scenes(versions, "val") == ["scene-0003", "scene-1073"]


def test_nuscenes_conversion(tmp_path):
  truth = make_nuscenes_tree(tmp_path / "raw", np.random.default_rng(2))
  out = tmp_path / "out"
  rc, log = run_cli("--dataset", "nuscenes", "--raw_dir", tmp_path / "raw", "--out_dir", out,
                    "--label_ratio", "1")
  assert rc == 0, log
  info = datasets.get_info("nuscenes")
  val = load_split(out, "val")
  assert [e["scan_id"] for e in val] == [b"lidar00", b"lidar01"]
  for e in val:
    points, standard = truth[e["scan_id"].decode()]
    np.testing.assert_array_equal(e["points"], points)
    np.testing.assert_array_equal(e["point_label"], info.learning_map[standard])
    assert e["range_image"].shape == (64, 2048, 5)
  assert set(json.loads((out / "stats.json").read_text())["splits"]) == {"train", "val"}


def test_example_encoder_is_byte_identical_to_tfds_deterministic_serialization():
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = 1000
  example = {"scan_id": "08/000123", "range_image": rng.normal(size=(16, 64, 5)).astype(np.float32),
             "label": rng.integers(0, 20, (16, 64)).astype(np.uint8),
             "weak_label": rng.integers(0, 20, (16, 64)).astype(np.uint8),
             "points": rng.normal(size=(n, 4)).astype(np.float32),
             "point_label": rng.integers(0, 20, n).astype(np.uint8),
             "point_weak_label": rng.integers(0, 20, n).astype(np.uint8),
             "point_row": rng.integers(0, 16, n).astype(np.int32),
             "point_col": rng.integers(0, 64, n).astype(np.int32)}
  encoder = writer.ExampleEncoder(16, 64)
  feats = encoder.features
  proto = example_serializer.ExampleSerializer(feats.get_serialized_info()).get_tf_example(
      feats.encode_example(example))
  assert encoder(example) == proto.SerializeToString(deterministic=True)
  decoded = feats.deserialize_example_np(encoder(example))
  for key, value in example.items():
    if key != "scan_id":
      np.testing.assert_array_equal(decoded[key], value)
  with pytest.raises(ValueError, match="point_row: got int64"):
    encoder({**example, "point_row": example["point_row"].astype(np.int64)})
