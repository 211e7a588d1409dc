"""Per-dataset facts: sizes, label maps and their inverses, colors, splits, map_labels."""
import numpy as np
import pytest

from coarse3d_jax.data import datasets
from coarse3d_jax.data import errors

NUM_CLASSES = {"semantickitti": 20, "semanticposs": 14, "nuscenes": 17, "synthetic": 20}


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_shapes_dtypes_and_inverse_map(name):
  info = datasets.get_info(name)
  c = NUM_CLASSES[name]
  assert info.num_classes == c == len(info.class_names)
  assert info.learning_map.dtype == np.uint8
  assert len(info.learning_map) == len(info.raw_known) == np.flatnonzero(info.raw_known).max() + 1
  assert info.learning_map.max() == c - 1
  assert info.learning_map_inv.shape == (c,)
  # The inverse map lands on a raw id of the same class, for every class but ignore.
  np.testing.assert_array_equal(info.learning_map[info.learning_map_inv[1:]], np.arange(1, c))
  assert info.learning_map_inv[0] == 0 and info.learning_map[0] == 0
  if name != "synthetic":
    np.testing.assert_array_equal(info.ignore, np.arange(c) == 0)
  assert info.colors_rgb.shape == (c, 3) and info.colors_rgb.dtype == np.uint8
  assert info.mean.shape == info.std.shape == (5,) and (info.std > 0).all()
  assert info.fov_left == -180.0 and info.fov_right == 180.0
  with pytest.raises(ValueError):
    info.learning_map[0] = 1  # Read-only: shared by every user of the module.


def test_semantickitti_facts():
  info = datasets.get_info("semantickitti")
  lut = info.learning_map
  assert info.class_names[1] == "car" and info.class_names[19] == "traffic-sign"
  assert lut[10] == lut[252] == 1          # moving-car -> car
  assert lut[60] == lut[40] == 9           # lane-marking -> road
  assert lut[13] == lut[16] == lut[20] == lut[256] == lut[257] == lut[259] == 5
  assert lut[1] == lut[52] == lut[99] == 0
  assert lut[254] == 6 and lut[253] == 7 and lut[255] == 8 and lut[258] == 4
  assert tuple(info.colors_rgb[1]) == (100, 150, 245)    # car: BGR (245, 150, 100)
  assert tuple(info.colors_rgb[15]) == (0, 175, 0)       # vegetation
  assert (info.height, info.width, info.fov_up, info.fov_down) == (64, 2048, 3.0, -25.0)
  assert info.splits["val"] == ("08",) and "08" not in info.splits["train"]
  assert len(info.splits["train"]) == 10 and info.splits["test"][0] == "11"
  np.testing.assert_allclose(info.mean, [12.12, 10.88, 0.23, -1.04, 0.21], rtol=1e-6)


def test_synthetic_is_kitti_with_its_own_splits():
  kitti, synth = datasets.get_info("semantickitti"), datasets.get_info("synthetic")
  assert synth.class_names == kitti.class_names
  np.testing.assert_array_equal(synth.learning_map, kitti.learning_map)
  np.testing.assert_array_equal(synth.colors_rgb, kitti.colors_rgb)
  assert synth.geometry == kitti.geometry
  assert synth.splits == {"train": ("00", "01", "02", "03"), "val": ("04",)}
  # The classes its streets never hold are out of its metric, like 'unlabeled'.
  ignored = [synth.class_names[c] for c in np.flatnonzero(synth.ignore)]
  assert ignored == ["unlabeled", "motorcycle", "other-vehicle", "bicyclist", "motorcyclist",
                     "other-ground"]


def test_semanticposs_facts():
  info = datasets.get_info("semanticposs")
  lut = info.learning_map
  assert lut[4] == lut[5] == 1             # 1 person, 2+ people -> people
  assert lut[10] == lut[11] == lut[12] == 6  # three sign kinds -> traffic-sign
  assert lut[21] == 12 and lut[22] == 13 and lut[17] == 11
  assert info.class_names[13] == "road"
  assert tuple(info.colors_rgb[3]) == (245, 150, 100)    # car: BGR (100, 150, 245)
  assert (info.height, info.width, info.fov_up, info.fov_down) == (40, 1800, 15.0, -25.0)
  assert info.splits == {"train": ("00", "01", "03", "04", "05"), "val": ("02",)}


def test_nuscenes_general_to_challenge_mapping():
  info = datasets.get_info("nuscenes")
  general = {name: i for i, name in enumerate(datasets.NUSCENES_GENERAL)}
  assert len(general) == 32
  challenge = {name: i for i, name in enumerate(info.class_names)}
  expect = {"human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
            "human.pedestrian.police_officer": "pedestrian",
            "human.pedestrian.construction_worker": "pedestrian",
            "human.pedestrian.stroller": "ignore", "human.pedestrian.wheelchair": "ignore",
            "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus",
            "vehicle.emergency.police": "ignore", "vehicle.ego": "ignore", "noise": "ignore",
            "movable_object.trafficcone": "traffic_cone", "static.other": "ignore",
            "flat.driveable_surface": "driveable_surface", "static.vegetation": "vegetation"}
  for name, target in expect.items():
    assert info.learning_map[general[name]] == challenge[target], name
  # Each of the 16 challenge classes receives at least one general class.
  assert set(info.learning_map.tolist()) == set(range(17))
  assert tuple(info.colors_rgb[4]) == (255, 158, 0)      # car (devkit colors are RGB)
  assert (info.height, info.width, info.fov_up, info.fov_down) == (64, 2048, 15.0, -35.0)


def test_get_info_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match="semantickitti.*semanticposs.*nuscenes.*synthetic"):
    datasets.get_info("kitti360")


def test_map_labels():
  info = datasets.get_info("semantickitti")
  raw = np.array([0, 10, 252, 40, 60, 81], np.uint32)
  mapped = datasets.map_labels(info, raw)
  assert mapped.dtype == np.uint8
  np.testing.assert_array_equal(mapped, [0, 1, 1, 9, 9, 19])
  assert datasets.map_labels(info, np.zeros(0, np.uint32)).shape == (0,)


@pytest.mark.parametrize("bad", [2, 100, 260, 65535])
def test_map_labels_rejects_unknown_ids(bad):
  info = datasets.get_info("semantickitti")
  with pytest.raises(datasets.UnknownLabelError, match=rf"scan.label: .*\[{bad}\]"):
    datasets.map_labels(info, np.array([10, bad, 40], np.uint32), source="scan.label")
  assert issubclass(datasets.UnknownLabelError, errors.DataError)
