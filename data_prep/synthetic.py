"""Synthetic SemanticKITTI: a 64-beam spinning LiDAR ray-cast into procedural street scenes.

`generate_tree(RAW)` writes `RAW/sequences/SS/velodyne/NNNNNN.bin` (float32 x, y, z, remission)
and `labels/NNNNNN.label` (uint32: raw SemanticKITTI id | instance << 16), exactly the layout and
label ids of the real dataset, so every other part of the project treats it as SemanticKITTI.

A sequence is one street (seeded by (seed, sequence)); its scans are the sensor driving along it,
1 m per frame. A street has a road with lanes (and parking bays), raised sidewalks with curbs,
terrain strips, buildings with gaps, trees (trunk + crown), bushes, street lights with signs,
fences, parked and driving cars, trucks, people, bicycles, and unlabeled clutter (raw id 52,
'other-structure', which the learning map ignores). Objects occlude each other, small classes
are rare (people and bicycles are well under 1% of the points, like in SemanticKITTI) and
classes that differ only in size, height or reflectivity (road / parking / sidewalk / terrain,
car / truck, pole / trunk, fence / building) sit side by side.

The sensor: 64 beams from +2 to -24.3 degrees in the HDL-64E's two blocks (with per-beam
jitter), 2000 azimuth steps per turn at 1.73 m height, 80 m range, ~2 cm range noise, 2% dropped
returns, remission = albedo x incidence cosine + noise. A scan has ~100-125k points.
"""
import dataclasses
import functools
import multiprocessing
import pathlib

import numpy as np

from coarse3d_jax import files
from data_prep import synthetic_geometry as geo

SENSOR_HEIGHT = 1.73
MAX_RANGE = 80.0
NUM_AZIMUTHS = 2000
FRAME_STEP = 1.0  # Metres the sensor drives between scans.
DROPOUT = 0.02

# Raw SemanticKITTI ids.
CAR, BICYCLE, TRUCK, PERSON = 10, 11, 18, 30
ROAD, PARKING, SIDEWALK, BUILDING, FENCE, OTHER_STRUCTURE = 40, 44, 48, 50, 51, 52
VEGETATION, TRUNK, TERRAIN, POLE, SIGN = 70, 71, 72, 80, 81
_GROUND_ALBEDO = {ROAD: 0.22, PARKING: 0.30, TERRAIN: 0.38}
_GROUND_NOISE = {ROAD: 0.01, PARKING: 0.01, TERRAIN: 0.04}  # Rougher surfaces, noisier range.


@dataclasses.dataclass(frozen=True)
class Scene:
  """One street in world coordinates (x along the street, z = 0 the road surface).

  Primitives (P of them) are arrays: kind (geo.BOX / CYLINDER / ELLIPSOID), center (P, 3),
  half (P, 3) half extents, yaw (P,), label (P,) raw id, instance (P,), albedo (P,).
  """
  kind: np.ndarray
  center: np.ndarray
  half: np.ndarray
  yaw: np.ndarray
  label: np.ndarray
  instance: np.ndarray
  albedo: np.ndarray
  road_half: float
  parking: np.ndarray  # (K, 2) x intervals with a parking bay at each curb.
  sensor_y: float


