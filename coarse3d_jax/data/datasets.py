"""Per-dataset facts in one place: classes, label maps, colors, sensor geometry, splits.

Sources (facts only): SemanticKITTI from the official semantic-kitti-api `semantic-kitti.yaml`;
SemanticPOSS from COARSE3D's `semantic-poss.yaml` and its training config (splits, sensor,
mean/std); nuScenes-lidarseg from the nuscenes-devkit `LidarsegClassMapper` (general ->
challenge classes, challenge colors) and COARSE3D's `config_nuscenes.yaml` (sensor, mean/std).
Official color maps of KITTI and POSS are BGR; `colors_rgb` holds them converted to RGB.
Datasets described by a YAML file (custom sensors) are read by `dataset_config`.
"""
from collections.abc import Mapping, Sequence
import dataclasses

import numpy as np

from coarse3d_jax.data import errors


class UnknownLabelError(errors.DataError, ValueError):
  """A raw label id that the dataset's learning map does not define."""


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetInfo:
  """Static facts of one dataset. Arrays are read-only.

  Attributes:
    name: dataset name as given to `get_info`.
    class_names: (C,) learning class names; index 0 is the ignore class.
    learning_map: (R,) uint8, raw label id -> learning id (R = max raw id + 1).
    learning_map_inv: (C,) uint32, learning id -> representative raw id.
    ignore: (C,) bool, classes left out of losses and metrics.
    colors_rgb: (C, 3) uint8 class colors.
    height, width: range image size.
    fov_up, fov_down, fov_left, fov_right: field of view in degrees (horizontal -180..180).
    mean, std: (5,) float32 channel statistics of (range, x, y, z, remission).
    splits: split name -> sequence names (nuScenes: the devkit split name itself).
    raw_known: (R,) bool, raw ids that the learning map defines.
    point_format: SemanticKITTI layout point files: 'bin' (float32 x, y, z, remission) or 'npy'
      ((N, 4) floats).
    label_format: label files: 'label' (uint32, semantic id in the low 16 bits) or 'npy' ((N,)
      integer raw ids).
  Custom datasets (`dataset_config`) may leave mean and std unknown: NaN.
  """
  name: str
  class_names: tuple[str, ...]
  learning_map: np.ndarray
  learning_map_inv: np.ndarray
  ignore: np.ndarray
  colors_rgb: np.ndarray
  height: int
  width: int
  fov_up: float
  fov_down: float
  fov_left: float
  fov_right: float
  mean: np.ndarray
  std: np.ndarray
  splits: Mapping[str, tuple[str, ...]]
  raw_known: np.ndarray
  point_format: str = "bin"
  label_format: str = "label"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def geometry(self) -> dict[str, float | int]:
    """Keyword arguments of the projection functions."""
    return {"height": self.height, "width": self.width, "fov_up": self.fov_up,
            "fov_down": self.fov_down, "fov_left": self.fov_left, "fov_right": self.fov_right}


def _frozen(array: np.ndarray) -> np.ndarray:
  array = np.array(array)
  array.setflags(write=False)
  return array


def build(name: str, raw_to_learning: Mapping[int, int], inverse: Sequence[int],
          class_names: Sequence[str], colors_rgb: Sequence[Sequence[int]], sensor: dict,
          splits: Mapping[str, Sequence[str]], absent: Sequence[str] = (),
          point_format: str = "bin", label_format: str = "label") -> DatasetInfo:
  """Assembles a DatasetInfo from the yaml-like dictionaries.

  `absent` names classes the data never contains; like class 0 they are left out of the metric.
  """
  size = max(raw_to_learning) + 1
  learning_map = np.zeros(size, np.uint8)
  raw_known = np.zeros(size, bool)
  for raw, learned in raw_to_learning.items():
    learning_map[raw] = learned
    raw_known[raw] = True
  num_classes = len(class_names)
  ignore = np.zeros(num_classes, bool)
  ignore[0] = True
  ignore[[list(class_names).index(n) for n in absent]] = True
  return DatasetInfo(
      name=name, class_names=tuple(class_names), learning_map=_frozen(learning_map),
      learning_map_inv=_frozen(np.asarray(inverse, np.uint32)), ignore=_frozen(ignore),
      colors_rgb=_frozen(np.asarray(colors_rgb, np.uint8)),
      splits={k: tuple(v) for k, v in splits.items()}, raw_known=_frozen(raw_known),
      mean=_frozen(np.asarray(sensor.pop("mean"), np.float32)),
      std=_frozen(np.asarray(sensor.pop("std"), np.float32)), point_format=point_format,
      label_format=label_format, **sensor)


