"""Weak labels and sensors that users bring: weak-label files in and out, a dataset from YAML.

Real-scan tests use the two SemanticKITTI sample scans (`sample_dir`, skipped without them);
the rest build tiny raw trees. A custom 32 x 512 sensor is converted, trained a few steps,
predicted (labeled and unlabeled sequences) and evaluated end to end.
"""
import json
import pathlib
import types

import numpy as np
import pytest
import yaml

from coarse3d_jax import evaluate
from coarse3d_jax import inference
from coarse3d_jax import predict
from coarse3d_jax import train
from coarse3d_jax.data import dataset_config
from coarse3d_jax.data import datasets
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers
from tests import tiny_data
from tests.test_data_prep import assert_nothing_partial
from tests.test_data_prep import load_split
from tests.test_data_prep import make_kitti_tree
from tests.test_data_prep import make_poss_tree
from tests.test_data_prep import run_cli
from tests.test_data_prep import shard_files

KITTI = datasets.get_info("semantickitti")
REPO = pathlib.Path(__file__).resolve().parents[1]


def one_error_line(log: str) -> str:
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, log
  return errors[0]


def write_weak_files(root: pathlib.Path, seq: str, name: str, frames: dict[str, np.ndarray],
                     suffix: str = ".label") -> None:
  """root/sequences/seq/name/<frame><suffix>: uint32 .label, or np.save for .npy."""
  folder = root / "sequences" / seq / name
  folder.mkdir(parents=True, exist_ok=True)
  for frame, values in frames.items():
    if suffix == ".npy":
      np.save(folder / f"{frame}.npy", values)
    else:
      values.astype("<u4").tofile(folder / f"{frame}.label")


def sample_labels(sample_dir: pathlib.Path, frame: str) -> np.ndarray:
  return np.fromfile(sample_dir / "sequences" / "00" / "labels" / f"{frame}.label", "<u4")


# ----------------------------------------------------------------------------- real scans
def scribbles_of(raw: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
  """(scribble file values, expected learning ids): the raw labels (instance bits kept) of a
  random 8% of the points, 0 elsewhere; a few scribbled as raw 1 (outlier: the ignore class)."""
  chosen = rng.random(len(raw)) < 0.08
  scribble = np.where(chosen, raw, 0).astype(np.uint32)
  outliers = np.flatnonzero(chosen)[:5]
  scribble[outliers] = 1 | (7 << 16)
  expected = np.where(scribble > 0, KITTI.learning_map[scribble & 0xFFFF], 0)
  return scribble, expected.astype(np.uint8)


def test_scribbles_come_back_as_point_weak_label(sample_dir, tmp_path):
  rng = np.random.default_rng(0)
  expected = {}
  for frame in ("000000", "000001"):
    scribble, expected[frame] = scribbles_of(sample_labels(sample_dir, frame), rng)
    write_weak_files(tmp_path / "root", "00", "scribbles", {frame: scribble})
  out = tmp_path / "out"
  rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", sample_dir, "--out_dir", out,
                    "--weak_labels", "scribbles", "--weak_labels_root", tmp_path / "root",
                    "--split", "train=00")
  assert rc == 0, log
  examples = load_split(out, "train")
  for e in examples:
    frame = e["scan_id"].decode().split("/")[1]
    np.testing.assert_array_equal(e["point_weak_label"], expected[frame])
    full = KITTI.learning_map[sample_labels(sample_dir, frame) & 0xFFFF]
    np.testing.assert_array_equal(e["point_label"], full)  # Full labels still from labels/.
    row, col, depth = projection.project_np(e["points"][:, :3], **KITTI.geometry)
    _, winner = projection.range_image_np(e["points"], row, col, depth, 64, 2048)
    np.testing.assert_array_equal(e["weak_label"],
                                  projection.pixel_values(e["point_weak_label"], winner))
  stats = json.loads((out / "stats.json").read_text())
  assert stats["weak_labels"] == "scribbles" and stats["label_ratio"] is None
  weak = np.concatenate(list(expected.values()))
  split = stats["splits"]["train"]
  assert split["weak_class_counts"] == np.bincount(weak, minlength=20).tolist()
  assert split["weak_fraction"] == pytest.approx((weak > 0).mean())


