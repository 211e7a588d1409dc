"""The synthetic LiDAR: exact ray casting, SemanticKITTI layout, determinism, realistic scans."""
import os

import numpy as np
import pytest

from coarse3d_jax.data import datasets
from coarse3d_jax.data import projection
from data_prep import synthetic
from data_prep import synthetic_geometry as geo

KITTI = datasets.get_info("semantickitti")


@pytest.fixture(scope="module")
def one_scan():
  scene = synthetic.sequence_scene(0, "00")
  return scene, *synthetic.scan(scene, 3, np.random.default_rng(7))


def _box_scene(center, half) -> synthetic.Scene:
  builder = synthetic._Builder(np.random.default_rng(0))  # pylint: disable=protected-access
  builder.add(geo.BOX, center, half, synthetic.BUILDING, 0.5)
  return builder.scene(road_half=4.0, parking=np.zeros((0, 2)), sensor_y=0.0)


def test_cast_hits_a_wall_and_the_ground_at_their_analytic_distances():
  scene = _box_scene(center=(20.0, 0.0, 5.0), half=(1.0, 30.0, 5.0))  # Wall face at x = 19.
  origin = np.array([0.0, 0.0, synthetic.SENSOR_HEIGHT])
  dx, dy, dz, azimuth = synthetic.ray_directions(np.random.default_rng(1))
  t, hit = synthetic.cast(scene, origin, dx, dy, dz, azimuth)
  d = [np.asarray(v, np.float64) for v in (dx, dy, dz)]
  with np.errstate(divide="ignore"):
    t_wall = np.where(d[0] > 0, 19.0 / d[0], np.inf)
    t_ground = np.where(d[2] < 0, -synthetic.SENSOR_HEIGHT / d[2], np.inf)
  wall_y = d[1] * t_wall
  wall_z = origin[2] + d[2] * t_wall
  on_wall = (np.abs(wall_y) <= 30) & (wall_z >= 0) & (wall_z <= 10) & (t_wall <= t_ground)
  want = np.where(on_wall, t_wall, t_ground)
  want = np.where(want <= synthetic.MAX_RANGE, want, np.inf)
  assert on_wall.sum() > 5000 and (~on_wall & np.isfinite(want)).sum() > 5000
  np.testing.assert_array_equal(hit == 0, on_wall)
  np.testing.assert_array_equal(np.isfinite(t), np.isfinite(want))
  finite = np.isfinite(want)
  np.testing.assert_allclose(t[finite], want[finite], rtol=2e-6)


def test_ground_labels_follow_road_bays_and_terrain():
  scene = synthetic.Scene(*(np.zeros(0),) * 7, road_half=5.0, parking=np.array([[10.0, 20.0]]),
                          sensor_y=0.0)
  x = np.array([0.0, 15.0, 15.0, 0.0, 15.0])
  y = np.array([0.0, 4.0, 1.0, 6.0, -4.5])
  np.testing.assert_array_equal(
      synthetic.ground_labels(scene, x, y),
      [synthetic.ROAD, synthetic.PARKING, synthetic.ROAD, synthetic.TERRAIN, synthetic.PARKING])


def test_a_scan_looks_like_semantickitti(one_scan):
  scene, points, labels = one_scan
  assert points.dtype == np.float32 and labels.dtype == np.uint32
  assert 100_000 < len(points) < 131_072
  semantic = labels & 0xFFFF
  assert KITTI.raw_known[semantic].all()  # Every id is a real SemanticKITTI id.
  learning = KITTI.learning_map[semantic]
  present = set(np.unique(learning[learning > 0]).tolist())
  assert len(present) >= 9, present
  depth = np.linalg.norm(points[:, :3], axis=1)
  assert depth.max() < synthetic.MAX_RANGE + 0.2 and depth.min() > 1.0
  road = semantic == synthetic.ROAD
  np.testing.assert_allclose(np.median(points[road, 2]), -synthetic.SENSOR_HEIGHT, atol=0.01)
  assert 0 <= points[:, 3].min() and points[:, 3].max() <= 1
  # Things carry instance ids, stuff does not.
  cars = semantic == synthetic.CAR
  assert cars.any() and (labels[cars] >> 16).min() > 0 and (labels[road] >> 16).max() == 0
  # Most pixels of the KITTI range image are hit, as in real scans (~80-90%).
  row, col, _ = projection.project_np(points[:, :3], KITTI.height, KITTI.width, KITTI.fov_up,
                                      KITTI.fov_down, KITTI.fov_left, KITTI.fov_right)
  filled = np.zeros((KITTI.height, KITTI.width), bool)
  filled[row, col] = True
  assert 0.7 < filled.mean() < 0.95


