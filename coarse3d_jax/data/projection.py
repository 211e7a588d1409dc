"""Spherical range projection of LiDAR points, as the COARSE3D reference `RangeProjection`.

depth = ||xyz||, yaw = -atan2(y, x), pitch = arcsin(z / depth);
u = (yaw + |fov_left|) / fov_horizontal * W, v = (1 - (pitch + |fov_down|) / fov_vertical) * H;
col = clamp(floor(u), 0, W - 1), row = clamp(floor(v), 0, H - 1). The closest point wins its
pixel (the reference writes points in order of decreasing depth); equal depths go to the point
that comes first in the scan, so the winner never depends on a sort's tie order.

The numpy version (data_prep, predict) repeats the reference's float32 arithmetic operation for
operation (its field-of-view constants in float64, rounded to float32 where they meet the
arrays), so every point of a real scan lands on the reference's pixel, including the ~1 in
15,000 that lie within float32 rounding of a column edge, where the exact (float64) formula
would pick the neighbouring column. Checkpoints trained with the reference see the same images.
The jnp version (on-device re-projection after 3D augmentation) is float32 with XLA's own
atan2/asin and agrees with it except on such edge points.
"""
import jax
import jax.numpy as jnp
import numpy as np


def _fov_radians(fov_up, fov_down, fov_left, fov_right):
  """(|down|, vertical, |left|, horizontal) in radians, rounded as the reference computes them."""
  if not (fov_up >= fov_down and fov_right > fov_left):
    raise ValueError(f"bad field of view: up {fov_up}, down {fov_down}, left {fov_left}, "
                     f"right {fov_right}")
  up, down = fov_up / 180.0 * np.pi, fov_down / 180.0 * np.pi
  left, right = fov_left / 180.0 * np.pi, fov_right / 180.0 * np.pi
  return abs(down), abs(up) + abs(down), abs(left), abs(left) + abs(right)


def project_np(xyz: np.ndarray, height: int, width: int, fov_up: float, fov_down: float,
               fov_left: float = -180.0, fov_right: float = 180.0):
  """Pixel and depth of every point, in the reference's float32 arithmetic.

  Args:
    xyz: (N, 3) finite coordinates (cast to float32, as stored in the scan files).
    height, width: image size; fov_*: degrees.
  Returns:
    row (N,) int32, col (N,) int32, depth (N,) float32.
  """
  down, vertical, left, horizontal = (np.float32(a) for a in _fov_radians(
      fov_up, fov_down, fov_left, fov_right))
  xyz = np.asarray(xyz, np.float32)
  x, y, z = np.array(xyz.T)  # Contiguous rows: faster ufuncs.
  depth = np.sqrt(x * x + y * y + z * z)  # np.linalg.norm's float32 sum, in the same order.
  # A point at the origin has no direction: give it pitch 0 rather than NaN.
  sin_pitch = np.divide(z, depth, out=np.zeros_like(z), where=depth > 0)
  pitch = np.arcsin(np.minimum(np.maximum(sin_pitch, np.float32(-1)), np.float32(1)))
  yaw = -np.arctan2(y, x)
  u = (yaw + left) / horizontal * np.float32(width)
  v = (np.float32(1) - (pitch + down) / vertical) * np.float32(height)
  return _clamped_floor(v, height), _clamped_floor(u, width), depth


def _clamped_floor(coord: np.ndarray, size: int) -> np.ndarray:
  """floor, clamped to [0, size - 1], as int32."""
  return np.minimum(np.maximum(np.floor(coord), 0), size - 1).astype(np.int32)