def test_written_drawn_labels_read_back_reproduce_the_shards(sample_dir, tmp_path):
  root = tmp_path / "root"
  common = ("--dataset", "semantickitti", "--raw_dir", sample_dir, "--split", "train=00",
            "--weak_labels_root", root)
  rc, log = run_cli(*common, "--out_dir", tmp_path / "drawn", "--label_ratio", "0.001",
                    "--write_weak_labels", "drawn")
  assert rc == 0, log
  for e in load_split(tmp_path / "drawn", "train"):
    frame = e["scan_id"].decode().split("/")[1]
    written = np.fromfile(root / "sequences" / "00" / "drawn" / f"{frame}.label", "<u4")
    assert len(written) == len(e["points"])  # No point of the sample is dropped.
    np.testing.assert_array_equal(KITTI.learning_map[written], e["point_weak_label"])
    assert ((written > 0) == (e["point_weak_label"] > 0)).all() and (written > 0).any()
  rc, log = run_cli(*common, "--out_dir", tmp_path / "read", "--weak_labels", "drawn")
  assert rc == 0, log
  assert shard_files(tmp_path / "read") == shard_files(tmp_path / "drawn")


def test_custom_yaml_of_kitti_geometry_gives_the_same_examples(sample_dir, tmp_path):
  description = {**dataset_config.to_dict(KITTI), "name": "my_kitti"}
  config = tmp_path / "my_kitti.yaml"
  config.write_text(yaml.safe_dump(description))
  common = ("--raw_dir", sample_dir, "--split", "train=00", "--label_ratio", "1")
  assert run_cli("--dataset", "semantickitti", "--out_dir", tmp_path / "kitti", *common)[0] == 0
  rc, log = run_cli("--dataset", "custom", "--dataset_config", config, "--out_dir",
                    tmp_path / "custom", *common)
  assert rc == 0, log
  kitti, custom = shard_files(tmp_path / "kitti"), shard_files(tmp_path / "custom")
  assert list(custom) == ["my_kitti-train.tfrecord-00000-of-00001"]
  assert list(custom.values()) == list(kitti.values())  # Same bytes: images, labels, pixels.
  saved = dataset_config.load_description(tmp_path / "custom")
  assert saved.name == "my_kitti" and saved.geometry == KITTI.geometry
  np.testing.assert_array_equal(saved.learning_map, KITTI.learning_map)


# ----------------------------------------------------------------------------- tiny trees
@pytest.fixture
def tiny_raw(tmp_path) -> pathlib.Path:
  """Sequences 00 (2 scans) and 08 (1 scan), 300 points each, SemanticKITTI raw ids."""
  return make_kitti_tree(tmp_path / "raw", {"00": 2, "08": 1}, unlabeled=())


def raw_weak_ids(rng, n: int, info=KITTI) -> np.ndarray:
  """Raw ids of a random third of the points (any known id, instance bits), 0 elsewhere."""
  known = np.flatnonzero(info.raw_known)
  ids = rng.choice(known, n) | (rng.integers(0, 9, n).astype(np.uint32) << 16)
  return np.where(rng.random(n) < 0.33, ids, 0).astype(np.uint32)


def test_dropped_points_drop_their_weak_labels_both_ways(tiny_raw, tmp_path):
  path = tiny_raw / "sequences" / "00" / "velodyne" / "000000.bin"
  points = np.fromfile(path, np.float32).reshape(-1, 4)
  points[[3, 10]] = np.nan
  points[30, :3] = 0.0
  points.tofile(path)
  keep = np.ones(300, bool)
  keep[[3, 10, 30]] = False
  rng = np.random.default_rng(1)
  given = {f: raw_weak_ids(rng, 300) for f in ("000000", "000001")}
  given["000000"][[3, 10, 30]] = 10  # Labeled, but dropped with their points.
  write_weak_files(tiny_raw, "00", "scribbles", given)
  args = ("--dataset", "semantickitti", "--raw_dir", tiny_raw, "--split", "train=00")
  rc, log = run_cli(*args, "--out_dir", tmp_path / "a", "--weak_labels", "scribbles",
                    "--write_weak_labels", "copy")
  assert rc == 0, log
  first, second = load_split(tmp_path / "a", "train")
  np.testing.assert_array_equal(first["point_weak_label"],
                                KITTI.learning_map[given["000000"] & 0xFFFF][keep])
  np.testing.assert_array_equal(second["point_weak_label"],
                                KITTI.learning_map[given["000001"] & 0xFFFF])
  written = np.fromfile(tiny_raw / "sequences" / "00" / "copy" / "000000.label", "<u4")
  assert len(written) == 300 and not written[~keep].any()  # Dropped points: 0.
  np.testing.assert_array_equal(KITTI.learning_map[written[keep]], first["point_weak_label"])
  rc, log = run_cli(*args, "--out_dir", tmp_path / "b", "--weak_labels", "copy")
  assert rc == 0, log
  assert shard_files(tmp_path / "b") == shard_files(tmp_path / "a")