def _seqs(*numbers: int) -> tuple[str, ...]:
  return tuple(f"{n:02d}" for n in numbers)


# ----------------------------------------------------------------------------- SemanticKITTI
_KITTI_NAMES = ("unlabeled", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person",
                "bicyclist", "motorcyclist", "road", "parking", "sidewalk", "other-ground",
                "building", "fence", "vegetation", "trunk", "terrain", "pole", "traffic-sign")
_KITTI_MAP = {0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
              40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16,
              72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5,
              258: 4, 259: 5}
_KITTI_INV = (0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81)
# Official color_map (BGR) of the raw ids in _KITTI_INV, in learning order.
_KITTI_BGR = ((0, 0, 0), (245, 150, 100), (245, 230, 100), (150, 60, 30), (180, 30, 80),
              (255, 0, 0), (30, 30, 255), (200, 40, 255), (90, 30, 150), (255, 0, 255),
              (255, 150, 255), (75, 0, 75), (75, 0, 175), (0, 200, 255), (50, 120, 255),
              (0, 175, 0), (0, 60, 135), (80, 240, 150), (150, 240, 255), (0, 0, 255))
_KITTI_SENSOR = dict(height=64, width=2048, fov_up=3.0, fov_down=-25.0, fov_left=-180.0,
                     fov_right=180.0, mean=(12.12, 10.88, 0.23, -1.04, 0.21),
                     std=(12.32, 11.47, 6.91, 0.86, 0.16))
_KITTI_SPLITS = {"train": _seqs(0, 1, 2, 3, 4, 5, 6, 7, 9, 10), "val": _seqs(8),
                 "test": _seqs(*range(11, 22))}
_SYNTHETIC_SPLITS = {"train": _seqs(0, 1, 2, 3), "val": _seqs(4)}
# Classes the synthetic streets never contain (data_prep/synthetic.py): left out of its mIoU.
_SYNTHETIC_ABSENT = ("motorcycle", "other-vehicle", "bicyclist", "motorcyclist", "other-ground")

# ----------------------------------------------------------------------------- SemanticPOSS
_POSS_NAMES = ("unlabeled", "people", "rider", "car", "trunk", "plants", "traffic-sign", "pole",
               "trashcan", "building", "cone/stone", "fence", "bike", "road")
# Raw ids 1-3 and 18-20 are "don't care" in the official color map: known, mapped to ignore.
_POSS_MAP = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 3, 8: 4, 9: 5, 10: 6, 11: 6, 12: 6,
             13: 7, 14: 8, 15: 9, 16: 10, 17: 11, 18: 0, 19: 0, 20: 0, 21: 12, 22: 13}
_POSS_INV = (0, 4, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17, 21, 22)
_POSS_BGR = ((0, 0, 0), (255, 30, 30), (255, 40, 200), (100, 150, 245), (135, 60, 0),
             (0, 175, 0), (255, 0, 0), (255, 240, 150), (125, 255, 0), (255, 200, 0),
             (50, 255, 255), (255, 120, 50), (100, 230, 245), (128, 128, 128))
_POSS_SENSOR = dict(height=40, width=1800, fov_up=15.0, fov_down=-25.0, fov_left=-180.0,
                    fov_right=180.0, mean=(23.6835, 0.6078, 1.6879, -0.6106, 14.8053),
                    std=(18.7819, 18.3021, 23.7248, 1.7326, 16.6886))
_POSS_SPLITS = {"train": _seqs(0, 1, 3, 4, 5), "val": _seqs(2)}

# ----------------------------------------------------------------------------- nuScenes
# The nuScenes-lidarseg general classes in their standard index order (category.json 'index').
NUSCENES_GENERAL = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone",
    "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid",
    "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego")
_NUSC_NAMES = ("ignore", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
               "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface",
               "other_flat", "sidewalk", "terrain", "manmade", "vegetation")
