"""predict -> files -> evaluate round trips on tiny raw trees, with fake predictors.

Two fakes stand in for a trained model (both see only the range images, like a real one):
- `PixelRulePredictor`: the scenes are built so that every point's class is a fixed function of
  its pixel (several points may share a pixel, but then they share the class; points outside the
  vertical field of view are labeled with the class of the pixel their row is clamped to). The
  fake returns that function one-hot, so the ground truth is recoverable for EVERY point and the
  predict -> evaluate round trip must give mIoU exactly 1.0.
- `LookupPredictor`: arbitrary per-point labels; it recognizes each range image (side channel:
  the test registered it) and returns the class of the point that won each pixel. Points that
  lost their pixel then get the winner's class, which the tests check explicitly.
"""
import dataclasses
import hashlib
import json
import types

import numpy as np
from PIL import Image
import pytest

from coarse3d_jax import evaluate
from coarse3d_jax import knn as knn_lib
from coarse3d_jax import predict
from coarse3d_jax import submission
from coarse3d_jax import visualize
from coarse3d_jax.data import datasets
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers

H, W = 16, 64


@pytest.fixture(scope="module")
def info():
  return dataclasses.replace(datasets.get_info("semantickitti"), height=H, width=W)


def pixel_class(row, col, num_classes=20):
  """Learning id 1..C-1 of a pixel."""
  return 1 + (np.asarray(row) * 5 + np.asarray(col) // 3) % (num_classes - 1)


def _one_pixel_per_class(num_classes):
  rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  grid = pixel_class(rows, cols, num_classes)
  return np.array([np.argwhere(grid == c)[0] for c in range(1, num_classes)]).T


def _directions(info, row, col, rng):
  """xyz unit vectors through random spots inside pixel (row, col) (rows may be out of view)."""
  fov = info.fov_up - info.fov_down
  pitch = np.deg2rad(info.fov_up - (row + rng.uniform(0.2, 0.8, row.shape)) / H * fov)
  yaw = np.deg2rad((col + rng.uniform(0.2, 0.8, col.shape)) / W * 360.0 - 180.0)
  return np.stack([np.cos(pitch) * np.cos(-yaw), np.cos(pitch) * np.sin(-yaw), np.sin(pitch)], -1)


def _raw_ids(info, learning, rng):
  """Raw ids (any raw id of the class; KITTI: random instance bits) for learning ids."""
  raw = np.zeros(len(learning), np.uint32)
  for c in np.unique(learning):
    choices = np.flatnonzero((info.learning_map == c) & info.raw_known)
    raw[learning == c] = rng.choice(choices, (learning == c).sum())
  if info.name == "nuscenes":
    return raw
  return raw | (rng.integers(0, 1 << 16, len(learning)).astype(np.uint32) << 16)


def pixel_rule_scan(info, rng, n=300):
  """points (n + 1, 4) float32 and raw labels; class = pixel_class of the (clamped) pixel."""
  row = rng.integers(0, H, n)
  row[:4] = [-3, -1, H, H + 4]  # Above and below the vertical field of view.
  col = rng.integers(0, W, n)
  every = _one_pixel_per_class(info.num_classes)  # Every class in every scan.
  row[4:4 + every.shape[1]], col[4:4 + every.shape[1]] = every
  xyz = _directions(info, row, col, rng) * rng.uniform(2, 40, (n, 1))
  learning = pixel_class(np.clip(row, 0, H - 1), col, info.num_classes)
  points = np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)
  # A non-finite point (kept by the reader) that must still get a label; its truth is ignored.
  points = np.concatenate([points, [[np.nan, 1, 1, 0.5]]]).astype(np.float32)
  return points, np.append(_raw_ids(info, learning, rng), 0).astype(np.uint32)


def random_scan(info, rng, n=300):
  """Arbitrary per-point labels; many pixel collisions (16x64 image, 300 points)."""
  row, col = rng.integers(0, H, n), rng.integers(0, W, n)
  xyz = _directions(info, row, col, rng) * rng.uniform(2, 40, (n, 1))
  points = np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)
  return points, _raw_ids(info, rng.integers(1, 20, n), rng)


