"""A dataset described by one YAML file (a custom sensor), and the description data_prep saves.

`--dataset custom --dataset_config my_sensor.yaml` (data_prep, evaluate) reads a file like this
(in the spirit of the SemanticKITTI api's `semantic-kitti.yaml`; docs/bring_your_own.md has a
full example):

    name: my_sensor            # optional, default 'custom': [a-z][a-z0-9_]*, not a built-in name
    class_names: [unlabeled, car, road]           # learning ids 0..C-1; 0 is ignored
    learning_map: {0: 0, 1: 0, 10: 1, 40: 2}      # raw id -> learning id
    learning_map_inv: {0: 0, 1: 10, 2: 40}        # learning id -> the raw id predictions get
    colors: [[0, 0, 0], [100, 150, 245], [255, 0, 255]]   # RGB, one per class
    sensor:
      height: 32                 # range image rows and columns
      width: 1024
      fov_up: 10.0               # vertical field of view, degrees
      fov_down: -30.0
      fov_left: -180.0           # optional, horizontal field of view (default -180..180)
      fov_right: 180.0
      mean: [10, 0, 0, -1, 0.2]  # optional, range x y z remission; without them training
      std: [10, 10, 8, 1, 0.15]  #   normalizes with the training split's statistics
    point_format: bin            # optional: bin (float32 x, y, z, remission) or npy ((N, 4))
    label_format: label          # optional: label (uint32, id in the low 16 bits) or npy ((N,))
    splits: {train: [0, 1], val: [2]}   # optional official splits (sequence names or numbers)
    ignore: [other]              # optional: classes besides 0 left out of the mIoU

Raw data use the SemanticKITTI layout `sequences/NN/{velodyne,labels}/`. Every learning id must
come back from its raw id (`learning_map[learning_map_inv[c]] == c`): predictions and written
weak labels are raw ids, read back through the learning map. A bad file is a one-line
`DatasetConfigError` naming the file and the key.

data_prep saves the description of every conversion, built-in datasets included, as
`dataset.json` (the same schema in JSON) beside stats.json; training reads it from there, and the
workdir's data_info.json carries it on to predict.
"""
from collections.abc import Mapping
import json
import math
import os
import pathlib
import re
from typing import Any

from coarse3d_jax import files
from coarse3d_jax.data import datasets
from coarse3d_jax.data.errors import DataError

DESCRIPTION_FILE = "dataset.json"
DEFAULT_NAME = "custom"
POINT_FORMATS = ("bin", "npy")
LABEL_FORMATS = ("label", "npy")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REQUIRED = ("class_names", "learning_map", "learning_map_inv", "colors", "sensor")
_OPTIONAL = ("name", "point_format", "label_format", "splits", "ignore")
_SENSOR_REQUIRED = ("height", "width", "fov_up", "fov_down")
_SENSOR_OPTIONAL = ("fov_left", "fov_right", "mean", "std")
_LABEL_ID_LIMIT = 1 << 16  # A .label file keeps the semantic id in its low 16 bits.


class DatasetConfigError(DataError):
  """A dataset description that cannot be used (message: file, key, what is wrong)."""


