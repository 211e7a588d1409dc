"""Range-image augmentations are exactly the 3D transforms they stand for."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coarse3d_jax import augment
from coarse3d_jax.data import datasets
from tests import tiny_data

H, W = tiny_data.HEIGHT, tiny_data.WIDTH


@pytest.fixture(scope="module")
def scan():
  info = datasets.get_info("synthetic")
  points, labels, weak = tiny_data.make_scan(np.random.default_rng(3), info, 0.2)
  return info, points, labels


def _geometry(info):
  return dict(height=H, width=W, fov_up=info.fov_up, fov_down=info.fov_down,
              fov_left=info.fov_left, fov_right=info.fov_right)


def _project(info, points, labels):
  image, (label,) = augment.reproject(jnp.asarray(points)[None],
                                      jnp.ones((1, len(points)), bool),
                                      (jnp.asarray(labels)[None],), _geometry(info))
  return np.asarray(image[0]), np.asarray(label[0])


def _rotate_z(points, theta):
  c, s = np.cos(theta), np.sin(theta)
  out = points.copy()
  out[:, 0], out[:, 1] = c * points[:, 0] - s * points[:, 1], s * points[:, 0] + c * points[:, 1]
  return out


@pytest.mark.parametrize("shift", [1, 5, -7])
def test_column_roll_equals_reprojected_yaw_rotation(scan, shift):
  info, points, labels = scan
  image, label = _project(info, points, labels)
  rolled, (rolled_label,) = augment.yaw_roll(jnp.asarray(image), (jnp.asarray(label),), shift)
  expect_image, expect_label = _project(info, _rotate_z(points, -2 * np.pi * shift / W), labels)
  np.testing.assert_array_equal(np.asarray(rolled_label), expect_label)
  np.testing.assert_allclose(np.asarray(rolled), expect_image, atol=1e-4)


def test_column_mirror_equals_reprojected_y_flip(scan):
  info, points, labels = scan
  image, label = _project(info, points, labels)
  mirrored, (mirrored_label,) = augment.mirror_y(jnp.asarray(image), (jnp.asarray(label),))
  flipped = points * np.array([1, -1, 1, 1], np.float32)
  expect_image, expect_label = _project(info, flipped, labels)
  np.testing.assert_array_equal(np.asarray(mirrored_label), expect_label)
  np.testing.assert_allclose(np.asarray(mirrored), expect_image, atol=1e-4)


def _aug(**kw):
  base = dict(flip_prob=0.0, translate_prob=0.0, translate_x=5.0, translate_y=3.0,
              translate_z=(-1.0, 0.0), rotate_prob=0.0, rotate_degrees=5.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_point_augmentation_transforms(scan):
  _, points, _ = scan
  pts = jnp.asarray(points)
  key = jax.random.PRNGKey(0)
  np.testing.assert_allclose(augment.augment_points(key, pts, _aug()), pts, atol=1e-6)
  flipped = np.asarray(augment.augment_points(key, pts, _aug(flip_prob=1.0)))
  np.testing.assert_allclose(flipped, points * np.array([1, -1, 1, 1]), atol=1e-6)
  rotated = np.asarray(augment.augment_points(key, pts, _aug(rotate_prob=1.0)))
  np.testing.assert_allclose(np.linalg.norm(rotated[:, :3], axis=1),
                             np.linalg.norm(points[:, :3], axis=1), rtol=1e-5)
  assert not np.allclose(rotated, points, atol=1e-3)
  moved = np.asarray(augment.augment_points(key, pts, _aug(translate_prob=1.0)))
  shift = moved[:, :3] - points[:, :3]
  np.testing.assert_allclose(shift, np.broadcast_to(shift[:1], shift.shape), atol=1e-5)
  assert abs(shift[0, 0]) <= 5 and abs(shift[0, 1]) <= 3 and -1 <= shift[0, 2] <= 0
  np.testing.assert_array_equal(moved[:, 3], points[:, 3])


def test_rotation_matrix_is_orthonormal():
  r = np.asarray(augment.rotation_matrix(0.1, -0.2, 0.3), np.float64)
  np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-6)


def test_normalize_zeroes_empty_pixels():
  image = np.array([[[[10., 1, 2, 3, 4], [-1., -1, -1, -1, -1]]]], np.float32)
  mean, std = np.array([2., 1, 0, 3, 2]), np.array([4., 1, 2, 1, 2])
  out = np.asarray(augment.normalize(image, mean, std))
  np.testing.assert_allclose(out[0, 0, 0], (image[0, 0, 0] - mean) / std)
  np.testing.assert_array_equal(out[0, 0, 1], 0.0)


def test_random_crop_takes_the_same_window():
  a = jnp.arange(2 * 10).reshape(2, 10)
  b = a * 10
  ca, cb = augment.random_crop_columns(jax.random.PRNGKey(1), (a, b), 4)
  assert ca.shape == (2, 4)
  np.testing.assert_array_equal(np.asarray(cb), np.asarray(ca) * 10)
  start = int(ca[0, 0])
  np.testing.assert_array_equal(np.asarray(ca[0]), np.arange(start, start + 4))
