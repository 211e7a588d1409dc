"""Per-point weak-label files made elsewhere (read instead of drawn) or for elsewhere (written).

They live in the SemanticKITTI layout, one file per scan: `ROOT/sequences/NN/NAME/FFFFFF.label`
or `.npy`, ROOT being the raw dataset unless given, NAME a folder such as ScribbleKITTI's
`scribbles`. Two formats:

- `.label`, the SemanticKITTI format (ScribbleKITTI's scribbles): one little-endian uint32 per
  point of the scan file, the raw semantic id in the low 16 bits (the high 16, instance ids, are
  ignored). Ids go through the dataset's learning map: 0, or any id it maps to the ignore class,
  is unlabeled; an id it does not define is an error. Written as the raw id of each weak label
  (`learning_map_inv`), 0 on unlabeled points, so reading a written file gives back the labels.
- `.npy`, the COARSE3D reference's weak labels, as its
  `tasks/prepare_data/gen_sem_weak_label_rand_grid.py` saves them: `np.save` of the (1, N) int32
  batch a DataLoader of batch size 1 returns for one scan: the *learning* ids (already through
  the learning map; 0 = unlabeled) of every point of the scan file, in file order; the drawn
  voxels' labels propagated to all their points. Not indices, not a mask: a dense label vector,
  read as the reference does (`np.load(f).reshape(-1)`), so (N,) arrays are accepted too.
"""
import pathlib

import numpy as np

from coarse3d_jax import files
from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from coarse3d_jax.data.errors import DataError

FORMATS = ("auto", "label", "npy")  # auto: the .label file of a scan, else its .npy.


def sequence_dir(ref: readers.ScanRef, name: str, root=None) -> pathlib.Path:
  """The folder `name` of the scan's sequence: under ROOT/sequences/, else beside velodyne/."""
  if root is None:
    return ref.points_path.parent.parent / name
  return readers.sequences_root(pathlib.Path(root)) / ref.sequence / name


def find(ref: readers.ScanRef, name: str, fmt: str = "auto", root=None) -> pathlib.Path:
  """The weak-label file of a scan; DataError naming the expected file when it is missing."""
  folder = sequence_dir(ref, name, root)
  if fmt != "auto":
    path = folder / f"{ref.frame}.{fmt}"
  else:
    path = folder / f"{ref.frame}.label"
    if not path.is_file() and (folder / f"{ref.frame}.npy").is_file():
      path = folder / f"{ref.frame}.npy"
  if not path.is_file():
    also = " (nor .npy)" if fmt == "auto" else ""
    raise DataError(f"{path}: missing weak-label file{also} for scan {ref.points_path}")
  return path


def _read_label_file(info: datasets.DatasetInfo, path: pathlib.Path, num_points: int,
                     points_path) -> np.ndarray:
  size = path.stat().st_size
  if size != 4 * num_points:
    raise DataError(f"{path}: {size / 4:g} weak labels, but {points_path} has {num_points} "
                    "points")
  raw = np.fromfile(path, "<u4") & np.uint32(0xFFFF)
  learned = np.zeros(len(raw), np.uint8)
  labeled = raw != 0  # 0 is unlabeled even where the learning map does not define it.
  learned[labeled] = datasets.map_labels(info, raw[labeled], source=str(path))
  return learned


def _read_npy_file(info: datasets.DatasetInfo, path: pathlib.Path, num_points: int,
                   points_path) -> np.ndarray:
  array = readers.load_npy(path)
  if array.dtype.kind not in "iu" or array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1):
    raise DataError(f"{path}: {array.dtype}{list(array.shape)}, expected (1, N) or (N,) integer "
                    "learning ids")
  learned = array.reshape(-1)
  if len(learned) != num_points:
    raise DataError(f"{path}: {len(learned)} weak labels, but {points_path} has {num_points} "
                    "points")
  bad = (learned < 0) | (learned >= info.num_classes)
  if bad.any():
    raise DataError(f"{path}: learning id(s) {np.unique(learned[bad])[:8].tolist()} "
                    f"({int(bad.sum())} points) are not {info.name} classes "
                    f"0..{info.num_classes - 1}")
  return learned.astype(np.uint8)


def read(info: datasets.DatasetInfo, path: pathlib.Path, num_points: int,
         points_path) -> np.ndarray:
  """(N,) uint8 learning ids (0 = unlabeled) of every point of the scan file.

  Raises:
    DataError: a wrong point count or an id that is not a class (message names `path`).
  """
  read_file = _read_npy_file if path.suffix == ".npy" else _read_label_file
  return read_file(info, path, num_points, points_path)


def raw_ids(info: datasets.DatasetInfo, weak: np.ndarray) -> np.ndarray:
  """(N,) learning ids -> (N,) uint32 raw ids through the inverse learning map (0 stays 0)."""
  raw = np.asarray(info.learning_map_inv, np.uint32)[np.asarray(weak, np.intp)]
  return np.where(np.asarray(weak) > 0, raw, 0).astype("<u4")


def write(info: datasets.DatasetInfo, path: pathlib.Path, weak: np.ndarray) -> pathlib.Path:
  """Writes (N,) learning ids as a `.label` file, atomically (never seen half-written)."""
  return files.atomic_write(path, raw_ids(info, weak).tobytes())
