"""Benchmark file formats, atomic writes, and the submission validators."""
import json
import os
import zipfile

import numpy as np
import pytest

from coarse3d_jax import files
from coarse3d_jax import submission
from coarse3d_jax import visualize


def _raw_test_tree(root, points_per_scan):
  """raw/sequences/11..21/velodyne/*.bin with the given point counts per sequence."""
  for i, sequence in enumerate(submission.KITTI_TEST_SEQUENCES):
    velodyne = root / "sequences" / sequence / "velodyne"
    velodyne.mkdir(parents=True)
    for frame, n in enumerate(points_per_scan[i]):
      np.zeros((n, 4), np.float32).tofile(velodyne / f"{frame:06d}.bin")


def _predictions(pred_dir, points_per_scan):
  for i, sequence in enumerate(submission.KITTI_TEST_SEQUENCES):
    for frame, n in enumerate(points_per_scan[i]):
      submission.write_kitti_labels(pred_dir, sequence, f"{frame:06d}", np.full(n, 40, np.uint32), n)


@pytest.fixture
def counts():
  rng = np.random.default_rng(0)
  return [rng.integers(1, 50, size=1 + i % 2).tolist() for i in range(11)]


def test_kitti_label_file_layout_and_length_check(tmp_path):
  path = submission.write_kitti_labels(tmp_path, "08", "000007", np.array([0, 10, 252]), 3)
  assert path == tmp_path / "sequences" / "08" / "predictions" / "000007.label"
  assert path.stat().st_size == 12
  np.testing.assert_array_equal(np.fromfile(path, "<u4"), [0, 10, 252])
  with pytest.raises(submission.ExportError, match="000008.label.*4 points"):
    submission.write_kitti_labels(tmp_path, "08", "000008", np.zeros(3, np.uint32), 4)
  assert not (tmp_path / "sequences" / "08" / "predictions" / "000008.label").exists()


def test_to_raw_labels_uses_inverse_map():
  inv = np.array([0, 10, 11, 15], np.uint32)
  raw = submission.to_raw_labels(inv, np.array([3, 1, 0, 2]))
  assert raw.dtype == np.uint32
  np.testing.assert_array_equal(raw, [15, 10, 0, 11])
  with pytest.raises(submission.ExportError):
    submission.to_raw_labels(inv, np.array([4]))


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
  target = tmp_path / "a" / "b.label"
  def fail(*args):
    raise OSError("disk full")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    files.atomic_write(target, b"1234")
  assert list(target.parent.iterdir()) == []


def test_kitti_zip_passes_validator(tmp_path, counts):
  raw, pred = tmp_path / "raw", tmp_path / "pred"
  _raw_test_tree(raw, counts)
  _predictions(pred, counts)
  bundle = submission.zip_kitti_submission(pred, tmp_path / "submission.zip")
  submission.validate_kitti_submission(bundle, raw)
  with zipfile.ZipFile(bundle) as z:
    names = set(z.namelist())
  assert {"sequences/", "sequences/11/", "sequences/21/predictions/"} <= names
  assert sum(n.endswith(".label") for n in names) == sum(len(c) for c in counts)


def test_validator_rejects_broken_bundles(tmp_path, counts):
  raw, pred = tmp_path / "raw", tmp_path / "pred"
  _raw_test_tree(raw, counts)
  _predictions(pred, counts)
  # A zip of files only (no directory entries), as naive zipping produces.
  naive = tmp_path / "naive.zip"
  with zipfile.ZipFile(naive, "w") as z:
    for path in sorted(pred.rglob("*.label")):
      z.write(path, path.relative_to(pred).as_posix())
  with pytest.raises(submission.SubmissionError, match='"sequences" missing'):
    submission.validate_kitti_submission(naive, raw)
  with pytest.raises(submission.SubmissionError, match="must end with"):
    submission.validate_kitti_submission(tmp_path / "submission.tar", raw)
  # One scan has one point more than its prediction.
  scan = raw / "sequences" / "15" / "velodyne" / "000000.bin"
  np.zeros((counts[4][0] + 1, 4), np.float32).tofile(scan)
  bundle = submission.zip_kitti_submission(pred, tmp_path / "submission.zip")
  with pytest.raises(submission.SubmissionError, match="sequences/15/predictions/000000.label"):
    submission.validate_kitti_submission(bundle, raw)
  # A scan without prediction.
  np.zeros((counts[4][0], 4), np.float32).tofile(scan)
  submission.validate_kitti_submission(bundle, raw)
  np.zeros((3, 4), np.float32).tofile(raw / "sequences" / "15" / "velodyne" / "000009.bin")
  with pytest.raises(submission.SubmissionError, match="000009.label\" is missing"):
    submission.validate_kitti_submission(bundle, raw)