def test_reference_npy_weak_labels(tiny_raw, tmp_path):
  """The reference's layout: np.save of a (1, N) int32 batch of learning ids, per scan."""
  rng = np.random.default_rng(2)
  learned = {f: np.where(rng.random(300) < 0.1, rng.integers(1, 20, 300), 0).astype(np.int32)
             for f in ("000000", "000001")}
  write_weak_files(tiny_raw, "00", "0.1", {"000000": learned["000000"][None]}, ".npy")
  write_weak_files(tiny_raw, "00", "0.1", {"000001": learned["000001"]}, ".npy")  # (N,) too.
  for fmt in ("auto", "npy"):
    out = tmp_path / fmt
    rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", tiny_raw, "--out_dir", out,
                      "--weak_labels", "0.1", "--weak_labels_format", fmt, "--split", "train=00")
    assert rc == 0, log
    for e, frame in zip(load_split(out, "train"), ("000000", "000001")):
      np.testing.assert_array_equal(e["point_weak_label"], learned[frame])


def test_semanticposs_layout_reads_scribbles_with_its_tags(tmp_path):
  rng = np.random.default_rng(4)
  points, _, pixels = make_poss_tree(tmp_path / "raw", rng)
  points[5, 1] = np.nan  # Dropped together with its tag and its weak label.
  points.tofile(tmp_path / "raw" / "sequences" / "02" / "velodyne" / "000000.bin")
  poss = datasets.get_info("semanticposs")
  scribble = rng.choice(np.array([0, 0, 1, 4, 9, 22, 21], np.uint32), len(points))
  write_weak_files(tmp_path / "raw", "02", "scribbles", {"000000": scribble})
  rc, log = run_cli("--dataset", "semanticposs", "--raw_dir", tmp_path / "raw", "--out_dir",
                    tmp_path / "out", "--weak_labels", "scribbles", "--split", "val=02")
  assert rc == 0, log
  (e,) = load_split(tmp_path / "out", "val")
  keep = np.arange(len(points)) != 5
  expected = poss.learning_map[scribble][keep]
  np.testing.assert_array_equal(e["point_weak_label"], expected)
  np.testing.assert_array_equal(e["weak_label"][pixels[keep] // 1800, pixels[keep] % 1800],
                                expected)


def test_prediction_pictures_show_the_weak_labels_read_from_files(tiny_raw, tmp_path):
  rng = np.random.default_rng(5)
  write_weak_files(tiny_raw, "00", "scribbles", {f: raw_weak_ids(rng, 300)
                                                 for f in ("000000", "000001")})
  out = tmp_path / "out"
  rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", tiny_raw, "--out_dir", out,
                    "--weak_labels", "scribbles", "--split", "train=00")
  assert rc == 0, log
  predictor = types.SimpleNamespace(info=KITTI, config=types.SimpleNamespace(data_dir=str(out)))
  weak = predict.training_weak_labels(predictor)
  assert weak == {"dataset": "semantickitti", "weak_labels": "scribbles",
                  "weak_labels_format": "auto", "weak_labels_root": None}
  refs = readers.list_scans("semantickitti", tiny_raw, sequences=["00"])
  for example, ref in zip(load_split(out, "train"), refs):
    scan = predict.prepare_scan("semantickitti", ref, KITTI.geometry)
    # pylint: disable=protected-access
    label = predict._point_labels("semantickitti", KITTI, scan)
    image = predict._pixel_weak_labels("semantickitti", scan, label, weak)
    # pylint: enable=protected-access
    assert image.any()
    np.testing.assert_array_equal(image, example["weak_label"])