# General class name -> challenge class name (devkit LidarsegClassMapper); others -> ignore.
_NUSC_TO_CHALLENGE = {
    "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian", "vehicle.car": "car",
    "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus", "vehicle.truck": "truck",
    "vehicle.construction": "construction_vehicle", "vehicle.trailer": "trailer",
    "movable_object.barrier": "barrier", "movable_object.trafficcone": "traffic_cone",
    "flat.driveable_surface": "driveable_surface", "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain", "flat.other": "other_flat", "static.manmade": "manmade",
    "static.vegetation": "vegetation"}
_NUSC_RGB = ((0, 0, 0), (112, 128, 144), (220, 20, 60), (255, 127, 80), (255, 158, 0),
             (233, 150, 70), (255, 61, 99), (0, 0, 230), (47, 79, 79), (255, 140, 0),
             (255, 99, 71), (0, 207, 191), (175, 0, 75), (75, 0, 75), (112, 180, 60),
             (222, 184, 135), (0, 175, 0))
_NUSC_SENSOR = dict(height=64, width=2048, fov_up=15.0, fov_down=-35.0, fov_left=-180.0,
                    fov_right=180.0, mean=(9.5353, 0.0631, -0.2114, -0.4938, 18.7527),
                    std=(12.1666, 9.9376, 11.5920, 1.7673, 22.0192))
_NUSC_SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",)}


def _nuscenes_maps() -> tuple[dict[int, int], list[int]]:
  to_index = {name: i for i, name in enumerate(_NUSC_NAMES)}
  raw_map = {raw: to_index[_NUSC_TO_CHALLENGE.get(name, "ignore")]
             for raw, name in enumerate(NUSCENES_GENERAL)}
  inverse = [0] * len(_NUSC_NAMES)
  for raw in sorted(raw_map, reverse=True):  # Representative: the lowest general id.
    if raw_map[raw]:
      inverse[raw_map[raw]] = raw
  return raw_map, inverse


def _bgr_to_rgb(colors):
  return [tuple(reversed(c)) for c in colors]


def _make_all() -> dict[str, DatasetInfo]:
  nusc_map, nusc_inv = _nuscenes_maps()
  kitti = lambda name, splits, absent=(): build(
      name, _KITTI_MAP, _KITTI_INV, _KITTI_NAMES, _bgr_to_rgb(_KITTI_BGR), dict(_KITTI_SENSOR),
      splits, absent)
  return {
      "semantickitti": kitti("semantickitti", _KITTI_SPLITS),
      "semanticposs": build("semanticposs", _POSS_MAP, _POSS_INV, _POSS_NAMES,
                             _bgr_to_rgb(_POSS_BGR), dict(_POSS_SENSOR), _POSS_SPLITS),
      "nuscenes": build("nuscenes", nusc_map, nusc_inv, _NUSC_NAMES, _NUSC_RGB,
                         dict(_NUSC_SENSOR), _NUSC_SPLITS),
      "synthetic": kitti("synthetic", _SYNTHETIC_SPLITS, _SYNTHETIC_ABSENT),
  }


_INFOS = _make_all()
NAMES = tuple(_INFOS)


def get_info(name: str) -> DatasetInfo:
  """The DatasetInfo of 'semantickitti', 'semanticposs', 'nuscenes' or 'synthetic'."""
  if name not in _INFOS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
  return _INFOS[name]


def resolve(dataset: "str | DatasetInfo") -> DatasetInfo:
  """A DatasetInfo as given (a custom dataset's), or the built-in one of that name."""
  return dataset if isinstance(dataset, DatasetInfo) else get_info(dataset)


def name_of(dataset: "str | DatasetInfo") -> str:
  return dataset.name if isinstance(dataset, DatasetInfo) else dataset


def map_labels(info: DatasetInfo, raw: np.ndarray, source: str | None = None) -> np.ndarray:
  """Raw label ids (N,) -> learning ids (N,) uint8.

  Raises:
    UnknownLabelError: an id is not in the learning map (message names `source` if given).
  """
  raw = np.asarray(raw)
  if raw.size:
    known = np.zeros(raw.shape, bool)
    inside = (raw >= 0) & (raw < len(info.raw_known))
    known[inside] = info.raw_known[raw[inside]]
    if not known.all():
      bad = np.unique(raw[~known])
      where = f"{source}: " if source else ""
      raise UnknownLabelError(
          f"{where}raw label id(s) {bad[:8].tolist()} ({int((~known).sum())} points) are not "
          f"in the {info.name} learning map")
  return info.learning_map[raw.astype(np.intp)] if raw.size else np.zeros(raw.shape, np.uint8)
