"""Range projection: numpy vs the reference's float32 recipe and an exact float64 formula,
hand-computed cases, jnp vs numpy."""
import jax
import numpy as np
import pytest

from coarse3d_jax.data import projection

KITTI = dict(height=64, width=2048, fov_up=3.0, fov_down=-25.0, fov_left=-180.0, fov_right=180.0)
SMALL = dict(KITTI, height=16, width=64)


def reference_projection(points, height, width, fov_up, fov_down, fov_left, fov_right):
  """The COARSE3D RangeProjection recipe written out in float64 (independent of the package).

  Returns row, col (N,), and the (H, W) index image after writing the points in order of
  decreasing float32 depth (ties: the later point of the scan first), last write wins.
  """
  xyz = points[:, :3].astype(np.float64)
  depth = np.linalg.norm(xyz, axis=1)
  fov_v = np.radians(abs(fov_up) + abs(fov_down))
  fov_h = np.radians(abs(fov_left) + abs(fov_right))
  yaw = -np.arctan2(xyz[:, 1], xyz[:, 0])
  pitch = np.arcsin(xyz[:, 2] / depth)
  u = (yaw + np.radians(abs(fov_left))) / fov_h * width
  v = (1.0 - (pitch + np.radians(abs(fov_down))) / fov_v) * height
  col = np.maximum(np.minimum(width - 1, np.floor(u)), 0).astype(np.int64)
  row = np.maximum(np.minimum(height - 1, np.floor(v)), 0).astype(np.int64)
  index = np.arange(len(points))
  order = np.lexsort((-index, -depth.astype(np.float32)))  # depth desc, then index desc
  image = np.full((height, width), -1, np.int64)
  image[row[order], col[order]] = index[order]
  return row, col, image, u, depth


def reference_float32(points, height, width, fov_up, fov_down, fov_left, fov_right):
  """The reference RangeProjection's own arithmetic (float32 numpy) and its winner image:
  points written in np.argsort(depth)[::-1] order, the last write to a pixel wins."""
  depth = np.linalg.norm(points[:, :3], 2, axis=1)
  yaw = -np.arctan2(points[:, 1], points[:, 0])
  pitch = np.arcsin(points[:, 2] / depth)
  fov_v = abs(fov_up / 180.0 * np.pi) + abs(fov_down / 180.0 * np.pi)
  fov_h = abs(fov_left / 180.0 * np.pi) + abs(fov_right / 180.0 * np.pi)
  u = (yaw + abs(fov_left / 180.0 * np.pi)) / fov_h
  v = 1.0 - (pitch + abs(fov_down / 180.0 * np.pi)) / fov_v
  u *= width
  v *= height
  col = np.maximum(np.minimum(width - 1, np.floor(u)), 0).astype(np.int32)
  row = np.maximum(np.minimum(height - 1, np.floor(v)), 0).astype(np.int32)
  order = np.argsort(depth)[::-1]
  image = np.full((height, width), -1, np.int64)
  image[row[order], col[order]] = np.arange(len(points))[order]
  return row, col, depth, image


def load_sample_scans(sample_dir):
  paths = sorted((sample_dir / "sequences" / "00" / "velodyne").glob("*.bin"))
  return [np.fromfile(p, np.float32).reshape(-1, 4) for p in paths]


@pytest.fixture(scope="module")
def sample_scans(sample_dir):
  return load_sample_scans(sample_dir)


def test_matches_the_reference_arithmetic_on_real_scans(sample_scans):
  """Same pixel for every point and same winning point per pixel as RangeProjection."""
  for points in sample_scans:
    assert points.dtype == np.float32
    row, col, depth = projection.project_np(points[:, :3], **KITTI)
    ref_row, ref_col, ref_depth, ref_winner = reference_float32(points, **KITTI)
    np.testing.assert_array_equal(row, ref_row)
    np.testing.assert_array_equal(col, ref_col)
    np.testing.assert_array_equal(depth, ref_depth)
    image, winner = projection.range_image_np(points, row, col, depth, KITTI["height"],
                                              KITTI["width"])
    np.testing.assert_array_equal(winner, ref_winner)
    has = ref_winner >= 0
    assert 0.7 < has.mean() < 0.9  # A real 64x2048 KITTI image is ~76% full.
    np.testing.assert_array_equal(image[has, 1:], points[ref_winner[has]])
    np.testing.assert_array_equal(image[has, 0], ref_depth[ref_winner[has]])
    assert (image[~has] == -1).all()


def test_exact_formula_differs_only_within_rounding_of_column_edges(sample_scans):
  """The float64 formula moves only points within ~1e-4 px of a column edge, ~1 in 15,000."""
  for points in sample_scans:
    row, col, _ = projection.project_np(points[:, :3], **KITTI)
    row64, col64, image64, u, _ = reference_projection(points, **KITTI)
    np.testing.assert_array_equal(row, row64)
    moved = col != col64
    assert 0 < moved.sum() < 50
    distance_to_edge = np.abs(u - np.round(u))
    assert (distance_to_edge[moved] < 1e-3).all()