def test_splits_without_weak_label_folders(tmp_path):
  """Scribbles for the training sequences only (as ScribbleKITTI): val gets none, and says so;
  a split with the folder in some sequences only, or no split with it, is an error."""
  raw = make_kitti_tree(tmp_path / "raw", {"00": 1, "01": 1, "08": 1}, unlabeled=())
  write_weak_files(raw, "00", "scribbles", {"000000": raw_weak_ids(np.random.default_rng(0),
                                                                   300)})
  args = ("--dataset", "semantickitti", "--raw_dir", raw, "--weak_labels", "scribbles")
  rc, log = run_cli(*args, "--out_dir", tmp_path / "ok", "--split", "train=00",
                    "--split", "val=08")
  assert rc == 0, log
  assert "split 'val' has no scribbles/ folders: its scans get no weak labels" in log
  (val,) = load_split(tmp_path / "ok", "val")
  assert not val["point_weak_label"].any() and val["point_label"].any()
  rc, log = run_cli(*args, "--out_dir", tmp_path / "mixed", "--split", "train=00,01")
  assert rc == 1 and one_error_line(log).startswith(
      f"error: {raw / 'sequences' / '01' / 'scribbles'}: missing weak-label folder (other")
  rc, log = run_cli(*args, "--out_dir", tmp_path / "none", "--split", "train=01")
  assert rc == 1 and "no labeled split has scribbles/ folders" in one_error_line(log)


def bad_weak_input(raw: pathlib.Path, kind: str) -> tuple[str, str]:
  """Breaks the weak labels of scan 00/000001: (--weak_labels folder, expected error start)."""
  rng = np.random.default_rng(3)
  folder = raw / "sequences" / "00" / "scribbles"
  good = {"000000": raw_weak_ids(rng, 300), "000001": raw_weak_ids(rng, 300)}
  write_weak_files(raw, "00", "scribbles", good)
  bad = folder / "000001.label"
  if kind == "missing":
    bad.unlink()
    return "scribbles", f"{bad}: missing weak-label file (nor .npy) for scan"
  if kind == "count":
    good["000001"][:299].tofile(bad)
    return "scribbles", f"{bad}: 299 weak labels, but"
  if kind == "unknown_id":
    good["000001"][4] = 2 | (1 << 16)
    good["000001"].tofile(bad)
    return "scribbles", f"{bad}: raw label id(s) [2] (1 points) are not in the semantickitti"
  npy = raw / "sequences" / "00" / "ref" / "000001.npy"
  write_weak_files(raw, "00", "ref", {"000000": np.zeros(300, np.int32)}, ".npy")
  if kind == "npy_class":
    write_weak_files(raw, "00", "ref", {"000001": np.full(300, 20, np.int32)}, ".npy")
    return "ref", f"{npy}: learning id(s) [20] (300 points) are not semantickitti classes 0..19"
  write_weak_files(raw, "00", "ref", {"000001": np.zeros((2, 150), np.float32)}, ".npy")
  return "ref", f"{npy}: float32[2, 150], expected (1, N) or (N,) integer learning ids"


@pytest.mark.parametrize("kind", ["missing", "count", "unknown_id", "npy_class", "npy_shape"])
def test_bad_weak_label_files_are_one_line_and_leave_nothing_partial(tiny_raw, tmp_path, kind):
  name, expected = bad_weak_input(tiny_raw, kind)
  out = tmp_path / "out"
  rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", tiny_raw, "--out_dir", out,
                    "--weak_labels", name, "--split", "train=00", "--shard_size", "1")
  assert rc == 1 and one_error_line(log).startswith(f"error: {expected}"), log
  assert_nothing_partial(out)
  assert sorted(shard_files(out)) == ["semantickitti-train.tfrecord-00000-of-00002"]
  assert not (out / "dataset_info.json").exists() and not (out / "stats.json").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--label_ratio", "0.01", "--weak_labels", "s"],
     "--label_ratio and --weak_labels exclude each other"),
    (["--protocol", "point", "--weak_labels", "s"], "--protocol and --weak_labels exclude"),
    ([], "--label_ratio is required (the fraction of points to label), unless --weak_labels"),
    (["--weak_labels", "s", "--dataset", "nuscenes"],
     "weak-label files live in sequences/NN/DIR/: SemanticKITTI-layout datasets only"),
    (["--label_ratio", "0.1", "--write_weak_labels", "labels"],
     "--write_weak_labels labels: that folder holds input data"),
    (["--label_ratio", "0.1", "--dataset", "custom"], "--dataset custom needs --dataset_config"),
    (["--label_ratio", "0.1", "--dataset_config", "x.yaml"],
     "--dataset_config describes a custom dataset: use it with --dataset custom"),
])
def test_bad_flags_exit_2(tmp_path, argv, expected):
  rc, log = run_cli("--dataset", "semantickitti", "--raw_dir", tmp_path, "--out_dir",
                    tmp_path / "out", *argv)
  assert rc == 2 and one_error_line(log).startswith(f"error: {expected}"), log
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- descriptions
@pytest.mark.parametrize("name", datasets.NAMES)
def test_built_in_descriptions_round_trip_through_json(name):
  info = datasets.get_info(name)
  back = dataset_config.from_dict(json.loads(json.dumps(dataset_config.to_dict(info))), "x",
                                  allow_builtin_names=True)
  for field in ("name", "class_names", "splits", "point_format", "label_format", "height",
                "width", "fov_up", "fov_down", "fov_left", "fov_right"):
    assert getattr(back, field) == getattr(info, field), field
  for field in ("learning_map", "learning_map_inv", "ignore", "colors_rgb", "mean", "std",
                "raw_known"):
    np.testing.assert_array_equal(getattr(back, field), getattr(info, field), err_msg=field)
    assert getattr(back, field).dtype == getattr(info, field).dtype, field