class _Builder:
  """Collects primitives; one instance id per object (several primitives may share it)."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self.rows = []
    self.next_instance = 1

  def add(self, kind, center, half, label, albedo, yaw=0.0, instance=None):
    self.rows.append((kind, tuple(center), tuple(half), float(yaw), label,
                      0 if instance is None else instance, float(albedo)))

  def new_instance(self) -> int:
    self.next_instance += 1
    return self.next_instance - 1

  def scene(self, road_half, parking, sensor_y) -> Scene:
    kind, center, half, yaw, label, instance, albedo = zip(*self.rows)
    return Scene(np.asarray(kind, np.int32), np.asarray(center, np.float64),
                 np.asarray(half, np.float64), np.asarray(yaw, np.float64),
                 np.asarray(label, np.uint32), np.asarray(instance, np.uint32),
                 np.asarray(albedo, np.float32), road_half, np.asarray(parking).reshape(-1, 2),
                 sensor_y)


def _slots(rng, x_lo, x_hi, gap_lo, gap_hi):
  """Positions along the street separated by random gaps."""
  positions, x = [], x_lo + rng.uniform(0, gap_hi)
  while x < x_hi:
    positions.append(x)
    x += rng.uniform(gap_lo, gap_hi)
  return positions


def _sidewalks(b: _Builder, road_half, width, height, x_lo, x_hi):
  for side in (-1, 1):
    y = side * (road_half + width / 2)
    b.add(geo.BOX, ((x_lo + x_hi) / 2, y, height / 2), ((x_hi - x_lo) / 2, width / 2, height / 2),
          SIDEWALK, 0.30)


def _buildings(b: _Builder, side, y_front, x_lo, x_hi):
  rng, x = b.rng, x_lo
  while x < x_hi:
    length, depth = rng.uniform(8, 28), rng.uniform(8, 16)
    height = rng.uniform(4, 22)
    setback = rng.uniform(0, 6)
    if rng.random() < 0.8:  # Otherwise a gap that shows what lies behind.
      y = side * (y_front + setback + depth / 2)
      b.add(geo.BOX, (x + length / 2, y, height / 2), (length / 2, depth / 2, height / 2),
            BUILDING, rng.uniform(0.15, 0.5), yaw=rng.normal(0, 0.03))
    elif rng.random() < 0.6:
      _fence(b, side * (y_front + 0.1), x, x + length)
    x += length + rng.uniform(0, 4)


def _fence(b: _Builder, y, x0, x1):
  height = b.rng.uniform(0.8, 2.0)
  b.add(geo.BOX, ((x0 + x1) / 2, y, height / 2), ((x1 - x0) / 2, 0.04, height / 2), FENCE,
        b.rng.uniform(0.2, 0.45))


def _tree(b: _Builder, x, y):
  rng = b.rng
  trunk_h, radius = rng.uniform(1.8, 4.0), rng.uniform(0.1, 0.3)
  b.add(geo.CYLINDER, (x, y, trunk_h / 2), (radius, radius, trunk_h / 2), TRUNK,
        rng.uniform(0.25, 0.4))
  crown = (rng.uniform(1.2, 3.0), rng.uniform(1.2, 3.0), rng.uniform(1.2, 3.0))
  b.add(geo.ELLIPSOID, (x, y, trunk_h + crown[2] * 0.8), crown, VEGETATION,
        rng.uniform(0.4, 0.65), yaw=rng.uniform(0, np.pi))


def _bush(b: _Builder, x, y):
  radii = (b.rng.uniform(0.5, 2.5), b.rng.uniform(0.4, 1.5), b.rng.uniform(0.3, 1.2))
  b.add(geo.ELLIPSOID, (x, y, radii[2] * 0.6), radii, VEGETATION, b.rng.uniform(0.4, 0.65),
        yaw=b.rng.uniform(0, np.pi))


def _street_light(b: _Builder, x, y, side):
  rng = b.rng
  height, radius = rng.uniform(3.5, 8.0), rng.uniform(0.06, 0.14)
  b.add(geo.CYLINDER, (x, y, height / 2), (radius, radius, height / 2), POLE, 0.35)
  if rng.random() < 0.5:
    size = rng.uniform(0.25, 0.45)
    b.add(geo.BOX, (x, y - side * (radius + 0.04), rng.uniform(2.0, 3.0)), (size, 0.03, size),
          SIGN, rng.uniform(0.8, 1.0), yaw=rng.normal(0, 0.2))


def _car(b: _Builder, x, y, yaw, truck=False):
  rng, inst = b.rng, b.new_instance()
  label, albedo = (TRUCK, rng.uniform(0.2, 0.6)) if truck else (CAR, rng.uniform(0.05, 0.9))
  if truck:
    length, width, height = rng.uniform(6, 10), rng.uniform(2.2, 2.5), rng.uniform(2.6, 3.6)
    b.add(geo.BOX, (x, y, 0.4 + height / 2), (length / 2, width / 2, height / 2), label,
          albedo, yaw, inst)
    cab = np.array([np.cos(yaw), np.sin(yaw)]) * (length / 2 + 1.0)
    b.add(geo.BOX, (x + cab[0], y + cab[1], 1.5), (1.0, width / 2, 1.1), label, albedo, yaw,
          inst)
    return
  length, width = rng.uniform(3.8, 4.9), rng.uniform(1.6, 1.9)
  b.add(geo.BOX, (x, y, 0.62), (length / 2, width / 2, 0.38), label, albedo, yaw, inst)
  b.add(geo.BOX, (x, y, 1.22), (length * 0.28, width * 0.45, 0.23), label, albedo * 0.6, yaw,
        inst)


def _person(b: _Builder, x, y):
  rng, inst = b.rng, b.new_instance()
  height = rng.uniform(1.5, 1.9)
  b.add(geo.CYLINDER, (x, y, (height - 0.25) / 2), (0.2, 0.2, (height - 0.25) / 2), PERSON,
        rng.uniform(0.15, 0.5), instance=inst)
  b.add(geo.ELLIPSOID, (x, y, height - 0.12), (0.11, 0.11, 0.13), PERSON, 0.3, instance=inst)


def _bicycle(b: _Builder, x, y, yaw):
  inst, albedo = b.new_instance(), b.rng.uniform(0.1, 0.4)
  offset = np.array([np.cos(yaw), np.sin(yaw)]) * 0.55
  for sign in (-1, 1):
    b.add(geo.ELLIPSOID, (x + sign * offset[0], y + sign * offset[1], 0.35), (0.34, 0.03, 0.34),
          BICYCLE, albedo, yaw, inst)
  b.add(geo.BOX, (x, y, 0.75), (0.5, 0.04, 0.12), BICYCLE, albedo, yaw, inst)


def _roadside(b: _Builder, side, road_half, walk_w, x_lo, x_hi):
  """Trees, street lights, people, bicycles and clutter along one sidewalk."""
  rng, curb = b.rng, side * (road_half + 0.5)
  for x in _slots(rng, x_lo, x_hi, 6, 18):
    _tree(b, x, side * (road_half + walk_w * rng.uniform(0.3, 0.8)))
  for x in _slots(rng, x_lo, x_hi, 15, 40):
    _street_light(b, x, curb, side)
  for x in _slots(rng, x_lo, x_hi, 8, 45):
    _person(b, x, side * (road_half + rng.uniform(0.4, walk_w)))
  for x in _slots(rng, x_lo, x_hi, 20, 70):
    _bicycle(b, x, side * (road_half + walk_w - 0.4), rng.normal(0, 0.3))
  for x in _slots(rng, x_lo, x_hi, 15, 45):
    size = rng.uniform(0.3, 1.0, 3)
    b.add(geo.BOX, (x, side * (road_half + walk_w * rng.uniform(0.2, 0.9)), size[2]), size,
          OTHER_STRUCTURE, rng.uniform(0.1, 0.6), yaw=rng.uniform(0, np.pi))
  for x in _slots(rng, x_lo, x_hi, 4, 14):
    _bush(b, x, side * (road_half + walk_w + rng.uniform(0.5, 4)))


def _traffic(b: _Builder, road_half, sensor_y, x_lo, x_hi, parking):
  """Parked cars at the curbs (denser in parking bays), cars and trucks in the lanes."""
  rng = b.rng
  for side in (-1, 1):
    for x in _slots(rng, x_lo, x_hi, 5.5, 16):
      in_bay = np.any((parking[:, 0] <= x) & (x <= parking[:, 1]))
      if in_bay or rng.random() < 0.5:
        _car(b, x, side * (road_half - 1.2), rng.normal(0, 0.04), truck=rng.random() < 0.08)
  for x in _slots(rng, x_lo, x_hi, 12, 45):
    lane = rng.uniform(-road_half + 2.5, road_half - 2.5)
    if abs(lane - sensor_y) > 2.2 or abs(x) > 12:  # Keep the ego lane clear near the start.
      _car(b, x, lane, rng.normal(0, 0.03), truck=rng.random() < 0.15)


def make_scene(rng: np.random.Generator, length: float = 200.0) -> Scene:
  """A random street centred on the road axis, spanning x in [-length / 2, length / 2 + 30]."""
  b = _Builder(rng)
  x_lo, x_hi = -length / 2, length / 2 + 30
  road_half = rng.uniform(3.5, 7.5)
  walk_w, walk_h = rng.uniform(1.5, 4.0), rng.uniform(0.1, 0.18)
  sensor_y = rng.uniform(-road_half + 1.8, road_half - 1.8)
  bays = [(x, x + rng.uniform(10, 30)) for x in _slots(rng, x_lo, x_hi, 30, 90)]
  parking = np.asarray(bays, np.float64).reshape(-1, 2)
  _sidewalks(b, road_half, walk_w, walk_h, x_lo, x_hi)
  for side in (-1, 1):
    _buildings(b, side, road_half + walk_w + rng.uniform(1, 6), x_lo, x_hi)
    _roadside(b, side, road_half, walk_w, x_lo, x_hi)
  _traffic(b, road_half, sensor_y, x_lo, x_hi, parking)
  return b.scene(road_half, parking, sensor_y)


def beam_elevations(rng: np.random.Generator) -> np.ndarray:
  """(64,) beam elevations in radians: the HDL-64E's upper and lower blocks, jittered."""
  upper = np.linspace(2.0, -8.33, 32)
  lower = np.linspace(-8.83, -24.33, 32)
  return np.deg2rad(np.concatenate([upper, lower]) + rng.normal(0, 0.03, 64))