def write_tree(root, scans: dict[str, list]):
  """root/sequences/NN/{velodyne,labels}/NNNNNN.{bin,label}."""
  for sequence, items in scans.items():
    for frame, (points, raw) in enumerate(items):
      base = root / "sequences" / sequence
      (base / "velodyne").mkdir(parents=True, exist_ok=True)
      points.astype(np.float32).tofile(base / "velodyne" / f"{frame:06d}.bin")
      if raw is not None:
        (base / "labels").mkdir(parents=True, exist_ok=True)
        raw.astype(np.uint32).tofile(base / "labels" / f"{frame:06d}.label")


class PixelRulePredictor:
  def __init__(self, info):
    self.info, self.calls = info, []

  def predict(self, images):
    self.calls.append(images.shape)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    classes = pixel_class(rows, cols, self.info.num_classes)
    onehot = np.eye(self.info.num_classes, dtype=np.float32)[classes]
    return np.broadcast_to(onehot, images.shape[:3] + onehot.shape[-1:]).copy()


def _image_key(image):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class LookupPredictor:
  def __init__(self, info):
    self.info, self.table = info, {}

  def register(self, points, learning):
    row, col, depth = projection.project_np(points[:, :3], H, W, self.info.fov_up,
                                            self.info.fov_down, self.info.fov_left,
                                            self.info.fov_right)
    image, winner = projection.range_image_np(points, row, col, depth, H, W)
    pixel = np.where(winner >= 0, learning[np.maximum(winner, 0)], 0)
    self.table[_image_key(image)] = pixel
    return row, col, depth, image, winner

  def predict(self, images):
    eye = np.eye(self.info.num_classes, dtype=np.float32)
    return np.stack([eye[self.table.get(_image_key(im), np.ones((H, W), int))] for im in images])


@pytest.fixture(scope="module")
def val_tree(tmp_path_factory, info):
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("raw")
  write_tree(root, {"08": [pixel_rule_scan(info, rng) for _ in range(3)]})
  return root


def test_round_trip_gives_miou_one(tmp_path, info, val_tree):
  refs = readers.list_scans("semantickitti", val_tree, "val")
  fake = PixelRulePredictor(info)
  summary = predict.predict_scans(refs, "semantickitti", fake, tmp_path, batch_size=2,
                                  log=lambda s: None)
  assert fake.calls == [(2, H, W, 5)] * 2  # 3 scans: the last batch is padded to 2.
  assert summary["num_scans"] == 3
  for ref in refs:
    n = len(readers.read_points("semantickitti", ref))
    pred = np.fromfile(submission.kitti_prediction_path(tmp_path, ref.sequence, ref.frame), "<u4")
    assert pred.shape == (n,)  # One label per stored point, the NaN point included.
    assert set(np.unique(pred)) <= set(info.learning_map_inv.tolist())
  results = evaluate.evaluate_predictions("semantickitti", val_tree, tmp_path, "val")
  assert results["miou"] == 1.0
  assert results["absent_classes"] == []
  assert all(v == 1.0 for v in results["per_class_iou"].values())


def test_lost_pixels_take_the_winner_class_and_knn_batches(tmp_path, info):
  rng = np.random.default_rng(1)
  fake = LookupPredictor(info)
  scans = [random_scan(info, rng) for _ in range(3)]
  raw_root = tmp_path / "raw"
  write_tree(raw_root, {"08": scans})
  expected = []
  for points, raw in scans:
    learning = datasets.map_labels(info, raw & 0xFFFF).astype(np.int64)
    row, col, depth, image, winner = fake.register(points, learning)
    expected.append((learning[winner[row, col]], (row, col, depth, image), learning))
  refs = readers.list_scans("semantickitti", raw_root, "val")
  out = tmp_path / "out"
  predict.predict_scans(refs, "semantickitti", fake, out, batch_size=2, log=lambda s: None)
  for ref, (want, _, learning) in zip(refs, expected):
    got = np.fromfile(submission.kitti_prediction_path(out, ref.sequence, ref.frame), "<u4")
    np.testing.assert_array_equal(got, info.learning_map_inv[want])
    assert (want != learning).any()  # Some points really lost their pixel.
  knn_out = tmp_path / "knn"
  predict.predict_scans(refs, "semantickitti", fake, knn_out, batch_size=2, knn=True,
                        log=lambda s: None)
  for ref, (_, (row, col, depth, image), _) in zip(refs, expected):
    pixel = fake.table[_image_key(image)]
    want = knn_lib.knn_labels(image[None, ..., 0], pixel[None], depth[None], row[None],
                              col[None], np.ones((1, len(depth)), bool),
                              num_classes=info.num_classes)
    got = np.fromfile(submission.kitti_prediction_path(knn_out, ref.sequence, ref.frame), "<u4")
    np.testing.assert_array_equal(got, info.learning_map_inv[np.asarray(want)[0]])


