"""Which points of a scan are projectable, and which pixel each of them takes.

data_prep calls these to build the training range images and predict calls them to map a raw
scan's points to the model's pixels: one function, so training and inference cannot drift apart.
"""
from typing import Any

import numpy as np

from coarse3d_jax.data import datasets
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers


def projectable(points: np.ndarray) -> np.ndarray:
  """(N,) bool: finite x, y, z, remission and not at the sensor origin (no direction there).

  Args:
    points: (N, 4) x, y, z, remission.
  """
  finite = np.isfinite(np.ascontiguousarray(points, np.float32))
  all_finite = finite.view(np.uint32).reshape(-1) == 0x01010101  # 4 True bytes per row.
  x, y, z = points[:, 0], points[:, 1], points[:, 2]
  return all_finite & ((x != 0) | (y != 0) | (z != 0))


def scan_pixels(dataset: readers.Dataset, ref: readers.ScanRef, points: np.ndarray,
                keep: np.ndarray, geometry: dict[str, Any]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pixel and depth of every kept point.

  Args:
    dataset: dataset name or description; ref: the scan (SemanticPOSS .tag files are found
      through it).
    points: (N, 4) the stored scan; keep: (N,) bool, the points to place (`projectable`).
    geometry: height, width, fov_up, fov_down, fov_left, fov_right of the range image.
  Returns:
    row, col (M,) int32 and depth (M,) float32 of the M kept points, in file order.
    SemanticPOSS scans with .tag files take their pixels from the tags; all others are
    projected spherically.
  """
  kept = points if keep.all() else points[keep]
  tags = None
  if datasets.name_of(dataset) == "semanticposs":
    tags = readers.read_tag_pixels(ref, len(points), geometry["height"], geometry["width"])
  if tags is None:
    return projection.project_np(kept[:, :3], **geometry)
  depth = np.sqrt((kept[:, :3].astype(np.float64)**2).sum(axis=1)).astype(np.float32)
  return tags[0][keep], tags[1][keep], depth