def ray_directions(rng: np.random.Generator):
  """Unit ray directions (64, A) float32 each, and the azimuths (A,) of the columns."""
  azimuth = (np.arange(NUM_AZIMUTHS) + rng.uniform()) * (2 * np.pi / NUM_AZIMUTHS) - np.pi
  elevation = beam_elevations(rng)
  cos_el = np.cos(elevation)[:, None]
  dx = (cos_el * np.cos(azimuth)[None]).astype(np.float32)
  dy = (cos_el * np.sin(azimuth)[None]).astype(np.float32)
  dz = np.broadcast_to(np.sin(elevation)[:, None], dx.shape).astype(np.float32)
  return dx, dy, dz, azimuth


def _column_window(az_lo, az_hi, azimuth) -> np.ndarray:
  """Indices of the columns whose azimuth lies in [az_lo, az_hi] (modulo 2 pi), with a margin."""
  step = 2 * np.pi / NUM_AZIMUTHS
  first = int(np.floor((az_lo - azimuth[0]) / step)) - 1
  last = int(np.ceil((az_hi - azimuth[0]) / step)) + 1
  if last - first + 1 >= NUM_AZIMUTHS:
    return np.arange(NUM_AZIMUTHS)
  return np.arange(first, last + 1) % NUM_AZIMUTHS