SENSOR = {"height": 32, "width": 512, "fov_up": 10.0, "fov_down": -30.0}
# Raw ids: 10 / 11 vehicle, 40 ground, 50 building, 1 noise (ignored).
ROOFTOP = {
    "name": "rooftop", "class_names": ["unlabeled", "vehicle", "ground", "building"],
    "learning_map": {0: 0, 1: 0, 10: 1, 11: 1, 40: 2, 50: 3},
    "learning_map_inv": {0: 0, 1: 10, 2: 40, 3: 50},
    "colors": [[0, 0, 0], [245, 150, 100], [255, 0, 255], [255, 200, 0]],
    "sensor": dict(SENSOR), "point_format": "npy", "label_format": "npy",
    "splits": {"train": [0], "val": [1]}}


def yaml_file(tmp_path: pathlib.Path, description: dict, name: str = "rooftop.yaml"
              ) -> pathlib.Path:
  path = tmp_path / name
  path.write_text(yaml.safe_dump(description, sort_keys=False))
  return path


def test_the_yaml_describes_the_dataset(tmp_path):
  info = dataset_config.load(yaml_file(tmp_path, {**ROOFTOP, "ignore": ["building"]}))
  assert info.name == "rooftop" and info.num_classes == 4
  assert info.learning_map.tolist() == [0, 0] + [0] * 8 + [1, 1] + [0] * 28 + [2] + [0] * 9 + [3]
  assert info.learning_map_inv.tolist() == [0, 10, 40, 50]
  assert info.ignore.tolist() == [True, False, False, True]
  assert info.geometry == {**SENSOR, "fov_left": -180.0, "fov_right": 180.0}
  assert info.splits == {"train": ("00",), "val": ("01",)}
  assert np.isnan(info.mean).all() and np.isnan(info.std).all()
  assert (info.point_format, info.label_format) == ("npy", "npy")
  assert tuple(info.colors_rgb[3]) == (255, 200, 0)


def test_the_documented_example_is_a_valid_description():
  text = (REPO / "docs" / "bring_your_own.md").read_text()
  (block,) = [part.split("```")[0] for part in text.split("```yaml\n")[1:]]
  info = dataset_config.from_dict(yaml.safe_load(block), "docs/bring_your_own.md")
  assert info.name == "rooftop" and info.class_names[5] == "vegetation"
  assert (info.height, info.width, info.fov_up, info.fov_down) == (32, 1024, 22.5, -22.5)
  np.testing.assert_array_equal(info.learning_map[info.learning_map_inv], np.arange(6))
  assert info.splits["val"] == ("03",) and not np.isnan(info.mean).any()