class _Checker:
  """Raises DatasetConfigError('{source}: {key}: {problem}')."""

  def __init__(self, source: str):
    self.source = source

  def fail(self, key: str, problem: str):
    raise DatasetConfigError(f"{self.source}: {key}: {problem}")

  def fields(self, obj: Any, key: str, required: tuple[str, ...],
             optional: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
      self.fail(key or "(top level)", f"expected a mapping of fields, got {type(obj).__name__}")
    prefix = f"{key}." if key else ""
    for name in obj:
      if name not in required + optional:
        self.fail(f"{prefix}{name}", f"unknown field (known: {', '.join(required + optional)})")
    for name in required:
      if name not in obj:
        self.fail(f"{prefix}{name}", "missing")
    return obj

  def integer(self, value: Any, key: str, low: int = 0) -> int:
    if isinstance(value, str) and value.isdigit():
      value = int(value)  # JSON mapping keys are strings.
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      self.fail(key, f"expected an integer >= {low}, got {value!r}")
    return value

  def number(self, value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      self.fail(key, f"expected a finite number, got {value!r}")
    return float(value)

  def int_map(self, obj: Any, key: str) -> dict[int, int]:
    if not isinstance(obj, Mapping) or not obj:
      self.fail(key, "expected a non-empty mapping of integer ids")
    out = {}
    for k, v in obj.items():
      raw = self.integer(k, f"{key}.{k}")
      if raw in out:
        self.fail(f"{key}.{k}", "repeated id")
      out[raw] = self.integer(v, f"{key}.{k}")
    return out

  def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
      self.fail(key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _class_names(check: _Checker, obj: Any) -> list[str]:
  if not isinstance(obj, list) or len(obj) < 2 or not all(isinstance(n, str) and n for n in obj):
    check.fail("class_names", "expected a list of at least 2 names (index 0: the ignore class)")
  if len(set(obj)) != len(obj):
    check.fail("class_names", "names repeat")
  return obj


def _maps(check: _Checker, obj: Mapping[str, Any], names: list[str], label_format: str):
  """(raw -> learning, inverse list) after checking them against each other."""
  forward = check.int_map(obj["learning_map"], "learning_map")
  for raw, learned in forward.items():
    if learned >= len(names):
      check.fail(f"learning_map.{raw}", f"learning id {learned}, but class_names has "
                 f"{len(names)} classes (0..{len(names) - 1})")
    if label_format == "label" and raw >= _LABEL_ID_LIMIT:
      check.fail(f"learning_map.{raw}", "raw id does not fit the 16 semantic bits of a .label")
  inverse = check.int_map(obj["learning_map_inv"], "learning_map_inv")
  if sorted(inverse) != list(range(len(names))):
    check.fail("learning_map_inv", f"{len(inverse)} entries ({sorted(inverse)[:5]}...), but "
               f"class_names has {len(names)} classes: one per learning id 0..{len(names) - 1}")
  for learned, raw in sorted(inverse.items()):
    if forward.get(raw) != learned:
      check.fail(f"learning_map_inv.{learned}", f"raw id {raw} maps to {forward.get(raw)} in "
                 f"learning_map, not back to {learned}")
  return forward, [inverse[c] for c in range(len(names))]


def _colors(check: _Checker, obj: Any, num_classes: int) -> list[list[int]]:
  if not isinstance(obj, list) or len(obj) != num_classes:
    count = len(obj) if isinstance(obj, list) else type(obj).__name__
    check.fail("colors", f"{count} entries, but class_names has {num_classes} classes "
               "(one [r, g, b] each)")
  for i, color in enumerate(obj):
    if not isinstance(color, list) or len(color) != 3:
      check.fail(f"colors.{i}", f"expected [r, g, b], got {color!r}")
    for value in color:
      if check.integer(value, f"colors.{i}") > 255:
        check.fail(f"colors.{i}", f"{value} is outside 0..255")
  return obj


def _channel_stats(check: _Checker, obj: Mapping[str, Any], key: str) -> list[float]:
  if key not in obj:
    return [math.nan] * 5
  values = obj[key]
  if not isinstance(values, list) or len(values) != 5:
    check.fail(f"sensor.{key}", "expected 5 numbers (range, x, y, z, remission)")
  values = [check.number(v, f"sensor.{key}") for v in values]
  if key == "std" and min(values) <= 0:
    check.fail("sensor.std", "every std must be > 0")
  return values


def _sensor(check: _Checker, obj: Any) -> dict[str, Any]:
  obj = check.fields(obj, "sensor", _SENSOR_REQUIRED, _SENSOR_OPTIONAL)
  sensor = {k: check.integer(obj[k], f"sensor.{k}", low=1) for k in ("height", "width")}
  for k, default in (("fov_up", None), ("fov_down", None), ("fov_left", -180.0),
                     ("fov_right", 180.0)):
    sensor[k] = check.number(obj.get(k, default), f"sensor.{k}")
  if sensor["fov_up"] <= sensor["fov_down"]:
    check.fail("sensor.fov_up", f"{sensor['fov_up']} must be above fov_down {sensor['fov_down']}")
  if sensor["fov_right"] <= sensor["fov_left"]:
    check.fail("sensor.fov_right", f"{sensor['fov_right']} must exceed fov_left "
               f"{sensor['fov_left']}")
  sensor["mean"], sensor["std"] = (_channel_stats(check, obj, k) for k in ("mean", "std"))
  return sensor


def _sequence_name(check: _Checker, value: Any, key: str) -> str:
  if isinstance(value, str) and value and "/" not in value:
    return value
  return f"{check.integer(value, key):02d}"  # semantic-kitti.yaml lists sequences as numbers.


def _splits(check: _Checker, obj: Any) -> dict[str, list[str]]:
  if not isinstance(obj, Mapping):
    check.fail("splits", "expected a mapping split name -> list of sequences")
  out = {}
  for name, sequences in obj.items():
    if not isinstance(name, str) or not _NAME.fullmatch(name):
      check.fail(f"splits.{name}", "split names are lower-case words, e.g. train, val")
    if not isinstance(sequences, list) or not sequences:
      check.fail(f"splits.{name}", "expected a non-empty list of sequences")
    out[name] = [_sequence_name(check, s, f"splits.{name}") for s in sequences]
  return out


def _ignored(check: _Checker, obj: Any, names: list[str]) -> list[str]:
  if not isinstance(obj, list) or any(n not in names[1:] for n in obj):
    check.fail("ignore", f"expected a list of class names other than {names[0]!r}, got {obj!r}")
  return obj


def _name(check: _Checker, obj: Mapping[str, Any], allow_builtin: bool) -> str:
  name = obj.get("name", DEFAULT_NAME)
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    check.fail("name", f"{name!r}: use a lower-case word ([a-z][a-z0-9_]*)")
  if name in datasets.NAMES and not allow_builtin:
    check.fail("name", f"{name!r} is a built-in dataset; give the custom one another name")
  return name


def from_dict(obj: Any, source: str, allow_builtin_names: bool = False) -> datasets.DatasetInfo:
  """The DatasetInfo of a parsed description (the module docstring's schema).

  Args:
    obj: the parsed YAML or JSON.
    source: what to name in errors (the file).
    allow_builtin_names: True for a saved description of a built-in dataset (dataset.json).
  Raises:
    DatasetConfigError: the first problem found, with its key.
  """
  check = _Checker(source)
  obj = check.fields(obj, "", _REQUIRED, _OPTIONAL)
  name = _name(check, obj, allow_builtin_names)
  point_format = check.choice(obj.get("point_format", "bin"), "point_format", POINT_FORMATS)
  label_format = check.choice(obj.get("label_format", "label"), "label_format", LABEL_FORMATS)
  names = _class_names(check, obj["class_names"])
  forward, inverse = _maps(check, obj, names, label_format)
  return datasets.build(
      name, forward, inverse, names, _colors(check, obj["colors"], len(names)),
      _sensor(check, obj["sensor"]), _splits(check, obj.get("splits", {})),
      absent=_ignored(check, obj.get("ignore", []), names), point_format=point_format,
      label_format=label_format)


def load(path: str | os.PathLike) -> datasets.DatasetInfo:
  """The DatasetInfo of a YAML (or JSON) description file."""
  import yaml  # pylint: disable=g-import-not-at-top  # Only where a file is parsed.
  try:
    text = pathlib.Path(path).read_text()
  except OSError as e:
    raise DatasetConfigError(f"{path}: cannot read the dataset description ({e.strerror})"
                             ) from None
  try:
    obj = yaml.safe_load(text)
  except yaml.YAMLError as e:
    where = getattr(e, "problem_mark", None)
    line = f" (line {where.line + 1})" if where is not None else ""
    raise DatasetConfigError(f"{path}: not valid YAML{line}") from None
  return from_dict(obj, str(path))


def to_dict(info: datasets.DatasetInfo) -> dict[str, Any]:
  """The description of `info` in the schema `from_dict` reads (JSON-ready)."""
  sensor = dict(info.geometry)
  for key in ("mean", "std"):
    values = [float(v) for v in getattr(info, key)]
    if not any(math.isnan(v) for v in values):
      sensor[key] = values
  known = [int(r) for r in range(len(info.raw_known)) if info.raw_known[r]]
  return {
      "name": info.name, "class_names": list(info.class_names),
      "learning_map": {r: int(info.learning_map[r]) for r in known},
      "learning_map_inv": {c: int(r) for c, r in enumerate(info.learning_map_inv)},
      "colors": info.colors_rgb.tolist(), "sensor": sensor,
      "point_format": info.point_format, "label_format": info.label_format,
      "splits": {k: list(v) for k, v in info.splits.items()},
      "ignore": [info.class_names[c] for c in range(1, info.num_classes) if info.ignore[c]]}


def write_description(out_dir: str | os.PathLike, info: datasets.DatasetInfo) -> pathlib.Path:
  return files.atomic_write_json(pathlib.Path(out_dir) / DESCRIPTION_FILE, to_dict(info),
                                 indent=1)


def load_description(data_dir: str | os.PathLike) -> datasets.DatasetInfo | None:
  """The dataset.json of a data_prep output directory; None for one written before it existed."""
  path = pathlib.Path(data_dir) / DESCRIPTION_FILE
  if not path.is_file():
    return None
  try:
    obj = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise DatasetConfigError(f"{path}: unreadable dataset description ({e})") from None
  return from_dict(obj, str(path), allow_builtin_names=True)