def test_classes_are_imbalanced_and_not_separable_point_by_point(one_scan):
  """Rare classes stay rare, and a per-point Gaussian classifier on (height, range, remission)
  trained on another scan of the street scores a low mIoU: the model needs context."""
  scene, points, labels = one_scan
  learning = KITTI.learning_map[labels & 0xFFFF]
  counts = np.bincount(learning, minlength=KITTI.num_classes)
  assert counts[KITTI.class_names.index("road")] > 20 * counts[KITTI.class_names.index("person")]

  def features(pts):
    return np.stack([pts[:, 2], np.linalg.norm(pts[:, :3], axis=1), pts[:, 3]], 1)

  train_pts, train_lab = synthetic.scan(scene, 12, np.random.default_rng(8))
  train_y = KITTI.learning_map[train_lab & 0xFFFF]
  x, y = features(train_pts)[train_y > 0], train_y[train_y > 0]
  classes = np.unique(y)
  mean = np.stack([x[y == c].mean(0) for c in classes])
  std = np.stack([x[y == c].std(0) + 1e-3 for c in classes])
  log_prior = np.log([np.mean(y == c) for c in classes])
  xt, yt = features(points)[learning > 0], learning[learning > 0]
  score = (-0.5 * (((xt[:, None] - mean) / std) ** 2).sum(-1) - np.log(std).sum(-1) + log_prior)
  pred = classes[score.argmax(1)]
  conf = np.zeros((KITTI.num_classes,) * 2)
  np.add.at(conf, (yt, pred), 1)
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  miou = np.mean(tp[union > 0] / union[union > 0])
  assert miou < 0.45, miou


def test_generate_tree_is_deterministic_whatever_the_workers(tmp_path):
  serial = synthetic.generate_tree(tmp_path / "a", sequences=("00", "04"), scans_per_sequence=2)
  parallel = synthetic.generate_tree(tmp_path / "b", sequences=("00", "04"),
                                     scans_per_sequence=2, workers=2)
  rel = [p.relative_to(tmp_path / "a") for p in serial]
  assert [str(r) for r in rel] == [f"sequences/{s}/velodyne/00000{f}.bin"
                                   for s in ("00", "04") for f in (0, 1)]
  assert [p.relative_to(tmp_path / "b") for p in parallel] == rel
  for r in rel:
    label = (tmp_path / "a" / r).parent.parent / "labels" / r.name.replace(".bin", ".label")
    assert (tmp_path / "a" / r).read_bytes() == (tmp_path / "b" / r).read_bytes()
    assert label.read_bytes() == (tmp_path / "b" / label.relative_to(tmp_path / "a")).read_bytes()
    assert os.path.getsize(tmp_path / "a" / r) == 4 * os.path.getsize(label)
  # Different streets per sequence; different sweeps per frame.
  assert serial[0].read_bytes() != serial[2].read_bytes()
  assert serial[0].read_bytes() != serial[1].read_bytes()
  # A rerun keeps the finished scans (an interrupted generation resumes).
  before = serial[0].stat().st_mtime_ns
  synthetic.generate_tree(tmp_path / "a", sequences=("00", "04"), scans_per_sequence=2)
  assert serial[0].stat().st_mtime_ns == before
  assert not list((tmp_path / "a").rglob(".*tmp*"))


def test_bad_sequence_name_is_refused(tmp_path):
  with pytest.raises(ValueError, match="'ab'"):
    synthetic.generate_tree(tmp_path, sequences=("ab",))