def test_scribblekitti_config_changes_only_what_its_docstring_names():
  from configs import default  # pylint: disable=g-import-not-at-top
  from configs import scribblekitti_salsanext  # pylint: disable=g-import-not-at-top

  def flat(config, prefix=""):
    out = {}
    for key, value in config.items():
      out.update(flat(value, f"{prefix}{key}.") if hasattr(value, "items") else
                 {f"{prefix}{key}": value})
    return out

  base, scribble = flat(default.get_config()), flat(scribblekitti_salsanext.get_config())
  changed = sorted(k for k in base if base[k] != scribble[k])
  assert changed == ["contrast.warmup_epochs", "max_labeled_pixels"]
  for key in changed:
    assert f"`{key}`" in scribblekitti_salsanext.__doc__


def _without(d: dict, key: str) -> dict:
  return {k: v for k, v in d.items() if k != key}


BAD_YAML = {
    "missing_key": ({**ROOFTOP, "sensor": _without(SENSOR, "height")},
                    "sensor.height: missing"),
    "missing_top_key": (_without(ROOFTOP, "learning_map_inv"), "learning_map_inv: missing"),
    "unknown_field": ({**ROOFTOP, "sensr": {}}, "sensr: unknown field (known: class_names,"),
    "unknown_sensor_field": ({**ROOFTOP, "sensor": {**SENSOR, "fov": 3}},
                             "sensor.fov: unknown field"),
    "color_count": ({**ROOFTOP, "colors": ROOFTOP["colors"][:3]},
                    "colors: 3 entries, but class_names has 4 classes"),
    "inverse_count": ({**ROOFTOP, "learning_map_inv": {0: 0, 1: 10, 2: 40}},
                      "learning_map_inv: 3 entries"),
    "learning_id_too_big": ({**ROOFTOP, "learning_map": {**ROOFTOP["learning_map"], 60: 4}},
                            "learning_map.60: learning id 4, but class_names has 4 classes"),
    "inverse_not_back": ({**ROOFTOP, "learning_map_inv": {0: 0, 1: 40, 2: 40, 3: 50}},
                         "learning_map_inv.1: raw id 40 maps to 2 in learning_map, not back"),
    "builtin_name": ({**ROOFTOP, "name": "semantickitti"},
                     "name: 'semantickitti' is a built-in dataset"),
    "bad_format": ({**ROOFTOP, "point_format": "pcd"}, "point_format: 'pcd' is not one of bin"),
    "fov": ({**ROOFTOP, "sensor": {**SENSOR, "fov_up": -40}},
            "sensor.fov_up: -40.0 must be above fov_down -30.0"),
    "mean_length": ({**ROOFTOP, "sensor": {**SENSOR, "mean": [1, 2]}},
                    "sensor.mean: expected 5 numbers"),
}


@pytest.mark.parametrize("kind", sorted(BAD_YAML))
def test_bad_yaml_is_one_line_naming_the_key(tmp_path, kind):
  description, expected = BAD_YAML[kind]
  path = yaml_file(tmp_path, description)
  rc, log = run_cli("--dataset", "custom", "--dataset_config", path, "--raw_dir", tmp_path,
                    "--out_dir", tmp_path / "out", "--label_ratio", "0.1")
  assert rc == 1 and one_error_line(log).startswith(f"error: {path}: {expected}"), log
  assert not (tmp_path / "out").exists()


def test_unreadable_yaml_files(tmp_path):
  broken = tmp_path / "broken.yaml"
  broken.write_text("name: [unclosed\n")
  for path, expected in ((broken, "not valid YAML (line 2)"),
                         (tmp_path / "absent.yaml", "cannot read the dataset description")):
    rc, log = run_cli("--dataset", "custom", "--dataset_config", path, "--raw_dir", tmp_path,
                      "--out_dir", tmp_path / "out", "--label_ratio", "0.1")
    assert rc == 1 and one_error_line(log).startswith(f"error: {path}: {expected}"), log


