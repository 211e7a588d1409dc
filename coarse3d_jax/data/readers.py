"""Raw scan readers: SemanticKITTI layout (also SemanticPOSS and synthetic) and nuScenes-lidarseg.

SemanticKITTI layout: `RAW/sequences/NN/velodyne/NNNNNN.bin` (float32 x, y, z, remission),
`labels/NNNNNN.label` (uint32, semantic id in the low 16 bits); a custom dataset
(`dataset_config`) may store `.npy` points ((N, 4) floats) and `.npy` labels ((N,) integer raw
ids) instead. SemanticPOSS adds
`tag/NNNNNN.tag`: one byte per pixel of the sensor's 40 x 1800 raster, true where a point exists;
the scan stores its points in row-major order of those pixels, so the tags give every point its
own pixel (the COARSE3D POSS loader builds its range images that way).

nuScenes: the devkit's JSON tables of each `RAW/v1.0-*` folder (scene, sample, sample_data,
lidarseg, category) are read directly, no devkit needed. A scan is the LIDAR_TOP key frame of a
sample: `samples/LIDAR_TOP/*.pcd.bin` (float32 x 5: x, y, z, intensity, ring) with labels
`lidarseg/v1.0-*/<token>_lidarseg.bin` (uint8 general class index, remapped to the standard
index order through category.json). Splits: the devkit's `val` scene list is hard-coded (150
scenes, as compact ranges); `train` is every other scene of v1.0-trainval, `test` every scene of
v1.0-test. Without v1.0-trainval, `train`/`val` fall back to the devkit's mini_train/mini_val of
v1.0-mini.
"""
import dataclasses
import functools
import json
import pathlib

import numpy as np

from coarse3d_jax.data import datasets
from coarse3d_jax.data.errors import DataError

NUSCENES_VAL_RANGES = (
    (3, 3), (12, 18), (35, 36), (38, 39), (92, 110), (221, 221), (268, 278), (329, 332),
    (344, 346), (519, 524), (552, 565), (625, 627), (629, 630), (632, 638), (770, 771),
    (775, 775), (777, 778), (780, 784), (794, 800), (802, 802), (904, 917), (919, 931),
    (962, 963), (966, 969), (971, 972), (1059, 1073))
NUSCENES_VAL = frozenset(f"scene-{n:04d}" for lo, hi in NUSCENES_VAL_RANGES
                         for n in range(lo, hi + 1))
NUSCENES_MINI_VAL = frozenset({"scene-0103", "scene-0916"})


@dataclasses.dataclass(frozen=True)
class ScanRef:
  """Where one scan lives. scan_id: 'NN/NNNNNN' or the nuScenes LIDAR_TOP sample_data token."""
  scan_id: str
  points_path: pathlib.Path
  label_path: pathlib.Path | None
  sequence: str
  frame: str
  tag_path: pathlib.Path | None = None


Dataset = str | datasets.DatasetInfo  # A built-in name, or a (custom) dataset's description.


def list_scans(dataset: Dataset, raw_dir, split: str | None = None,
               sequences=None) -> list[ScanRef]:
  """The scans of `sequences` (names), else of the official `split`, else of every sequence.

  The official test split lists only the sequences (scenes) present; any other missing
  sequence is a DataError. Scans are sorted by sequence, then frame.
  """
  info = datasets.resolve(dataset)
  raw_dir = pathlib.Path(raw_dir)
  if not raw_dir.is_dir():
    raise DataError(f"{raw_dir}: raw data directory does not exist")
  if info.name == "nuscenes":
    return _list_nuscenes(raw_dir, split, sequences)
  return _list_kitti(info, raw_dir, split, sequences)


# ----------------------------------------------------------------------------- KITTI layout
def sequences_root(raw_dir: pathlib.Path) -> pathlib.Path:
  """RAW/sequences, or RAW itself when it is the sequences folder."""
  return raw_dir if raw_dir.name == "sequences" else raw_dir / "sequences"


def _list_kitti(info: datasets.DatasetInfo, raw_dir: pathlib.Path, split,
                sequences) -> list[ScanRef]:
  root = sequences_root(raw_dir)
  if not root.is_dir():
    raise DataError(f"{root}: missing directory (expected the SemanticKITTI layout "
                    "sequences/NN/velodyne/*.bin)")
  optional = False
  if sequences is None and split is not None:
    splits = info.splits
    if split not in splits:
      raise DataError(f"{info.name} has no official split {split!r} (has {sorted(splits)}); "
                      "name its sequences with --split NAME=SEQ,...")
    sequences, optional = splits[split], split == "test"
  elif sequences is None:
    sequences = sorted(p.name for p in root.iterdir() if (p / "velodyne").is_dir())
  refs = []
  for seq in sequences:
    if optional and not (root / seq / "velodyne").is_dir():
      continue
    refs.extend(_sequence_scans(root, str(seq), info))
  return refs


