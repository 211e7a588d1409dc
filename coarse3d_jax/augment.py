"""On-device augmentation and feature preparation for range images.

Two augmentation modes, both jit-able with static shapes:
- 'points': the reference 3D augmentation (flip y, translate, roll/pitch/yaw) applied to the
  stored points, then a re-projection with `projection.range_image_jnp`;
- 'range': the two transforms that are exact in range-image space, a yaw rotation by a whole
  number of columns (column roll) and the y-flip (column mirror).
"""
from typing import Any

import jax
import jax.numpy as jnp

from coarse3d_jax.data import projection

Array = jax.Array


def rotation_matrix(roll: Array, pitch: Array, yaw: Array) -> Array:
  """Rz(yaw) @ Ry(pitch) @ Rx(roll); angles in radians. Returns (3, 3)."""
  cr, sr = jnp.cos(roll), jnp.sin(roll)
  cp, sp = jnp.cos(pitch), jnp.sin(pitch)
  cy, sy = jnp.cos(yaw), jnp.sin(yaw)
  rx = jnp.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
  ry = jnp.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
  rz = jnp.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _gated(rng: Array, prob: float, value: Array) -> Array:
  """`value` with probability `prob`, else zeros of its shape."""
  return jnp.where(jax.random.uniform(rng) < prob, value, jnp.zeros_like(value))


def augment_points(rng: Array, points: Array, aug: Any) -> Array:
  """The reference 3D augmentation of one scan.

  Args:
    rng: PRNG key.
    points: (N, 4) float32 x, y, z, remission.
    aug: the `config.augment` ConfigDict.
  Returns:
    (N, 4) augmented points (remission unchanged).
  """
  k_flip, k_t, k_tg, k_r, k_rg = jax.random.split(rng, 5)
  flip = jax.random.uniform(k_flip) < aug.flip_prob
  xyz = points[:, :3] * jnp.where(flip, jnp.array([1., -1., 1.]), 1.)
  z_lo, z_hi = aug.translate_z
  lo = jnp.array([-aug.translate_x, -aug.translate_y, z_lo])
  hi = jnp.array([aug.translate_x, aug.translate_y, z_hi])
  shift = jax.random.uniform(k_t, (3,), minval=lo, maxval=hi)
  shift = jnp.where(jax.random.uniform(k_tg, (3,)) < aug.translate_prob, shift, 0.)
  max_angle = jnp.deg2rad(aug.rotate_degrees)
  angles = jax.random.uniform(k_r, (3,), minval=-max_angle, maxval=max_angle)
  angles = jnp.where(jax.random.uniform(k_rg, (3,)) < aug.rotate_prob, angles, 0.)
  xyz = xyz @ rotation_matrix(*angles).T + shift
  return jnp.concatenate([xyz, points[:, 3:]], axis=-1)


def roll_columns(image: Array, shift: Array) -> Array:
  """Rolls (H, W, ...) by `shift` columns with a traced shift."""
  width = image.shape[1]
  cols = (jnp.arange(width) - shift) % width
  return jnp.take(image, cols, axis=1)


def yaw_roll(image: Array, labels: tuple[Array, ...], shift: Array):
  """Rotates a scan about z by `shift` whole columns, exactly, in range-image space.

  A shift of s columns moves every point's column from c to c + s, i.e. decreases atan2(y, x)
  by s * 2 pi / W (the projection takes yaw = -atan2(y, x)); x and y channels are rotated to match.

  Args:
    image: (H, W, 5) range, x, y, z, remission (-1 on empty pixels).
    labels: (H, W) images rolled along.
    shift: int scalar.
  """
  width = image.shape[1]
  theta = -2. * jnp.pi * shift / width
  c, s = jnp.cos(theta), jnp.sin(theta)
  x, y = image[..., 1], image[..., 2]
  valid = image[..., 0] > 0
  x_new = jnp.where(valid, c * x - s * y, x)
  y_new = jnp.where(valid, s * x + c * y, y)
  image = image.at[..., 1].set(x_new).at[..., 2].set(y_new)
  return roll_columns(image, shift), tuple(roll_columns(l, shift) for l in labels)


def mirror_y(image: Array, labels: tuple[Array, ...]):
  """The y-flip (y -> -y) in range-image space: column c goes to W - 1 - c."""
  valid = image[..., 0] > 0
  image = image.at[..., 2].set(jnp.where(valid, -image[..., 2], image[..., 2]))
  return image[:, ::-1], tuple(l[:, ::-1] for l in labels)


def augment_range(rng: Array, image: Array, labels: tuple[Array, ...], aug: Any):
  """Random yaw roll (uniform over all columns, like the reference's p=0.5 yaw over a range
  here replaced by whole-column steps) and y-mirror with `flip_prob`. Shapes are kept."""
  k_flip, k_roll, k_gate = jax.random.split(rng, 3)
  width = image.shape[1]
  max_cols = jnp.round(aug.rotate_degrees / 360. * width).astype(jnp.int32)
  shift = jax.random.randint(k_roll, (), -max_cols, max_cols + 1)
  shift = jnp.where(jax.random.uniform(k_gate) < aug.rotate_prob, shift, 0)
  image, labels = yaw_roll(image, labels, shift)
  flipped = mirror_y(image, labels)
  flip = jax.random.uniform(k_flip) < aug.flip_prob
  return jax.tree.map(lambda a, b: jnp.where(flip, a, b), flipped, (image, labels))


def reproject(points: Array, valid: Array, point_labels: tuple[Array, ...],
              geometry: dict[str, Any]):
  """Projects padded points to a range image and label images (closest point wins).

  Args:
    points: (B, N, 4) x, y, z, remission.
    valid: (B, N) bool, False on padding.
    point_labels: tuple of (B, N) uint8 per-point labels.
    geometry: height, width, fov_up, fov_down, fov_left, fov_right.
  Returns:
    image (B, H, W, 5) with -1 on empty pixels, and a tuple of (B, H, W) int32 label images
    (0 on empty pixels).
  """
  image, winner, _, _ = projection.range_image_jnp(points, valid, **geometry)
  has_point = winner >= 0
  safe = jnp.maximum(winner, 0)
  images = tuple(
      jnp.where(has_point, jnp.take_along_axis(
          lab.astype(jnp.int32), safe.reshape(safe.shape[0], -1), axis=1
      ).reshape(winner.shape), 0) for lab in point_labels)
  return image, images


def random_crop_columns(rng: Array, arrays: tuple[Array, ...], crop_width: int):
  """The same random window of `crop_width` columns from each (H, W, ...) array."""
  width = arrays[0].shape[1]
  start = jax.random.randint(rng, (), 0, width - crop_width + 1)
  return tuple(jax.lax.dynamic_slice_in_dim(a, start, crop_width, axis=1) for a in arrays)


def normalize(image: Array, mean: Array, std: Array) -> Array:
  """(..., H, W, 5) raw features -> normalized, zero on empty pixels (range <= 0)."""
  # A static slice even under a symbolic batch size (jnp indexing would export a gather, which
  # the TFLite converter cannot read).
  valid = jax.lax.slice_in_dim(image, 0, 1, axis=-1) > 0
  return jnp.where(valid, (image - mean) / std, 0.).astype(jnp.float32)