def test_hand_computed_pixels():
  points = np.array([[10.0, 0.0, 0.0],     # straight ahead: yaw 0 -> u = W/2
                     [0.0, 10.0, 0.0],     # left: yaw -90 deg -> u = W/4
                     [0.0, -10.0, 0.0],    # right: yaw +90 deg -> u = 3W/4
                     [-10.0, 0.0, 0.0],    # behind, yaw -180 -> u = 0
                     [-10.0, -0.0, 0.0],   # behind, yaw +180 -> u = W, clamped to W-1
                     [10.0, 0.0, 5.0],     # above the field of view -> row 0
                     [10.0, 0.0, -50.0]])  # below it -> row H-1
  row, col, depth = projection.project_np(points, **KITTI)
  # Pitch 0: v = (1 - 25/28) * 64 = 6.857.
  np.testing.assert_array_equal(row, [6, 6, 6, 6, 6, 0, 63])
  np.testing.assert_array_equal(col, [1024, 512, 1536, 0, 2047, 1024, 1024])
  np.testing.assert_allclose(depth, np.linalg.norm(points, axis=1), rtol=1e-7)


def test_closest_point_wins_and_ties_go_to_the_first_point():
  direction = np.array([1.0, 0.2, -0.1])
  direction /= np.linalg.norm(direction)
  points = np.zeros((5, 4), np.float32)
  points[:, :3] = direction * np.array([[9.0], [3.0], [7.0], [3.0], [5.0]])
  points[:, 3] = [0.1, 0.2, 0.3, 0.4, 0.5]
  row, col, depth = projection.project_np(points[:, :3], **SMALL)
  assert len(set(zip(row, col))) == 1
  image, winner = projection.range_image_np(points, row, col, depth, 16, 64)
  assert winner[row[0], col[0]] == 1  # depth 3 twice: point 1 comes before point 3.
  np.testing.assert_allclose(image[row[0], col[0]], [3.0, *points[1, :3], 0.2], rtol=1e-6)
  assert (winner >= 0).sum() == 1


def pixel_center_points(rng, batch, num, height, width, fov_up, fov_down, **_):
  """Points aimed at pixel centers (far from any pixel edge), with random depths."""
  rows = rng.integers(0, height, (batch, num))
  cols = rng.integers(0, width, (batch, num))
  pitch = np.radians(fov_up - (rows + 0.5) / height * (fov_up - fov_down))
  yaw = np.radians((cols + 0.5) / width * 360.0 - 180.0)
  depth = rng.uniform(1.0, 50.0, (batch, num))
  xyz = depth[..., None] * np.stack([np.cos(pitch) * np.cos(-yaw), np.cos(pitch) * np.sin(-yaw),
                                     np.sin(pitch)], -1)
  points = np.concatenate([xyz, rng.uniform(0, 1, (batch, num, 1))], -1).astype(np.float32)
  return points, rows, cols


@pytest.fixture(scope="module")
def range_image_jnp_small():
  return jax.jit(lambda p, v: projection.range_image_jnp(p, v, **SMALL))


def test_jnp_equals_numpy_with_padding(range_image_jnp_small):
  rng = np.random.default_rng(0)
  points, rows, cols = pixel_center_points(rng, 2, 300, **SMALL)
  valid = np.ones((2, 300), bool)
  valid[0, 200:] = False
  valid[1, 250:] = False
  # Padding sits in front of real points: it must never win a pixel.
  points[0, 200:, :3] = points[0, :100, :3] * 0.1
  points[1, 250:, :3] = 0.0
  image, winner, row, col = jax.device_get(range_image_jnp_small(points, valid))
  for b in range(2):
    n = valid[b].sum()
    np_row, np_col, np_depth = projection.project_np(points[b, :n, :3], **SMALL)
    np.testing.assert_array_equal(np_row, rows[b, :n])
    np.testing.assert_array_equal(np_col, cols[b, :n])
    np.testing.assert_array_equal(row[b, :n], np_row)
    np.testing.assert_array_equal(col[b, :n], np_col)
    np_image, np_winner = projection.range_image_np(points[b, :n], np_row, np_col, np_depth,
                                                    16, 64)
    np.testing.assert_array_equal(winner[b], np_winner)
    np.testing.assert_allclose(image[b], np_image, rtol=1e-6)


def test_jnp_equals_numpy_on_real_scan(sample_scans):
  """float32 on device: only points within float32 rounding of a pixel edge may move."""
  points = sample_scans[0]
  image, winner, row, col = jax.device_get(jax.jit(
      lambda p, v: projection.range_image_jnp(p, v, **KITTI))(points[None], np.ones(
          (1, len(points)), bool)))
  np_row, np_col, np_depth = projection.project_np(points[:, :3], **KITTI)
  _, _, _, u, _ = reference_projection(points, **KITTI)
  moved = (row[0] != np_row) | (col[0] != np_col)
  assert moved.sum() < 1e-3 * len(points)
  assert (np.abs(u - np.round(u))[moved] < 1e-3).all()
  np_image, np_winner = projection.range_image_np(points, np_row, np_col, np_depth, 64, 2048)
  differ = winner[0] != np_winner
  assert differ.sum() <= 2 * moved.sum() + 2
  same = ~differ & (np_winner >= 0)
  np.testing.assert_allclose(image[0][same], np_image[same], rtol=1e-6)