def test_evaluate_imperfect_predictions_against_numpy(tmp_path, info, val_tree):
  """Random raw predictions with instance bits and unmapped ids (which count as misses)."""
  rng = np.random.default_rng(11)
  refs = readers.list_scans("semantickitti", val_tree, "val")
  raw_ids = np.flatnonzero(info.raw_known)
  truth, guess = [], []
  for ref in refs:
    n = len(readers.read_points("semantickitti", ref))
    pred = rng.choice(raw_ids, n).astype(np.uint32) | (rng.integers(0, 50, n, np.uint32) << 16)
    pred[:5] = [2, 3, 300, 65535, 7]  # Not in the learning map: class 0, a miss.
    submission.write_kitti_labels(tmp_path, ref.sequence, ref.frame, pred, n)
    gt = np.fromfile(ref.label_path, "<u4") & 0xFFFF
    truth.append(np.array([info.learning_map[g] for g in gt]))
    guess.append(np.array([info.learning_map[p] if p < len(info.learning_map) else 0
                           for p in pred & 0xFFFF]))
  truth, guess = np.concatenate(truth), np.concatenate(guess)
  keep = truth > 0
  classes = np.arange(1, info.num_classes)
  tp = np.array([np.sum((truth == c) & (guess == c) & keep) for c in classes], np.float64)
  fp = np.array([np.sum((truth != c) & (guess == c) & keep) for c in classes], np.float64)
  fn = np.array([np.sum((truth == c) & (guess != c) & keep) for c in classes], np.float64)
  iou = tp / (tp + fp + fn + 1e-15)
  results = evaluate.evaluate_predictions("semantickitti", val_tree, tmp_path, "val")
  assert results["num_points"] == len(truth) and 0 < keep.sum() < len(truth)
  np.testing.assert_allclose(results["miou"], iou.mean(), rtol=1e-12)
  got = [results["per_class_iou"][info.class_names[c]] for c in classes]
  np.testing.assert_allclose(got, iou, rtol=1e-12)
  assert 0 < results["miou"] < 0.5


def test_truncated_scan_in_predict_is_one_clear_error(tmp_path, info, capsys, monkeypatch):
  rng = np.random.default_rng(4)
  write_tree(tmp_path / "raw", {"08": [pixel_rule_scan(info, rng), pixel_rule_scan(info, rng)]})
  bad = tmp_path / "raw" / "sequences" / "08" / "velodyne" / "000001.bin"
  bad.write_bytes(bad.read_bytes()[:-6])
  monkeypatch.setattr(predict, "_load_predictor",
                      lambda workdir, checkpoint: PixelRulePredictor(info))
  out = tmp_path / "out"
  argv = ["--workdir", str(tmp_path / "w"), "--raw_dir", str(tmp_path / "raw"), "--out_dir",
          str(out), "--split", "val"]
  assert predict.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"{bad}: size" in err[0] and "not a multiple of 16" in err[0]
  written = sorted(p.name for p in out.rglob("*") if p.is_file())
  assert written in ([], ["000000.label"])  # Complete files only, never a partial one.


