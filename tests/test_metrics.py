"""Confusion matrix and IoU against independent numpy computations of the official formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax import metrics


def _loop_confusion(pred, label, num_classes, mask):
  conf = np.zeros((num_classes, num_classes), np.int64)
  for p, l, m in zip(pred.reshape(-1), label.reshape(-1), mask.reshape(-1)):
    if m and 0 <= p < num_classes and 0 <= l < num_classes:
      conf[l, p] += 1
  return conf


def _official_kitti_iou(pred, label, num_classes, ignore):
  """semantic-kitti-api np_ioueval, from its formulas: conf[pred, gt], ignored gt columns zeroed,
  IoU = tp / (tp + fp + fn + 1e-15), mean over the included classes."""
  conf = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(conf, (pred.reshape(-1), label.reshape(-1)), 1)
  conf[:, ignore] = 0
  tp = np.diag(conf).astype(np.float64)
  fp = conf.sum(axis=1) - tp
  fn = conf.sum(axis=0) - tp
  iou = tp / (tp + fp + fn + 1e-15)
  include = [c for c in range(num_classes) if c not in ignore]
  return iou, iou[include].mean()


def test_confusion_matrix_jit_matches_loop():
  rng = np.random.default_rng(0)
  pred = rng.integers(0, 6, (3, 7, 11))
  label = rng.integers(0, 7, (3, 7, 11))  # 6 is out of range for C=6: never counted.
  mask = rng.random((3, 7, 11)) < 0.8
  conf = jax.jit(metrics.confusion_matrix, static_argnums=2)(pred, label, 6, mask)
  assert conf.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(conf), _loop_confusion(pred, label, 6, mask))
  np.testing.assert_array_equal(metrics.confusion_matrix_np(pred[mask], label[mask], 6),
                                _loop_confusion(pred, label, 6, mask))


def test_confusion_rows_are_ground_truth():
  conf = np.asarray(metrics.confusion_matrix(jnp.array([2]), jnp.array([1]), 3))
  assert conf[1, 2] == 1 and conf.sum() == 1


def test_iou_matches_official_kitti_evaluator():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 8, 5000)
  pred = np.where(rng.random(5000) < 0.6, label, rng.integers(0, 8, 5000))
  pred[label == 7] = 3  # Class 7 has ground truth but is never predicted.
  pred[pred == 6] = 5
  label[label == 6] = 5  # Class 6: neither ground truth nor prediction -> IoU 0, in the mean.
  conf = metrics.confusion_matrix_np(pred, label, 8)
  iou, miou = metrics.iou_from_confusion(conf, ignore=(0,))
  want_iou, want_miou = _official_kitti_iou(pred, label, 8, [0])
  assert np.isnan(iou[0])
  np.testing.assert_allclose(iou[1:], want_iou[1:], rtol=1e-12, atol=1e-15)
  assert iou[6] == 0.0 and iou[7] == 0.0
  assert miou == pytest.approx(want_miou, rel=1e-12)


def test_iou_hand_case_and_nuscenes_protocol():
  # rows = truth (0 ignore, 1, 2, 3), cols = prediction.
  conf = np.array([[9, 9, 9, 0],
                   [1, 6, 2, 0],
                   [0, 3, 4, 0],
                   [0, 0, 0, 0]])
  iou, miou = metrics.iou_from_confusion(conf)
  # Class 1: tp 6, fn 1 (pred ignore) + 2, fp 3 -> 6/12. Class 2: tp 4, fn 3, fp 2 -> 4/9.
  np.testing.assert_allclose(iou[1:], [6 / 12, 4 / 9, 0.0])
  assert miou == pytest.approx((6 / 12 + 4 / 9 + 0.0) / 3)
  iou, miou = metrics.iou_from_confusion(conf, protocol="nuscenes")
  # nuScenes drops ignored columns too: class 1 fn = 2 -> 6/11; absent class 3 is NaN, skipped.
  np.testing.assert_allclose(iou[1:3], [6 / 11, 4 / 9])
  assert np.isnan(iou[3]) and np.isnan(iou[0])
  assert miou == pytest.approx((6 / 11 + 4 / 9) / 2)
  assert metrics.accuracy_from_confusion(conf) == pytest.approx(10 / 16)


def test_iou_table_lists_classes_and_mean():
  iou = np.array([np.nan, 0.5, 0.25, 0.0])
  table = metrics.format_iou_table(iou, ("unlabeled", "car", "road", "pole"), 0.25,
                                      present=np.array([True, True, True, False]))
  lines = table.splitlines()
  assert not any(line.startswith("unlabeled") for line in lines)
  assert [line.split()[:2] for line in lines if line.startswith(("car", "road"))] == [
      ["car", "50.00"], ["road", "25.00"]]
  assert "(absent)" in next(line for line in lines if line.startswith("pole"))
  assert lines[-1].split() == ["mIoU", "25.00"]