def _sequence_scans(root: pathlib.Path, seq: str, info: datasets.DatasetInfo) -> list[ScanRef]:
  velodyne = root / seq / "velodyne"
  if not velodyne.is_dir():
    raise DataError(f"{velodyne}: missing directory (sequence {seq})")
  labels, tags = root / seq / "labels", root / seq / "tag"
  label_suffix = ".npy" if info.label_format == "npy" else ".label"
  refs = []
  for path in sorted(velodyne.glob(f"*.{info.point_format}")):
    frame = path.stem
    refs.append(ScanRef(
        scan_id=f"{seq}/{frame}", points_path=path, sequence=seq, frame=frame,
        label_path=labels / f"{frame}{label_suffix}" if labels.is_dir() else None,
        tag_path=tags / f"{frame}.tag" if tags.is_dir() else None))
  return refs


def _file_size(path: pathlib.Path) -> int:
  try:
    return path.stat().st_size
  except FileNotFoundError:
    raise DataError(f"{path}: missing file") from None


def _read_float_rows(path: pathlib.Path, columns: int) -> np.ndarray:
  size = _file_size(path)
  if size % (4 * columns):
    raise DataError(f"{path}: size {size} bytes is not a multiple of {4 * columns} "
                    f"({columns} float32 per point): truncated or not a point file")
  return np.fromfile(path, np.float32).reshape(-1, columns)


def load_npy(path: pathlib.Path) -> np.ndarray:
  """An array saved with np.save (no pickled objects)."""
  try:
    return np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise DataError(f"{path}: missing file") from None
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"{path}: not a readable .npy array ({e})") from None


def _read_npy_points(path: pathlib.Path) -> np.ndarray:
  points = load_npy(path)
  if points.ndim != 2 or points.shape[1] != 4 or points.dtype.kind != "f":
    raise DataError(f"{path}: {points.dtype}{list(points.shape)}, expected (N, 4) floats "
                    "(x, y, z, remission)")
  return np.ascontiguousarray(points, np.float32)


def _read_npy_labels(ref: ScanRef, num_points: int) -> np.ndarray:
  raw = load_npy(ref.label_path)
  if raw.ndim != 1 or raw.dtype.kind not in "iu":
    raise DataError(f"{ref.label_path}: {raw.dtype}{list(raw.shape)}, expected (N,) integer "
                    "raw label ids")
  if len(raw) != num_points:
    raise DataError(f"{ref.label_path}: {len(raw)} labels, but {ref.points_path} has "
                    f"{num_points} points")
  if raw.size and (raw.min() < 0 or raw.max() > np.iinfo(np.uint32).max):
    raise DataError(f"{ref.label_path}: raw label ids must lie in 0..2^32-1")
  return raw.astype(np.uint32)


def read_points(dataset: Dataset, ref: ScanRef) -> np.ndarray:
  """(N, 4) float32 x, y, z, remission exactly as stored (non-finite rows kept)."""
  info = datasets.resolve(dataset)
  if info.name == "nuscenes":
    return np.ascontiguousarray(_read_float_rows(ref.points_path, 5)[:, :4])
  if info.point_format == "npy":
    return _read_npy_points(ref.points_path)
  return _read_float_rows(ref.points_path, 4)


def read_labels(dataset: Dataset, ref: ScanRef, num_points: int) -> np.ndarray:
  """(N,) uint32 raw semantic ids (KITTI layout: low 16 bits; nuScenes: standard index)."""
  info = datasets.resolve(dataset)
  if ref.label_path is None:
    raise DataError(f"{ref.points_path}: no label file (no labels/ directory or lidarseg entry)")
  if info.label_format == "npy":
    return _read_npy_labels(ref, num_points)
  dataset = info.name
  item = 1 if dataset == "nuscenes" else 4
  size = _file_size(ref.label_path)
  if size != item * num_points:
    raise DataError(f"{ref.label_path}: {size / item:g} labels, but {ref.points_path} has "
                    f"{num_points} points")
  if dataset == "nuscenes":
    lut = _nuscenes_category_lut(ref.label_path.parents[2] / ref.label_path.parent.name)
    raw = np.fromfile(ref.label_path, np.uint8)
    if raw.size and raw.max() >= len(lut):
      raise DataError(f"{ref.label_path}: class index {int(raw.max())} is not in category.json")
    return lut[raw].astype(np.uint32)
  return np.fromfile(ref.label_path, "<u4") & np.uint32(0xFFFF)


