"""Analytic ray casting for the synthetic LiDAR: rays against boxes, cylinders and ellipsoids.

Every primitive may be rotated about the vertical axis by `yaw` and is described by its centre
(3,) and half extents (3,): a box's half sizes, a vertical cylinder's (radius, radius, half
height), an ellipsoid's radii. Ray directions are float32 arrays of any shape (...), given as
three components; the ray origin is one point (3,) in float64. The origin is moved into the
primitive's frame in float64 before the per-ray arithmetic runs in float32, so the precision
is that of distances to the primitive, not of world coordinates.

Functions return `(t_in, t_out)`: the distances along the (unit) rays where they enter and
leave the primitive, `inf` where they miss it or where the primitive lies behind the origin.
"""
import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
KIND_NAMES = ("box", "cylinder", "ellipsoid")
_EPS = np.float32(1e-4)  # Hits closer than this are the origin's own surface: ignored.
_INF = np.float32(np.inf)


def to_local(origin, center, yaw: float, dx, dy, dz):
  """The ray origin (3,) float32 and directions (...) x3 in the primitive's frame."""
  cos, sin = np.cos(yaw), np.sin(yaw)
  rel = np.asarray(origin, np.float64) - np.asarray(center, np.float64)
  local = np.array([cos * rel[0] + sin * rel[1], -sin * rel[0] + cos * rel[1], rel[2]],
                   np.float32)
  if yaw == 0.0:
    return local, dx, dy, dz
  cos, sin = np.float32(cos), np.float32(sin)
  return local, cos * dx + sin * dy, cos * dy - sin * dx, dz


def ray_box(origin, center, half, yaw, dx, dy, dz):
  """Slab test. dx, dy, dz: (...) float32 unit directions. Returns (t_in, t_out) (...) float32."""
  o, *dirs = to_local(origin, center, yaw, dx, dy, dz)
  t_in = np.full(dx.shape, -_INF, np.float32)
  t_out = np.full(dx.shape, _INF, np.float32)
  with np.errstate(divide="ignore", invalid="ignore"):
    for axis in range(3):
      inv = np.float32(1.0) / dirs[axis]
      t1 = (np.float32(-half[axis]) - o[axis]) * inv
      t2 = (np.float32(half[axis]) - o[axis]) * inv
      # fmax/fmin skip the NaN of 0 * inf (a ray lying exactly in a face plane).
      np.fmax(t_in, np.minimum(t1, t2), out=t_in)
      np.fmin(t_out, np.maximum(t1, t2), out=t_out)
  hit = (t_out >= t_in) & (t_in > _EPS)
  return np.where(hit, t_in, _INF), np.where(hit, t_out, _INF)


def ray_cylinder(origin, center, half, yaw, dx, dy, dz):
  """Vertical cylinder of radius half[0] and half height half[2]; the caps are solid."""
  o, dx, dy, dz = to_local(origin, center, yaw, dx, dy, dz)
  radius, half_height = np.float32(half[0]), np.float32(half[2])
  a = dx * dx + dy * dy
  b = o[0] * dx + o[1] * dy
  c = o[0] * o[0] + o[1] * o[1] - radius * radius
  with np.errstate(divide="ignore", invalid="ignore"):
    root = np.sqrt(b * b - a * c)
    t_side = (-b - root) / a
    z_side = o[2] + t_side * dz
    side_ok = (np.abs(z_side) <= half_height) & (t_side > _EPS)
    t = np.where(side_ok, t_side, _INF)
    if abs(o[2]) > half_height:  # The origin sees one cap: the one on its side.
      t_cap = (np.copysign(half_height, o[2]) - o[2]) / dz
      x, y = o[0] + t_cap * dx, o[1] + t_cap * dy
      cap_ok = (x * x + y * y <= radius * radius) & (t_cap > _EPS)
      t = np.where(cap_ok & (t_cap < t), t_cap, t)
  t = np.where(np.isnan(t), _INF, t)
  return t, t


def ray_ellipsoid(origin, center, half, yaw, dx, dy, dz):
  """Ellipsoid with radii `half` (before the yaw rotation)."""
  o, dx, dy, dz = to_local(origin, center, yaw, dx, dy, dz)
  inv = (np.float32(1.0) / np.asarray(half, np.float32))
  o = o * inv
  dx, dy, dz = dx * inv[0], dy * inv[1], dz * inv[2]
  a = dx * dx + dy * dy + dz * dz
  b = o[0] * dx + o[1] * dy + o[2] * dz
  c = np.float32(o @ o - 1.0)
  with np.errstate(invalid="ignore"):
    root = np.sqrt(b * b - a * c)
  t_in, t_out = (-b - root) / a, (-b + root) / a
  hit = t_in > _EPS  # False for NaN (a miss).
  return np.where(hit, t_in, _INF), np.where(hit, t_out, _INF)


