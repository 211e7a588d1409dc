"""Weak-label protocols: budget, propagation, first-point voxel label, reproducibility."""
import os
import subprocess
import sys

import numpy as np
import pytest

from coarse3d_jax.data import datasets
from coarse3d_jax.data import weak_labels


def test_num_to_label_rounds_half_to_even_with_a_minimum_of_one():
  assert weak_labels.num_to_label(124668, 0.001) == 125
  assert weak_labels.num_to_label(100, 0.001) == 1
  assert weak_labels.num_to_label(2500, 0.001) == 2    # 2.5 -> 2
  assert weak_labels.num_to_label(3500, 0.001) == 4    # 3.5 -> 4
  assert weak_labels.num_to_label(0, 0.5) == 1


def test_voxel_index_matches_open3d_grid_definition():
  rng = np.random.default_rng(1)
  xyz = rng.uniform(-3, 3, (2000, 3)).astype(np.float32)
  voxel = 0.5
  first, inverse = weak_labels.voxel_index(xyz, voxel)
  # Open3D: origin = min bound - voxel / 2, index = floor((p - origin) / voxel).
  cells = np.floor((xyz.astype(np.float64) - (xyz.min(0) - voxel / 2)) / voxel).astype(int)
  _, ref_first, ref_inverse = np.unique(cells, axis=0, return_index=True, return_inverse=True)
  np.testing.assert_array_equal(np.sort(first), np.sort(ref_first))
  # Same partition: voxel ids may be numbered differently, but map one-to-one.
  pairs = np.unique(np.stack([inverse, ref_inverse.reshape(-1)], 1), axis=0)
  assert len(pairs) == len(first) == len(np.unique(inverse))
  assert (first == np.array([np.flatnonzero(inverse == v)[0] for v in range(len(first))])).all()


def clustered_cloud():
  """Six voxels of 0.06 m with 4 points each, interleaved in the file: point j of every voxel,
  then point j + 1. Returns xyz (24, 3), labels (24,) and a (6, 4) view helper."""
  centers = np.array([[0.03, 0.03, 0.03], [1.03, 0.03, 0.03], [2.03, 0.03, 0.03],
                      [0.03, 1.03, 0.03], [0.03, 2.03, 0.03], [0.03, 0.03, 1.03]])
  offsets = np.array([[0, 0, 0], [0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.01]])
  xyz = (centers[None] + offsets[:, None]).reshape(-1, 3)
  per_voxel = np.array([[3, 3, 0, 5],    # first point labeled 3: propagates to all four
                        [0, 7, 7, 7],    # first point unlabeled: never drawn
                        [9, 9, 9, 9], [4, 4, 4, 4], [0, 0, 0, 0], [2, 2, 6, 2]], np.uint8)
  labels = per_voxel.T.reshape(-1)
  return xyz, labels, lambda flat: flat.reshape(4, 6).T


def test_voxel_protocol_propagates_the_first_point_label():
  xyz, labels, by_voxel = clustered_cloud()
  drawn_voxels = set()
  for seed in range(40):
    weak = weak_labels.voxel_weak_labels(xyz, labels, 3 / 24, 0.06,
                                         np.random.default_rng(seed))
    per_voxel = by_voxel(weak)
    drawn = np.flatnonzero(per_voxel.any(axis=1))
    assert len(drawn) == 3  # round(24 * 3/24) = 3 voxels among the 4 eligible ones.
    assert not {1, 4} & set(drawn)  # unlabeled first point / unlabeled voxel.
    for v in drawn:
      assert (per_voxel[v] == by_voxel(labels)[v, 0]).all()
    drawn_voxels |= set(drawn)
  assert drawn_voxels == {0, 2, 3, 5}


def test_voxel_protocol_takes_all_eligible_voxels_when_the_budget_exceeds_them():
  xyz, labels, by_voxel = clustered_cloud()
  weak = weak_labels.voxel_weak_labels(xyz, labels, 0.9, 0.06, np.random.default_rng(0))
  assert (by_voxel(weak).any(1) == [True, False, True, True, False, True]).all()
  none = weak_labels.voxel_weak_labels(xyz, np.zeros_like(labels), 0.5, 0.06,
                                       np.random.default_rng(0))
  assert not none.any()


def test_ratio_one_keeps_every_label():
  xyz, labels, _ = clustered_cloud()
  for protocol in weak_labels.PROTOCOLS:
    weak = weak_labels.weak_labels(protocol, xyz, labels, 1.0, 0.06, np.random.default_rng(0))
    np.testing.assert_array_equal(weak, labels)


def test_point_protocol_labels_exactly_the_budget_of_labeled_points():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 5, 5000).astype(np.uint8)
  weak = weak_labels.point_weak_labels(labels, 0.01, np.random.default_rng(0))
  chosen = weak > 0
  assert chosen.sum() == 50
  np.testing.assert_array_equal(weak[chosen], labels[chosen])


def test_real_scan_budget_and_fraction(sample_dir):
  info = datasets.get_info("semantickitti")
  seq = sample_dir / "sequences" / "00"
  points = np.fromfile(seq / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
  labels = datasets.map_labels(info, np.fromfile(seq / "labels" / "000000.label", "<u4") & 0xFFFF)
  rng = weak_labels.scan_rng(0, "semantickitti", "00/000000")
  weak = weak_labels.voxel_weak_labels(points[:, :3], labels, 0.001, 0.06, rng)
  _, inverse = weak_labels.voxel_index(points[:, :3], 0.06)
  assert len(np.unique(inverse[weak > 0])) == weak_labels.num_to_label(len(points), 0.001)
  assert 0.001 <= (weak > 0).mean() <= 0.002
  # Propagation gives every point of a drawn voxel the voxel's label, which is nearly always
  # the point's own label on real data.
  assert (weak[weak > 0] == labels[weak > 0]).mean() > 0.95


def test_draw_is_a_pure_function_of_seed_dataset_and_scan_id():
  xyz = np.random.default_rng(0).uniform(-20, 20, (3000, 3))
  labels = np.random.default_rng(1).integers(1, 10, 3000).astype(np.uint8)
  draw = lambda seed, dataset, scan: weak_labels.voxel_weak_labels(
      xyz, labels, 0.01, 0.06, weak_labels.scan_rng(seed, dataset, scan))
  np.testing.assert_array_equal(draw(0, "semantickitti", "00/000001"),
                                draw(0, "semantickitti", "00/000001"))
  assert (draw(0, "semantickitti", "00/000001") != draw(0, "semantickitti", "00/000002")).any()
  assert (draw(0, "semantickitti", "00/000001") != draw(1, "semantickitti", "00/000001")).any()
  assert (draw(0, "semantickitti", "00/000001") != draw(0, "semanticposs", "00/000001")).any()


def test_scan_rng_does_not_depend_on_python_hash_randomization():
  code = ("from coarse3d_jax.data import weak_labels;"
          "print(weak_labels.scan_rng(7, 'nuscenes', 'abc').integers(1 << 62))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  outputs = {subprocess.run([sys.executable, "-c", code], cwd=root, check=True, text=True,
                            capture_output=True, env={**os.environ, "PYTHONHASHSEED": h}
                            ).stdout for h in ("1", "2")}
  assert len(outputs) == 1
  assert str(weak_labels.scan_rng(7, "nuscenes", "abc").integers(1 << 62)) + "\n" in outputs


def test_unknown_protocol():
  with pytest.raises(ValueError, match="unknown protocol"):
    weak_labels.weak_labels("grid", np.zeros((1, 3)), np.ones(1, np.uint8), 0.1, 0.06,
                            np.random.default_rng(0))