def read_tag_pixels(ref: ScanRef, num_points: int, height: int, width: int):
  """SemanticPOSS: (row, col) (N,) int32 of every point from its .tag file, or None without one."""
  if ref.tag_path is None:
    return None
  size = _file_size(ref.tag_path)
  if size != height * width:
    raise DataError(f"{ref.tag_path}: {size} bytes, expected {height}x{width}={height * width} "
                    "(one per pixel)")
  tags = np.fromfile(ref.tag_path, np.uint8)
  pixels = np.flatnonzero(tags)
  if len(pixels) != num_points:
    raise DataError(f"{ref.tag_path}: {len(pixels)} pixels tagged, but {ref.points_path} has "
                    f"{num_points} points")
  return (pixels // width).astype(np.int32), (pixels % width).astype(np.int32)


# ----------------------------------------------------------------------------- nuScenes
def _load_table(version_dir: pathlib.Path, name: str, required: bool = True):
  path = version_dir / f"{name}.json"
  if not path.is_file():
    if required:
      raise DataError(f"{path}: missing nuScenes table")
    return []
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None


@functools.lru_cache(maxsize=8)
def _nuscenes_category_lut(version_dir: pathlib.Path) -> np.ndarray:
  """File class index -> standard general index, from category.json (identity if no index)."""
  standard = {name: i for i, name in enumerate(datasets.NUSCENES_GENERAL)}
  categories = [c for c in _load_table(version_dir, "category", required=False) if "index" in c]
  if not categories:
    return np.arange(len(standard), dtype=np.uint32)
  lut = np.zeros(max(c["index"] for c in categories) + 1, np.uint32)
  for c in categories:
    if c["name"] not in standard:
      raise DataError(f"{version_dir / 'category.json'}: unknown lidarseg class {c['name']!r}")
    lut[c["index"]] = standard[c["name"]]
  return lut


@functools.lru_cache(maxsize=4)
def _nuscenes_version(version_dir: pathlib.Path) -> dict[str, list[ScanRef]]:
  """Scene name -> its LIDAR_TOP key frames (time order) of one devkit version folder."""
  raw_dir = version_dir.parent
  scenes = {s["token"]: s["name"] for s in _load_table(version_dir, "scene")}
  sample_scene = {s["token"]: s["scene_token"] for s in _load_table(version_dir, "sample")}
  labels = {r["sample_data_token"]: r["filename"]
            for r in _load_table(version_dir, "lidarseg", required=False)}
  frames: dict[str, list[tuple[int, dict]]] = {name: [] for name in scenes.values()}
  for sd in _load_table(version_dir, "sample_data"):
    if not sd.get("is_key_frame") or "/LIDAR_TOP/" not in f"/{sd['filename']}":
      continue
    scene_token = sample_scene.get(sd["sample_token"])
    if scene_token not in scenes:
      raise DataError(f"{version_dir / 'sample_data.json'}: sample_data {sd['token']} refers to "
                      "a sample or scene missing from sample.json/scene.json")
    frames[scenes[scene_token]].append((sd["timestamp"], sd))
  out = {}
  for name, items in frames.items():
    items.sort(key=lambda item: item[0])
    out[name] = [ScanRef(
        scan_id=sd["token"], points_path=raw_dir / sd["filename"], sequence=name,
        frame=f"{i:06d}",
        label_path=raw_dir / labels[sd["token"]] if sd["token"] in labels else None)
        for i, (_, sd) in enumerate(items)]
  return out


def _nuscenes_versions(raw_dir: pathlib.Path) -> dict[str, dict[str, list[ScanRef]]]:
  versions = sorted(p for p in raw_dir.glob("v1.0-*") if (p / "scene.json").is_file())
  if not versions:
    raise DataError(f"{raw_dir}: no nuScenes tables (expected v1.0-*/scene.json)")
  return {p.name: _nuscenes_version(p) for p in versions}


def nuscenes_split_scenes(versions: dict[str, dict], split: str) -> list[str]:
  """Scene names of a devkit split among the versions present."""
  if split in ("train", "val") and "v1.0-trainval" not in versions:
    split = "mini_" + split
  pick = {"train": ("v1.0-trainval", lambda n: n not in NUSCENES_VAL),
          "val": ("v1.0-trainval", lambda n: n in NUSCENES_VAL),
          "test": ("v1.0-test", lambda n: True),
          "mini_train": ("v1.0-mini", lambda n: n not in NUSCENES_MINI_VAL),
          "mini_val": ("v1.0-mini", lambda n: n in NUSCENES_MINI_VAL)}
  if split not in pick:
    raise DataError(f"nuscenes has no split {split!r} (has train, val, test, mini_train, "
                    "mini_val); name scenes with --split NAME=scene-0001,...")
  version, keep = pick[split]
  if version not in versions:
    if split == "test":
      return []
    raise DataError(f"no {version} tables for nuScenes split {split!r}")
  return sorted(n for n in versions[version] if keep(n))


def _list_nuscenes(raw_dir: pathlib.Path, split, sequences) -> list[ScanRef]:
  versions = _nuscenes_versions(raw_dir)
  by_name = {name: refs for scenes in versions.values() for name, refs in scenes.items()}
  if sequences is None:
    sequences = nuscenes_split_scenes(versions, split) if split else sorted(by_name)
  refs = []
  for name in sequences:
    if name not in by_name:
      raise DataError(f"{raw_dir}: nuScenes scene {name!r} is in no v1.0-*/scene.json")
    refs.extend(by_name[name])
  return refs