INTERSECT = (ray_box, ray_cylinder, ray_ellipsoid)


def ray_ground(origin_z: float, dz, height: float = 0.0):
  """Distance to the horizontal plane z = height from an origin at origin_z; inf if never."""
  with np.errstate(divide="ignore"):
    t = np.float32(height - origin_z) / dz
  return np.where(t > _EPS, t, _INF).astype(np.float32)


def local_normals(kind, p):
  """Outward unit normals at hit points in the primitive's frame.

  Args:
    kind: (N,) int primitive kinds.
    p: (N, 3) float32 hit points in the primitive frame divided by its half extents.
  Returns:
    (N, 3) float32 unit normals (in the rotated, unscaled primitive frame; for ellipsoids the
    caller divides by the half extents, see `world_normals`).
  """
  absp = np.abs(p)
  box_axis = np.argmax(absp, axis=1)
  box = np.zeros_like(p)
  box[np.arange(len(p)), box_axis] = np.sign(p[np.arange(len(p)), box_axis])
  radial = np.hypot(p[:, 0], p[:, 1])
  on_side = radial >= absp[:, 2]
  cyl = np.where(on_side[:, None],
                 np.stack([p[:, 0], p[:, 1], np.zeros_like(radial)], 1)
                 / np.maximum(radial, 1e-6)[:, None],
                 np.stack([np.zeros_like(radial)] * 2 + [np.sign(p[:, 2])], 1))
  return np.where((kind == BOX)[:, None], box, np.where((kind == CYLINDER)[:, None], cyl, p))


def world_normals(kind, center, half, yaw, points):
  """(N, 3) float32 unit outward normals of the primitives hit at world `points` (N, 3)."""
  rel = points - center
  cos, sin = np.cos(yaw), np.sin(yaw)
  local = np.stack([cos * rel[:, 0] + sin * rel[:, 1], cos * rel[:, 1] - sin * rel[:, 0],
                    rel[:, 2]], 1) / half
  n = local_normals(kind, local.astype(np.float32))
  n = np.where((kind == ELLIPSOID)[:, None], n / half, n)  # Gradient of |p / half|^2.
  world = np.stack([cos * n[:, 0] - sin * n[:, 1], sin * n[:, 0] + cos * n[:, 1], n[:, 2]], 1)
  return (world / np.linalg.norm(world, axis=1, keepdims=True)).astype(np.float32)


def footprint_extent(sensor_xy, center, half, yaw):
  """Horizontal reach and azimuth span of the primitives' rectangular footprints.

  Args:
    sensor_xy: (2,) sensor position.
    center, half: (P, 3); yaw: (P,). The footprint is the rectangle of half sizes half[:, :2].
  Returns:
    near, far: (P,) horizontal distance from the sensor to the closest / farthest footprint
      point; az_lo, az_hi: (P,) world azimuth interval (radians, az_hi - az_lo < pi) that
      holds the footprint; inside: (P,) bool, the sensor is above/below the footprint (every
      azimuth).
  """
  rel = np.asarray(sensor_xy)[None, :] - center[:, :2]
  cos, sin = np.cos(yaw), np.sin(yaw)
  q = np.stack([cos * rel[:, 0] + sin * rel[:, 1], cos * rel[:, 1] - sin * rel[:, 0]], 1)
  gap = np.maximum(np.abs(q) - half[:, :2], 0.0)
  near = np.hypot(gap[:, 0], gap[:, 1])
  far = np.hypot(np.abs(q[:, 0]) + half[:, 0], np.abs(q[:, 1]) + half[:, 1])
  signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float64)
  corners_local = signs[None] * half[:, None, :2]  # (P, 4, 2)
  cx = cos[:, None] * corners_local[..., 0] - sin[:, None] * corners_local[..., 1]
  cy = sin[:, None] * corners_local[..., 0] + cos[:, None] * corners_local[..., 1]
  vx = center[:, None, 0] + cx - sensor_xy[0]
  vy = center[:, None, 1] + cy - sensor_xy[1]
  az_mid = np.arctan2(center[:, 1] - sensor_xy[1], center[:, 0] - sensor_xy[0])
  delta = np.angle(np.exp(1j * (np.arctan2(vy, vx) - az_mid[:, None])))
  return near, far, az_mid + delta.min(1), az_mid + delta.max(1), near <= 0.0