def cast(scene: Scene, origin: np.ndarray, dx, dy, dz, azimuth):
  """Nearest hit of every ray: distance (64, A) float32 (inf: none) and primitive id (-1: ground).

  Each primitive is tested only against the columns of its azimuth window (footprint culling),
  and skipped when it lies beyond the range limit; hits beyond MAX_RANGE are no return.
  """
  t_best = geo.ray_ground(origin[2], dz)
  hit = np.full(dx.shape, -1, np.int32)
  near, _, az_lo, az_hi, inside = geo.footprint_extent(origin[:2], scene.center, scene.half,
                                                       scene.yaw)
  for p in np.flatnonzero(near < MAX_RANGE):
    cols = slice(None) if inside[p] else _column_window(az_lo[p], az_hi[p], azimuth)
    t, _ = geo.INTERSECT[scene.kind[p]](origin, scene.center[p], scene.half[p], scene.yaw[p],
                                         dx[:, cols], dy[:, cols], dz[:, cols])
    sub_t, sub_hit = t_best[:, cols], hit[:, cols]
    closer = t < sub_t
    t_best[:, cols] = np.where(closer, t, sub_t)
    hit[:, cols] = np.where(closer, p, sub_hit)
  out_of_range = t_best > MAX_RANGE
  return np.where(out_of_range, np.inf, t_best), np.where(out_of_range, -1, hit)


