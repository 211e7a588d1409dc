"""Pictures of range-image predictions (stacked PNG panels) and colored point clouds (.ply).

Colors come from `DatasetInfo.colors_rgb` (the official color maps are BGR; datasets converts).
"""
import io
import pathlib

import numpy as np
from PIL import Image

from coarse3d_jax import files

SEPARATOR_RGB = (255, 255, 255)
ERROR_RGB = (255, 0, 0)
CORRECT_RGB = (90, 90, 90)
# Depth colormap anchors (near -> far), interpolated linearly; empty pixels stay black.
_DEPTH_ANCHORS = np.array([[253, 231, 37], [94, 201, 98], [33, 145, 140], [59, 82, 139],
                           [68, 1, 84]], np.float64)


def colorize(labels: np.ndarray, colors_rgb: np.ndarray) -> np.ndarray:
  """labels (H, W) int -> (H, W, 3) uint8 RGB; ids outside the color table are black."""
  labels = np.asarray(labels, np.int64)
  colors = np.asarray(colors_rgb, np.uint8)
  inside = (labels >= 0) & (labels < len(colors))
  out = colors[np.where(inside, labels, 0)]
  out[~inside] = 0
  return out


def depth_to_rgb(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
  """depth (H, W) float, < 0 where empty -> (H, W, 3) uint8 (near yellow, far purple)."""
  depth = np.asarray(depth, np.float64)
  valid = depth > 0
  top = max_depth or (float(depth[valid].max()) if valid.any() else 1.0)
  t = np.clip(np.log1p(np.maximum(depth, 0)) / np.log1p(top), 0, 1) * (len(_DEPTH_ANCHORS) - 1)
  low = np.minimum(np.floor(t).astype(np.int64), len(_DEPTH_ANCHORS) - 2)
  frac = (t - low)[..., None]
  rgb = (1 - frac) * _DEPTH_ANCHORS[low] + frac * _DEPTH_ANCHORS[low + 1]
  return np.where(valid[..., None], np.round(rgb), 0).astype(np.uint8)


def dilate_labels(labels: np.ndarray, radius: int = 1) -> np.ndarray:
  """Spreads non-zero labels (H, W) into zero pixels within a (2r+1)^2 window, so that sparse
  weak labels are visible; pixels already labeled keep their label."""
  labels = np.asarray(labels)
  out = labels.copy()
  h, w = labels.shape
  padded = np.pad(labels, radius)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      shifted = padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
      out = np.where((out == 0) & (shifted != 0), shifted, out)
  return out


def error_rgb(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
  """(H, W) pred, label -> (H, W, 3) uint8: red where wrong, gray where right, black unlabeled."""
  out = np.zeros(np.shape(label) + (3,), np.uint8)
  labeled = np.asarray(label) > 0
  out[labeled & (pred == label)] = CORRECT_RGB
  out[labeled & (pred != label)] = ERROR_RGB
  return out


def scan_panels(colors_rgb: np.ndarray, depth: np.ndarray, pred: np.ndarray,
                label: np.ndarray | None = None, weak_label: np.ndarray | None = None, *,
                dilate: int = 1, row_scale: int = 1, separator: int = 2) -> np.ndarray:
  """Stacked panels: depth, weak labels (dilated), prediction, ground truth, error mask.

  Args:
    colors_rgb: (C, 3) uint8 class colors.
    depth: (H, W) range, < 0 where empty; pred, label, weak_label: (H, W) learning ids.
      Panels whose input is None are left out (no ground truth on test scans).
    dilate: radius of the weak-label dilation; row_scale: rows repeated (64-row images are thin).
    separator: rows of white between panels.

  Returns:
    (H', W, 3) uint8 RGB.
  """
  empty = np.asarray(depth) < 0
  panels = [depth_to_rgb(depth)]
  if weak_label is not None:
    panels.append(colorize(dilate_labels(weak_label, dilate), colors_rgb))
  panels.append(colorize(np.where(empty, 0, pred), colors_rgb))
  if label is not None:
    panels.append(colorize(label, colors_rgb))
    panels.append(error_rgb(np.where(empty, 0, pred), label))
  line = np.empty((separator, np.shape(depth)[1], 3), np.uint8)
  line[:] = SEPARATOR_RGB
  stacked = []
  for i, panel in enumerate(panels):
    stacked.extend([line] * (i > 0) + [np.repeat(panel, row_scale, axis=0)])
  return np.concatenate(stacked, axis=0)


def png_bytes(image: np.ndarray) -> bytes:
  """(H, W, 3) uint8 -> PNG file content."""
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def write_png(path, image: np.ndarray) -> pathlib.Path:
  """(H, W, 3) uint8 -> PNG at `path`, written atomically."""
  return files.atomic_write(path, png_bytes(image))


def ply_bytes(xyz: np.ndarray, rgb: np.ndarray, binary: bool = True) -> bytes:
  """A PLY point cloud with `x y z` float32 and `red green blue` uint8 per vertex.

  Args:
    xyz: (N, 3) float; rgb: (N, 3) uint8.
    binary: binary_little_endian (compact) or ascii.
  """
  xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
  rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
  if len(xyz) != len(rgb):
    raise ValueError(f"{len(xyz)} points but {len(rgb)} colors")
  fmt = "binary_little_endian" if binary else "ascii"
  header = (f"ply\nformat {fmt} 1.0\nelement vertex {len(xyz)}\n"
            "property float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
  if binary:
    vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    records = np.empty(len(xyz), vertex)
    records["xyz"], records["rgb"] = xyz, rgb
    return header.encode() + records.tobytes()
  rows = [f"{x!r} {y!r} {z!r} {r} {g} {b}" for (x, y, z), (r, g, b)
          in zip(xyz.tolist(), rgb.tolist())]
  return (header + "\n".join(rows) + ("\n" if rows else "")).encode()


def write_ply(path, xyz: np.ndarray, rgb: np.ndarray, binary: bool = True) -> pathlib.Path:
  """Writes a colored point cloud (see `ply_bytes`) atomically."""
  return files.atomic_write(path, ply_bytes(xyz, rgb, binary))