def range_image_np(points: np.ndarray, row: np.ndarray, col: np.ndarray, depth: np.ndarray,
                   height: int, width: int):
  """The range image of projected points: the closest point wins each pixel.

  Args:
    points: (N, 4) float32 x, y, z, remission.
    row, col: (N,) int pixel of each point; depth: (N,) float32 >= 0.
  Returns:
    image (H, W, 5) float32 (range, x, y, z, remission; -1 on empty pixels) and
    winner (H, W) int32 index of the winning point (-1 on empty pixels).
  """
  pixel = row.astype(np.uint64) * np.uint64(width) + col.astype(np.uint64)
  # One stable sort on (pixel, depth): non-negative float32 bit patterns sort like the floats.
  key = (pixel << np.uint64(32)) | np.asarray(depth, np.float32).view(np.uint32).astype(np.uint64)
  order = np.argsort(key, kind="stable")
  sorted_pixel = pixel[order]
  first = np.ones(len(order), bool)
  first[1:] = sorted_pixel[1:] != sorted_pixel[:-1]
  winners = order[first]
  flat_pixel = sorted_pixel[first].astype(np.intp)
  winner = np.full(height * width, -1, np.int32)
  winner[flat_pixel] = winners
  image = np.full((height * width, 5), -1.0, np.float32)
  image[flat_pixel, 0] = depth[winners]
  image[flat_pixel, 1:] = points[winners, :4]
  return image.reshape(height, width, 5), winner.reshape(height, width)


def pixel_values(values: np.ndarray, winner: np.ndarray, dtype=np.int32) -> np.ndarray:
  """(H, W) image of per-point values (N,) at each pixel's winning point, 0 on empty pixels."""
  if not len(values):
    return np.zeros(winner.shape, dtype)
  return np.where(winner >= 0, values[np.maximum(winner, 0)], 0).astype(dtype)


def project_jnp(xyz: jax.Array, valid: jax.Array, height: int, width: int, fov_up: float,
                fov_down: float, fov_left: float = -180.0, fov_right: float = 180.0):
  """jnp `project_np` (float32); invalid points get finite, meaningless pixels.

  Args:
    xyz: (..., N, 3) float32; valid: (..., N) bool.
  Returns:
    row (..., N) int32, col (..., N) int32, depth (..., N) float32 (0 where invalid).
  """
  down, vertical, left, horizontal = _fov_radians(fov_up, fov_down, fov_left, fov_right)
  xyz = jnp.where(valid[..., None], xyz.astype(jnp.float32), 0.0)
  x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
  depth = jnp.sqrt(x * x + y * y + z * z)
  safe_depth = jnp.where(depth > 0, depth, 1.0)
  pitch = jnp.arcsin(jnp.clip(jnp.where(depth > 0, z / safe_depth, 0.0), -1.0, 1.0))
  yaw = -jnp.arctan2(y, x)
  u = (yaw + left) / horizontal * width
  v = (1.0 - (pitch + down) / vertical) * height
  col = jnp.clip(jnp.floor(u), 0, width - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(v), 0, height - 1).astype(jnp.int32)
  return row, col, depth


def range_image_jnp(points: jax.Array, valid: jax.Array, height: int, width: int,
                    fov_up: float, fov_down: float, fov_left: float = -180.0,
                    fov_right: float = 180.0):
  """jnp `range_image_np` for a batch of padded scans; jit-able, static shapes.

  Args:
    points: (B, N, 4) float32 x, y, z, remission; valid: (B, N) bool (padding never wins).
  Returns:
    image (B, H, W, 5) float32 (-1 on empty pixels), winner (B, H, W) int32 (-1 on empty),
    row (B, N) int32, col (B, N) int32.
  """
  batch, num = valid.shape
  row, col, depth = project_jnp(points[..., :3], valid, height, width, fov_up, fov_down,
                                fov_left, fov_right)
  pixels = height * width
  flat = (row * width + col + jnp.arange(batch, dtype=jnp.int32)[:, None] * pixels).reshape(-1)
  masked_depth = jnp.where(valid, depth, jnp.inf).reshape(-1)
  closest = jnp.full(batch * pixels, jnp.inf, jnp.float32).at[flat].min(masked_depth)
  is_closest = (masked_depth == closest[flat]) & valid.reshape(-1)
  index = jnp.where(is_closest, jnp.tile(jnp.arange(num, dtype=jnp.int32), batch), num)
  first = jnp.full(batch * pixels, num, jnp.int32).at[flat].min(index)
  winner = jnp.where(first < num, first, -1).reshape(batch, height, width)
  has_point = (winner >= 0)[..., None]
  safe = jnp.maximum(winner, 0).reshape(batch, pixels)
  take = lambda a: jnp.take_along_axis(a, safe[..., None], axis=1).reshape(
      batch, height, width, a.shape[-1])
  features = jnp.concatenate([take(depth[..., None]), take(points[..., :4])], axis=-1)
  image = jnp.where(has_point, features, -1.0)
  return image, winner, row, col
