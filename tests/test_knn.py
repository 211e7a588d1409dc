"""RangeNet++ KNN post-processing: a hand-made scene and a plain numpy reimplementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax import knn

NUM_CLASSES = 5


def _numpy_knn(range_image, labels, point_range, row, col, num_classes, k=5, search=5,
               sigma=1.0, cutoff=1.0):
  """One scan, one point at a time, straight from the RangeNet++ description."""
  pad = search // 2
  h, w = range_image.shape
  offsets = np.arange(search) - pad
  gauss = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
  weights = (1 - gauss / gauss.sum()).astype(np.float32)
  out = np.zeros(len(point_range), np.int64)
  for i, (r, y, x) in enumerate(zip(point_range, row, col)):
    dist = np.zeros((search, search), np.float32)
    lab = np.zeros((search, search), np.int64)
    for a in range(search):
      for b in range(search):
        yy, xx = y + a - pad, x + b - pad
        inside = 0 <= yy < h and 0 <= xx < w
        neighbour = range_image[yy, xx] if inside else np.float32(0)  # Zero padding.
        if neighbour < 0:
          neighbour = np.float32(np.inf)
        if a == pad and b == pad:
          neighbour = r
        dist[a, b] = np.abs(np.float32(neighbour) - np.float32(r)) * weights[a, b]
        lab[a, b] = labels[yy, xx] if inside else 0
    order = np.argsort(dist.reshape(-1), kind="stable")[:k]
    votes = np.zeros(num_classes + 1, np.int64)
    for j in order:
      votes[num_classes if dist.reshape(-1)[j] > cutoff else lab.reshape(-1)[j]] += 1
    out[i] = np.argmax(votes[1:num_classes]) + 1
  return out


def _scene():
  """A wall (class 2, range 20) with a pole in front (class 1, range 5) in column 4."""
  h, w = 5, 9
  image = np.full((h, w), 20.0, np.float32)
  labels = np.full((h, w), 2, np.int32)
  image[:, 4], labels[:, 4] = 5.0, 1
  image[0, 0] = -1.0  # An empty pixel.
  return image, labels


def _run(image, labels, ranges, rows, cols, valid=None):
  ranges = np.asarray(ranges, np.float32)[None]
  valid = np.ones_like(ranges, bool) if valid is None else np.asarray(valid)[None]
  out = knn.knn_labels(image[None], labels[None], ranges, np.asarray(rows, np.int32)[None],
                       np.asarray(cols, np.int32)[None], valid, num_classes=NUM_CLASSES)
  return np.asarray(out)[0]


def test_point_behind_pole_gets_the_wall_label():
  image, labels = _scene()
  # 0: wall point that lost pixel (2, 4) to the pole -> wall (its pixel says pole).
  # 1: the pole point itself -> pole.  2: a wall point on the wall -> wall.
  # 3: a point far behind everything (range 40) on a pole pixel: only its own pixel votes.
  out = _run(image, labels, [20.1, 5.0, 20.0, 40.0], [2, 2, 1, 3], [4, 4, 7, 4])
  np.testing.assert_array_equal(out, [2, 1, 2, 1])


def test_padding_points_get_zero_and_no_vote_defaults_to_one():
  image, labels = _scene()
  labels = labels.copy()
  labels[2, 7] = 0  # Unlabeled pixel: its lone point (range 40) has no vote at all.
  out = _run(image, labels, [40.0, 20.0], [2, 1], [7, 1], valid=[True, False])
  np.testing.assert_array_equal(out, [1, 0])


def test_matches_numpy_reimplementation_batched():
  rng = np.random.default_rng(0)
  b, h, w, n = 2, 6, 13, 150
  # Ranges on a 0.5 m grid so that equal distances (tie-breaking) really occur.
  image = (rng.integers(2, 12, (b, h, w)) * 0.5).astype(np.float32)
  image[rng.random((b, h, w)) < 0.2] = -1.0
  labels = rng.integers(0, NUM_CLASSES, (b, h, w)).astype(np.int32)
  row = rng.integers(0, h, (b, n)).astype(np.int32)
  col = rng.integers(0, w, (b, n)).astype(np.int32)
  ranges = (rng.integers(2, 14, (b, n)) * 0.5).astype(np.float32)
  valid = rng.random((b, n)) < 0.9
  out = np.asarray(knn.knn_labels(image, labels, ranges, row, col, valid,
                                  num_classes=NUM_CLASSES))
  for i in range(b):
    want = _numpy_knn(image[i], labels[i], ranges[i], row[i], col[i], NUM_CLASSES)
    np.testing.assert_array_equal(out[i], np.where(valid[i], want, 0))


def test_inverse_gaussian_weights():
  weights = knn.inverse_gaussian_weights(5, 1.0).reshape(5, 5)
  total = sum(np.exp(-(dy * dy + dx * dx) / 2) for dy in range(-2, 3) for dx in range(-2, 3))
  assert weights[2, 2] == pytest.approx(1 - 1 / total, rel=1e-6)
  assert weights[0, 0] == pytest.approx(1 - np.exp(-4) / total, rel=1e-6)


def test_smallest_k_is_top_k_of_the_negated_distances():
  """Same values and indices as lax.top_k(-d), ties (lower index first) and inf included."""
  rng = np.random.default_rng(3)
  d = rng.integers(0, 4, (6, 50, 25)).astype(np.float32) / 4  # Many ties.
  d[d == 0.75] = np.inf
  d[0, 0] = np.inf  # A point without any finite neighbour.
  neg, want = jax.lax.top_k(-jnp.asarray(d), 5)
  got_values, got = knn._smallest(jnp.asarray(d), 5)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(got_values), -np.asarray(neg))