def test_evaluate_names_missing_and_short_files(tmp_path, info, val_tree, capsys):
  refs = readers.list_scans("semantickitti", val_tree, "val")
  predict.predict_scans(refs, "semantickitti", PixelRulePredictor(info), tmp_path,
                        log=lambda s: None)
  victim = submission.kitti_prediction_path(tmp_path, "08", "000001")
  victim.write_bytes(victim.read_bytes()[:-4])
  argv = ["--dataset", "semantickitti", "--raw_dir", str(val_tree), "--pred_dir", str(tmp_path)]
  assert evaluate.main(argv) == 1
  assert f"{victim}: " in capsys.readouterr().err
  victim.unlink()
  assert evaluate.main(argv) == 1
  err = capsys.readouterr().err
  assert f"{victim}: missing" in err and len(err.strip().splitlines()) == 1


def test_evaluate_cli_json_and_pictures(tmp_path, info, val_tree, capsys):
  refs = readers.list_scans("semantickitti", val_tree, "val")
  predict.predict_scans(refs, "semantickitti", PixelRulePredictor(info), tmp_path,
                        pictures=1, ply=1, log=lambda s: None)
  assert evaluate.main(["--dataset", "semantickitti", "--raw_dir", str(val_tree), "--pred_dir",
                        str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
  assert "mIoU" in capsys.readouterr().out
  assert (tmp_path / "r.json").read_text().count('"miou": 1.0') == 1
  pictures = list((tmp_path / "pictures").glob("*.png"))
  assert len(pictures) == 1 and len(list((tmp_path / "ply").glob("*.ply"))) == 1


def test_picture_weak_labels_are_the_ones_data_prep_drew(tmp_path, info, val_tree):
  """Pictures redraw a scan's weak labels from the training data's data_prep settings: the
  same pixels as the converted example, because the draw is seeded by the scan id."""
  from data_prep import convert  # pylint: disable=g-import-not-at-top
  settings = convert.Settings(dataset="semantickitti", label_ratio=0.05, seed=3)
  data_dir = tmp_path / "tfds"
  (data_dir / ".data_prep").mkdir(parents=True)
  (data_dir / ".data_prep" / "config.json").write_text(json.dumps(
      {**dataclasses.asdict(settings), "shard_size": 64}))
  predictor = PixelRulePredictor(info)
  predictor.config = types.SimpleNamespace(data_dir=str(data_dir))
  weak = predict.training_weak_labels(predictor)
  ref = readers.list_scans("semantickitti", val_tree, "val")[1]
  example, _ = convert.convert_scan(settings, ref, labeled=True)
  scan = predict.prepare_scan("semantickitti", ref, dict(info.geometry))
  # pylint: disable=protected-access
  label = predict._point_labels("semantickitti", info, scan)
  pixels = predict._pixel_weak_labels("semantickitti", scan, label, weak)
  # pylint: enable=protected-access
  drawn = example["point_weak_label"]  # Per kept point, as data_prep stored it.
  assert (drawn > 0).sum() > 0 and (pixels > 0).sum() > 0
  np.testing.assert_array_equal(pixels, np.where(scan.winner >= 0,
                                                 drawn[np.maximum(scan.winner, 0)], 0))
  predict.predict_scans([ref], "semantickitti", predictor, tmp_path / "out", pictures=1,
                        log=lambda s: None)
  png = next((tmp_path / "out" / "pictures").glob("*.png"))
  panels = np.asarray(Image.open(png))
  assert panels.shape[0] == 5 * 2 * H + 4 * 2  # depth, weak, prediction, truth, error.
  assert predict.training_weak_labels(PixelRulePredictor(info)) is None


def test_panels_colors_for_a_known_label(info):
  depth = np.full((2, 4), 10.0)
  depth[0, 0] = -1
  pred = np.full((2, 4), 1)  # car
  label = np.array([[0, 1, 1, 1], [9, 1, 1, 1]])  # unlabeled, car, road
  weak = np.zeros((2, 4), int)
  weak[1, 3] = 1
  image = visualize.scan_panels(info.colors_rgb, depth, pred, label, weak, separator=1)
  assert image.shape == (5 * 2 + 4, 4, 3) and image.dtype == np.uint8
  car_rgb = [100, 150, 245]  # SemanticKITTI color_map[10] = [245, 150, 100] is BGR.
  weak_panel, pred_panel, gt_panel, err_panel = (image[3 * i:3 * i + 2] for i in range(1, 5))
  np.testing.assert_array_equal(pred_panel[1, 2], car_rgb)
  np.testing.assert_array_equal(pred_panel[0, 0], [0, 0, 0])  # Empty pixel.
  np.testing.assert_array_equal(weak_panel[0, 2], car_rgb)  # Dilated from (1, 3).
  np.testing.assert_array_equal(weak_panel[0, 0], [0, 0, 0])
  np.testing.assert_array_equal(gt_panel[1, 0], info.colors_rgb[9])
  np.testing.assert_array_equal(err_panel[1, 0], visualize.ERROR_RGB)
  np.testing.assert_array_equal(err_panel[1, 1], visualize.CORRECT_RGB)
  np.testing.assert_array_equal(err_panel[0, 0], [0, 0, 0])
  np.testing.assert_array_equal(image[2], np.full((4, 3), 255))  # Separator row.


def test_png_file_has_the_panel_colors(tmp_path, info):
  image = visualize.scan_panels(info.colors_rgb, np.full((2, 3), 5.0), np.full((2, 3), 1))
  path = visualize.write_png(tmp_path / "p.png", image)
  with Image.open(path) as png:
    assert png.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(png), image)
  np.testing.assert_array_equal(np.asarray(image[-1, 0]), [100, 150, 245])


def test_bad_scans_fail_clearly_and_leave_no_partial_files(tmp_path, info):
  rng = np.random.default_rng(2)
  good = pixel_rule_scan(info, rng)
  empty = (np.full((4, 4), np.nan, np.float32), np.zeros(4, np.uint32))
  write_tree(tmp_path / "raw", {"08": [good, empty]})
  refs = readers.list_scans("semantickitti", tmp_path / "raw", "val")
  out = tmp_path / "out"
  with pytest.raises(predict.PredictError, match=str(refs[1].points_path)):
    predict.predict_scans(refs, "semantickitti", PixelRulePredictor(info), out, log=lambda s: None)
  written = sorted(p.name for p in out.rglob("*") if p.is_file())
  assert written == ["000000.label"]  # The good scan, complete; no temporary files.


def test_kitti_test_split_zip_passes_validation(tmp_path, info, monkeypatch):
  rng = np.random.default_rng(3)
  scans = {s: [(random_scan(info, rng, n=int(rng.integers(20, 60)))[0], None)]
           for s in submission.KITTI_TEST_SEQUENCES}
  write_tree(tmp_path / "raw", scans)
  kitti_info = dataclasses.replace(info, name="semantickitti")
  monkeypatch.setattr(predict, "_load_predictor", lambda workdir, checkpoint: PixelRulePredictor(
      kitti_info))
  out = tmp_path / "out"
  argv = ["--workdir", str(tmp_path / "w"), "--raw_dir", str(tmp_path / "raw"), "--out_dir",
          str(out), "--split", "test", "--zip", "--batch_size", "4"]
  assert predict.main(argv) == 0
  submission.validate_kitti_submission(out / "submission.zip", tmp_path / "raw")
  assert len(list(out.glob("sequences/*/predictions/*.label"))) == 11


def test_missing_checkpoint_is_one_clear_error(tmp_path, capsys):
  argv = ["--workdir", str(tmp_path / "nowhere"), "--raw_dir", str(tmp_path), "--out_dir",
          str(tmp_path / "out")]
  assert predict.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(tmp_path / "nowhere") in err[0]
  assert not (tmp_path / "out").exists()


def write_nuscenes_tree(root, scans):
  """A v1.0-trainval folder with one val scene (scene-0003) of LIDAR_TOP key frames."""
  version = root / "v1.0-trainval"
  (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
  (root / "lidarseg" / "v1.0-trainval").mkdir(parents=True)
  version.mkdir()
  sample_data, lidarseg, samples = [], [], []
  for i, (points, raw) in enumerate(scans):
    token = f"sd{i:030d}"
    filename = f"samples/LIDAR_TOP/sweep{i}.pcd.bin"
    ring = np.zeros((len(points), 1), np.float32)
    np.concatenate([points, ring], 1).astype(np.float32).tofile(root / filename)
    label_file = f"lidarseg/v1.0-trainval/{token}_lidarseg.bin"
    raw.astype(np.uint8).tofile(root / label_file)
    samples.append({"token": f"s{i}", "scene_token": "scene3"})
    sample_data.append({"token": token, "sample_token": f"s{i}", "filename": filename,
                        "is_key_frame": True, "timestamp": 1000 + i})
    lidarseg.append({"token": f"l{i}", "sample_data_token": token, "filename": label_file})
  tables = {"scene": [{"token": "scene3", "name": "scene-0003"}], "sample": samples,
            "sample_data": sample_data, "lidarseg": lidarseg}
  for name, rows in tables.items():
    (version / f"{name}.json").write_text(json.dumps(rows))


def test_nuscenes_layout_and_round_trip(tmp_path):
  info = dataclasses.replace(datasets.get_info("nuscenes"), height=H, width=W)
  rng = np.random.default_rng(4)
  scans = [pixel_rule_scan(info, rng) for _ in range(2)]
  write_nuscenes_tree(tmp_path / "raw", scans)
  refs = readers.list_scans("nuscenes", tmp_path / "raw", "val")
  assert len(refs) == 2
  out = tmp_path / "out"
  predict.predict_scans(refs, "nuscenes", PixelRulePredictor(info), out, split="val",
                        log=lambda s: None)
  sizes = {ref.scan_id: len(points) for ref, (points, _) in zip(refs, scans)}
  submission.validate_nuscenes_submission(out, "val", sizes)
  files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
  assert files == sorted([f"lidarseg/val/{t}_lidarseg.bin" for t in sizes] +
                         ["val/submission.json"])
  pred = np.fromfile(out / "lidarseg" / "val" / f"{refs[0].scan_id}_lidarseg.bin", np.uint8)
  assert pred.min() >= 1 and pred.max() <= 16
  results = evaluate.evaluate_predictions("nuscenes", tmp_path / "raw", out, "val")
  assert results["protocol"] == "nuscenes" and results["miou"] == 1.0


class PixelOraclePredictor(LookupPredictor):
  """The true class of every pixel's winning point (never 0: ignored pixels say class 1)."""

  def register_scan(self, dataset, ref):
    scan = predict.prepare_scan(dataset, ref, self.info.geometry)
    raw = readers.read_labels(dataset, ref, len(scan.points))
    learning = datasets.map_labels(self.info, raw)[scan.finite]
    pixel = np.where(scan.winner >= 0, learning[np.maximum(scan.winner, 0)], 0)
    self.table[_image_key(scan.image)] = np.where(pixel > 0, pixel, 1)


def test_real_sample_counts_and_knn_recovers_lost_pixels(tmp_path, sample_dir):
  info = datasets.get_info("semantickitti")
  refs = readers.list_scans("semantickitti", sample_dir, sequences=["00"])
  oracle = PixelOraclePredictor(info)
  for ref in refs:
    oracle.register_scan("semantickitti", ref)
  accuracy = {}
  for knn in (False, True):
    out = tmp_path / f"knn{knn}"
    predict.predict_scans(refs, "semantickitti", oracle, out, knn=knn, log=lambda s: None)
    for ref in refs:
      path = submission.kitti_prediction_path(out, ref.sequence, ref.frame)
      assert path.stat().st_size == ref.points_path.stat().st_size // 4  # 16 B in, 4 B out.
    results = evaluate.evaluate_predictions("semantickitti", sample_dir, out, sequences=["00"])
    accuracy[knn] = results["accuracy"]
  # Perfect pixels: only points that lost their pixel are wrong, and KNN wins most back.
  assert 0.95 < accuracy[False] < accuracy[True] - 0.005
