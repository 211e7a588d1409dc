"""Label-budget protocols: which points of a scan keep their label.

'voxel' (COARSE3D): voxelize the scan on the Open3D grid (origin = min corner - voxel/2, cube side
`voxel_size`); a voxel's label is the label of its first point in file order; draw
max(1, round(N * ratio)) voxels without replacement among voxels with a label > 0; every point of
a drawn voxel gets the voxel's label. 'point': draw that many labeled points instead. A ratio of 1
keeps every label. Draws are seeded from (seed, dataset, scan_id) through a stable hash, so they
do not depend on worker count or order.
"""
import hashlib

import numpy as np

PROTOCOLS = ("voxel", "point")


def scan_rng(seed: int, dataset: str, scan_id: str) -> np.random.Generator:
  """A generator that is a pure function of (seed, dataset, scan_id)."""
  digest = hashlib.blake2b(f"{seed}\x00{dataset}\x00{scan_id}".encode(), digest_size=16).digest()
  return np.random.default_rng(int.from_bytes(digest, "little"))


def num_to_label(num_points: int, ratio: float) -> int:
  """max(1, round(num_points * ratio)) (round half to even, as np.around)."""
  return max(1, int(np.around(num_points * ratio)))


def voxel_index(xyz: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
  """Voxel of every point.

  Args:
    xyz: (N, 3) finite coordinates.
  Returns:
    first (V,) int64 index of the first point (file order) of each voxel, and
    inverse (N,) int64 voxel of each point (index into `first`).
  """
  columns = np.array(np.asarray(xyz).T, np.float64)  # (3, N): contiguous rows are faster.
  cell = [np.floor((c - (c.min() - 0.5 * voxel_size)) / voxel_size).astype(np.int64)
          for c in columns]
  extent = [int(c.max()) + 1 for c in cell]
  if extent[0] * extent[1] * extent[2] < 2**62:
    key = (cell[0] * extent[1] + cell[1]) * extent[2] + cell[2]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
  else:  # A grid too large for one int64 key (absurd extents): unique rows instead.
    _, first, inverse = np.unique(np.stack(cell, 1), axis=0, return_index=True,
                                  return_inverse=True)
  return first, inverse.reshape(-1)


def voxel_weak_labels(xyz: np.ndarray, labels: np.ndarray, ratio: float, voxel_size: float,
                      rng: np.random.Generator) -> np.ndarray:
  """COARSE3D voxel protocol with propagation.

  Args:
    xyz: (N, 3) coordinates; labels: (N,) uint8 learning ids (0 = unlabeled).
  Returns:
    (N,) uint8 weak labels (0 = unlabeled).
  """
  labels = np.asarray(labels, np.uint8)
  if ratio >= 1.0:
    return labels.copy()
  weak = np.zeros_like(labels)
  if not len(labels):
    return weak
  first, inverse = voxel_index(xyz, voxel_size)
  voxel_label = labels[first]
  candidates = np.flatnonzero(voxel_label > 0)
  count = min(num_to_label(len(labels), ratio), len(candidates))
  if count == 0:
    return weak
  drawn = np.zeros(len(first), bool)
  drawn[rng.choice(candidates, count, replace=False)] = True
  point_drawn = drawn[inverse]
  weak[point_drawn] = voxel_label[inverse[point_drawn]]
  return weak


def point_weak_labels(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
  """Labels on max(1, round(N * ratio)) random labeled points: (N,) uint8 -> (N,) uint8."""
  labels = np.asarray(labels, np.uint8)
  if ratio >= 1.0:
    return labels.copy()
  weak = np.zeros_like(labels)
  candidates = np.flatnonzero(labels > 0)
  count = min(num_to_label(len(labels), ratio), len(candidates)) if len(labels) else 0
  if count:
    chosen = rng.choice(candidates, count, replace=False)
    weak[chosen] = labels[chosen]
  return weak


def weak_labels(protocol: str, xyz: np.ndarray, labels: np.ndarray, ratio: float,
                voxel_size: float, rng: np.random.Generator) -> np.ndarray:
  """Dispatches to the protocol: (N, 3), (N,) uint8 -> (N,) uint8."""
  if protocol == "voxel":
    return voxel_weak_labels(xyz, labels, ratio, voxel_size, rng)
  if protocol == "point":
    return point_weak_labels(labels, ratio, rng)
  raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