# ----------------------------------------------------------------------------- custom sensor
def rooftop_scan(rng, keep_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
  """Points (N, 4) float32 through random pixels of the 32 x 512 sensor, raw ids (N,) int64:
  ground below row 20, else vehicles and buildings in column blocks, each at its own range."""
  rows, cols = np.meshgrid(np.arange(32), np.arange(512), indexing="ij")
  hit = rng.random(rows.shape) < keep_fraction
  rows, cols = rows[hit], cols[hit]
  pitch = np.deg2rad(10.0 - (rows + rng.uniform(0.2, 0.8, rows.shape)) / 32 * 40.0)
  yaw = np.deg2rad((cols + rng.uniform(0.2, 0.8, cols.shape)) / 512 * 360.0 - 180.0)
  kind = np.where(rows >= 20, 2, np.where((cols // 32 + rng.integers(2)) % 2 == 0, 1, 3))
  depth = np.choose(kind - 1, [6.0, 12.0, 20.0]) + rng.normal(0, 0.5, kind.shape)
  xyz = depth[:, None] * np.stack([np.cos(pitch) * np.cos(-yaw), np.cos(pitch) * np.sin(-yaw),
                                   np.sin(pitch)], -1)
  remission = np.choose(kind - 1, [0.2, 0.5, 0.8]) + rng.normal(0, 0.03, kind.shape)
  raw = np.choose(kind - 1, [10, 40, 50]).astype(np.int64)
  raw[(kind == 1) & (rng.random(kind.shape) < 0.3)] = 11
  raw[rng.random(kind.shape) < 0.02] = 1  # Noise: the ignore class.
  return np.concatenate([xyz, remission[:, None]], 1).astype(np.float32), raw


def write_rooftop_tree(raw: pathlib.Path, layout: dict[str, tuple[int, bool]]) -> None:
  """sequence -> (scans, labeled): velodyne/*.npy points, labels/*.npy raw ids."""
  rng = np.random.default_rng(7)
  for seq, (count, labeled) in layout.items():
    for sub in ("velodyne",) + (("labels",) if labeled else ()):
      (raw / "sequences" / seq / sub).mkdir(parents=True)
    for i in range(count):
      points, labels = rooftop_scan(rng)
      np.save(raw / "sequences" / seq / "velodyne" / f"{i:06d}.npy", points)
      if labeled:
        np.save(raw / "sequences" / seq / "labels" / f"{i:06d}.npy", labels)


def test_custom_dataset_with_weak_label_files_in_worker_processes(tmp_path):
  """The description travels to spawned workers; a changed description is another conversion."""
  raw = tmp_path / "raw"
  write_rooftop_tree(raw, {"00": (3, True)})
  rng = np.random.default_rng(6)
  given = {}
  for i in range(3):
    labels = np.load(raw / "sequences" / "00" / "labels" / f"{i:06d}.npy")
    given[f"{i:06d}"] = np.where(rng.random(len(labels)) < 0.1, labels, 0).astype(np.uint32)
  write_weak_files(raw, "00", "scribbles", given)
  config = yaml_file(tmp_path, ROOFTOP)
  args = ("--dataset", "custom", "--dataset_config", config, "--raw_dir", raw, "--weak_labels",
          "scribbles", "--split", "train=00", "--shard_size", "2")
  assert run_cli(*args, "--out_dir", tmp_path / "one")[0] == 0
  rc, log = run_cli(*args, "--out_dir", tmp_path / "two", "--workers", "2")
  assert rc == 0, log
  assert shard_files(tmp_path / "two") == shard_files(tmp_path / "one")
  info = dataset_config.load(config)
  for e, frame in zip(load_split(tmp_path / "one", "train"), sorted(given)):
    np.testing.assert_array_equal(e["point_weak_label"], info.learning_map[given[frame]])
  yaml_file(tmp_path, {**ROOFTOP, "colors": [[1, 2, 3]] * 4})
  rc, log = run_cli(*args, "--out_dir", tmp_path / "one")
  assert rc == 1 and "holds a conversion with other settings or inputs (dataset_description" \
      in one_error_line(log)


@pytest.fixture(scope="module")
def rooftop_run(tmp_path_factory):
  """A converted, trained custom sensor: (raw tree, yaml, data dir, workdir, results)."""
  base = tmp_path_factory.mktemp("rooftop")
  raw = base / "raw"
  write_rooftop_tree(raw, {"00": (4, True), "01": (4, True), "02": (1, False)})
  config_path = yaml_file(base, ROOFTOP)
  rc, log = run_cli("--dataset", "custom", "--dataset_config", config_path, "--raw_dir", raw,
                    "--out_dir", base / "tfds", "--label_ratio", "0.05", "--protocol", "point")
  assert rc == 0, log
  # No training diagnostics (test_train checks them): their program would double the compile.
  config = tiny_data.tiny_config(str(base / "tfds"), dataset="rooftop", num_train_steps=8,
                                 num_epochs=8, eval_every_steps=8, checkpoint_every_steps=8,
                                 max_points=32 * 512, max_labeled_pixels=512,
                                 train_crop_width=128, normalization="reference",
                                 **{"optimizer.lr": 0.05, "contrast.diagnostics": False})
  config.eval.num_pictures = 0
  results = train.train_and_evaluate(config, str(base / "work"))
  return raw, config_path, base / "tfds", base / "work", results


def test_custom_sensor_trains_on_its_own_geometry(rooftop_run):
  _, _, data_dir, workdir, results = rooftop_run
  stats = json.loads((data_dir / "stats.json").read_text())
  assert (stats["dataset"], stats["height"], stats["width"]) == ("rooftop", 32, 512)
  assert results["dataset"] == "rooftop" and results["step"] == 8
  assert sorted(results["per_class_iou"]) == ["building", "ground", "vehicle"]
  data_info = json.loads((workdir / "data_info.json").read_text())
  assert data_info["geometry"] == {**SENSOR, "fov_left": -180.0, "fov_right": 180.0}
  assert data_info["dataset_description"]["class_names"] == ROOFTOP["class_names"]
  # No mean/std in the YAML: the reference normalization falls back to the data's statistics.
  np.testing.assert_allclose(data_info["mean"], stats["splits"]["train"]["mean"], rtol=1e-6)


def test_custom_sensor_predicts_and_evaluates(rooftop_run, tmp_path):
  raw, config_path, _, workdir, results = rooftop_run
  predictor = inference.load_predictor(str(workdir))
  assert predictor.info.name == "rooftop" and predictor.info.class_names[3] == "building"
  out = tmp_path / "pred"
  common = ["--workdir", str(workdir), "--raw_dir", str(raw), "--out_dir", str(out)]
  assert predict.main(common + ["--split", "val", "--batch_size", "2"]) == 0
  assert predict.main(common + ["--sequences", "02"]) == 0  # An unlabeled folder.
  unlabeled = np.fromfile(out / "sequences" / "02" / "predictions" / "000000.label", "<u4")
  assert len(unlabeled) == len(np.load(raw / "sequences" / "02" / "velodyne" / "000000.npy"))
  assert set(np.unique(unlabeled)) <= {10, 40, 50}  # Raw ids through learning_map_inv.
  official = tmp_path / "official.json"
  assert evaluate.main(["--dataset", "custom", "--dataset_config", str(config_path),
                        "--raw_dir", str(raw), "--pred_dir", str(out), "--split", "val",
                        "--json", str(official)]) == 0
  from_files = json.loads(official.read_text())
  assert from_files["dataset"] == "rooftop" and from_files["num_scans"] == 4
  # The files score what the training-time evaluation scored, up to argmax near-ties between
  # the batched SPMD evaluation and the one-device predictor.
  # Training drops ignored ground truth (row 0) before counting; the official evaluation after.
  conf_files = np.asarray(from_files["confusion_matrix"])[1:]
  conf_train = np.asarray(results["confusion_matrix"])[1:]
  assert conf_files.sum() == conf_train.sum()
  assert (conf_files.sum(axis=0)[1:] > 0).sum() >= 2  # Not one class everywhere: a real check.
  assert np.abs(conf_files - conf_train).sum() <= 2e-3 * conf_train.sum()
  assert from_files["miou"] == pytest.approx(results["miou"], abs=2e-3)


def test_custom_dataset_errors_in_training_and_evaluation(rooftop_run, tmp_path):
  raw, config_path, data_dir, _, _ = rooftop_run
  config = tiny_data.tiny_config(str(data_dir))  # config.dataset is still 'synthetic'.
  with pytest.raises(train.TrainingError, match="holds 'rooftop' data, but config.dataset="
                     "'synthetic'; pass --config.dataset=rooftop"):
    train.dataset_info(config)
  argv = ["--raw_dir", str(raw), "--pred_dir", str(tmp_path)]
  assert evaluate.main(["--dataset", "custom"] + argv) == 2
  bad = yaml_file(tmp_path, {**ROOFTOP, "colors": []}, "bad.yaml")
  assert evaluate.main(["--dataset", "custom", "--dataset_config", str(bad)] + argv) == 1


def test_workdirs_from_before_descriptions_still_load():
  config = tiny_data.tiny_config("unused")
  assert inference._dataset_info(config, {}, "data_info.json") is datasets.get_info(
      "synthetic")