def test_zip_refuses_missing_sequence(tmp_path, counts):
  _predictions(tmp_path / "pred", counts)
  (tmp_path / "pred" / "sequences" / "13" / "predictions" / "000000.label").unlink()
  os.rmdir(tmp_path / "pred" / "sequences" / "13" / "predictions")
  with pytest.raises(submission.ExportError, match="13/predictions: missing"):
    submission.zip_kitti_submission(tmp_path / "pred", tmp_path / "submission.zip")
  assert not (tmp_path / "submission.zip").exists()


def test_nuscenes_layout_and_validator(tmp_path):
  sizes = {"tokA": 5, "tokB": 3}
  for token, n in sizes.items():
    path = submission.write_nuscenes_labels(tmp_path, "test", token, np.arange(n) % 16 + 1, n)
    assert path == tmp_path / "lidarseg" / "test" / f"{token}_lidarseg.bin"
  np.testing.assert_array_equal(
      np.fromfile(tmp_path / "lidarseg" / "test" / "tokA_lidarseg.bin", np.uint8), [1, 2, 3, 4, 5])
  meta_path = submission.write_nuscenes_submission_json(tmp_path, "test")
  assert meta_path == tmp_path / "test" / "submission.json"
  assert json.loads(meta_path.read_text()) == {"meta": {
      "use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
      "use_external": False}}
  submission.validate_nuscenes_submission(tmp_path, "test", sizes)
  with pytest.raises(submission.SubmissionError, match="tokC_lidarseg.bin"):
    submission.validate_nuscenes_submission(tmp_path, "test", {**sizes, "tokC": 2})
  with pytest.raises(submission.ExportError, match="1..16"):
    submission.write_nuscenes_labels(tmp_path, "test", "tokD", np.array([0, 1]), 2)
  meta_path.write_text(json.dumps({"meta": {"use_lidar": 1}}))
  with pytest.raises(submission.SubmissionError):
    submission.validate_nuscenes_submission(tmp_path, "test", sizes)


def _parse_ply(data: bytes):
  header, _, body = data.partition(b"end_header\n")
  lines = header.decode().splitlines()
  assert lines[0] == "ply"
  count = int(next(l for l in lines if l.startswith("element vertex")).split()[-1])
  props = [l.split()[1:] for l in lines if l.startswith("property")]
  assert props == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"],
                   ["uchar", "green"], ["uchar", "blue"]]
  if "binary_little_endian" in lines[1]:
    rec = np.frombuffer(body, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                        ("r", "u1"), ("g", "u1"), ("b", "u1")]), count)
    return np.stack([rec["x"], rec["y"], rec["z"]], 1), np.stack([rec["r"], rec["g"], rec["b"]], 1)
  rows = np.array([l.split() for l in body.decode().splitlines()], dtype=object)
  return rows[:, :3].astype(np.float32), rows[:, 3:].astype(np.uint8)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
  rng = np.random.default_rng(0)
  xyz = rng.normal(size=(17, 3)).astype(np.float32)
  rgb = rng.integers(0, 256, (17, 3)).astype(np.uint8)
  path = visualize.write_ply(tmp_path / "c.ply", xyz, rgb, binary=binary)
  got_xyz, got_rgb = _parse_ply(path.read_bytes())
  np.testing.assert_array_equal(got_xyz, xyz)
  np.testing.assert_array_equal(got_rgb, rgb)