def ground_labels(scene: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Raw ids of ground hits at world (x, y): road, parking bays at the curbs, else terrain."""
  on_road = np.abs(y) <= scene.road_half
  bay = np.zeros(x.shape, bool)
  for lo, hi in scene.parking:
    bay |= (x >= lo) & (x <= hi)
  bay &= np.abs(y) >= scene.road_half - 2.5
  return np.where(on_road, np.where(bay, PARKING, ROAD), TERRAIN).astype(np.uint32)


def _remission(scene, hit, label, world, dirs, rng):
  """Albedo x |cos(incidence)| (normals from the primitives; ground: up) + noise, in [0, 1]."""
  is_obj = hit >= 0
  obj = np.maximum(hit, 0)
  normals = np.zeros_like(world, dtype=np.float32)
  normals[:, 2] = 1.0
  if is_obj.any():
    p = obj[is_obj]
    normals[is_obj] = geo.world_normals(scene.kind[p], scene.center[p], scene.half[p],
                                        scene.yaw[p], world[is_obj])
  cosine = np.abs(np.sum(normals * dirs, axis=1))
  ground_albedo = np.vectorize(_GROUND_ALBEDO.get, otypes=[np.float32])(label) if (
      ~is_obj).any() else np.zeros(label.shape, np.float32)
  albedo = np.where(is_obj, scene.albedo[obj], ground_albedo)
  value = albedo * (0.35 + 0.65 * cosine) + rng.normal(0, 0.03, albedo.shape)
  return np.clip(value, 0, 1).astype(np.float32)


def scan(scene: Scene, frame: int, rng: np.random.Generator):
  """One sweep from frame `frame`: points (N, 4) float32 in the sensor frame, labels (N,) uint32."""
  origin = np.array([frame * FRAME_STEP, scene.sensor_y, SENSOR_HEIGHT])
  dx, dy, dz, azimuth = ray_directions(rng)
  t, hit = cast(scene, origin, dx, dy, dz, azimuth)
  keep = np.isfinite(t) & (rng.random(t.shape) >= DROPOUT)
  t, hit = t[keep], hit[keep]
  dirs = np.stack([dx[keep], dy[keep], dz[keep]], axis=1)
  world = origin.astype(np.float32) + dirs * t[:, None]
  obj = np.maximum(hit, 0)
  label = np.where(hit >= 0, scene.label[obj], ground_labels(scene, world[:, 0], world[:, 1]))
  instance = np.where(hit >= 0, scene.instance[obj], 0).astype(np.uint32)
  sigma = np.where(hit >= 0, 0.02, np.vectorize(
      lambda l: _GROUND_NOISE.get(l, 0.02), otypes=[np.float32])(label))
  noisy_t = t + rng.normal(0, 1, t.shape).astype(np.float32) * sigma
  remission = _remission(scene, hit, label, world, dirs, rng)
  points = np.concatenate([dirs * noisy_t[:, None], remission[:, None]], axis=1)
  return points.astype(np.float32), (label | (instance << np.uint32(16))).astype(np.uint32)


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


@functools.lru_cache(maxsize=4)
def sequence_scene(seed: int, sequence: str) -> Scene:
  return make_scene(_rng(seed, int(sequence)))


def write_scan(raw_dir: pathlib.Path, seed: int, sequence: str, frame: int) -> pathlib.Path:
  """Generates and writes scan `frame` of `sequence`; returns the .bin path."""
  points, labels = scan(sequence_scene(seed, sequence), frame,
                        _rng(seed, int(sequence), frame + 1))
  seq_dir = pathlib.Path(raw_dir) / "sequences" / sequence
  name = f"{frame:06d}"
  files.atomic_write(seq_dir / "labels" / f"{name}.label", labels.tobytes())
  # The scan file last: its presence marks a finished scan for a resumed generation.
  files.atomic_write(seq_dir / "velodyne" / f"{name}.bin", points.tobytes())
  return seq_dir / "velodyne" / f"{name}.bin"


def _write_task(task) -> pathlib.Path:
  return write_scan(*task)


def generate_tree(raw_dir, *, sequences=("00", "01", "02", "03", "04"),
                  scans_per_sequence: int = 40, seed: int = 0, workers: int = 1
                  ) -> list[pathlib.Path]:
  """Writes the synthetic dataset in SemanticKITTI layout under raw_dir; returns the .bin paths.

  The output depends only on (seed, sequence, frame), never on `workers`. Scans already on disk
  (from an interrupted run) are kept.
  """
  raw_dir = pathlib.Path(raw_dir)
  tasks = []
  for seq in sequences:
    if not seq.isdigit():
      raise ValueError(f"synthetic sequence names are digits like '00', got {seq!r}")
    for sub in ("velodyne", "labels"):
      (raw_dir / "sequences" / seq / sub).mkdir(parents=True, exist_ok=True)
    for frame in range(scans_per_sequence):
      path = raw_dir / "sequences" / seq / "velodyne" / f"{frame:06d}.bin"
      if not path.exists():
        tasks.append((raw_dir, seed, seq, frame))
  if workers > 1 and len(tasks) > 1:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      list(pool.imap_unordered(_write_task, tasks, chunksize=4))
  else:
    for task in tasks:
      _write_task(task)
  return sorted(raw_dir.glob("sequences/*/velodyne/*.bin"))
