"""Tests of coarse3d_jax.losses: values and gradients against numpy float64 formulas."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from coarse3d_jax import losses

AXIS = "data"


# ----------------------------------------------------------------------------- numpy references
def np_focal(probs, labels, alpha, gamma=2.0, mask=None):
  p = probs[np.arange(len(labels)), labels]
  loss = -alpha[labels] * (1 - p) ** gamma * np.log(np.maximum(p, 1e-6))
  if mask is None:
    return loss.mean()
  return (loss * mask).sum() / mask.sum() if mask.sum() else 0.0


def np_lovasz_grad(gt_sorted):
  gts = gt_sorted.sum()
  jaccard = 1 - (gts - np.cumsum(gt_sorted)) / (gts + np.cumsum(1 - gt_sorted))
  jaccard[1:] = jaccard[1:] - jaccard[:-1]
  return jaccard


def np_lovasz(probs, labels, ignore=0, mask=None):
  """Berman et al. lovasz_softmax_flat on the kept pixels, classes='present'."""
  keep = np.ones(len(labels), bool) if ignore is None else labels != ignore
  if mask is not None:
    keep &= mask
  probs, labels = probs[keep], labels[keep]
  per_class = []
  for c in range(probs.shape[1]):
    fg = (labels == c).astype(np.float64)
    if fg.sum() == 0:
      continue
    errors = np.abs(fg - probs[:, c])
    order = np.argsort(-errors, kind="stable")
    per_class.append(np.dot(errors[order], np_lovasz_grad(fg[order])))
  return float(np.mean(per_class)) if per_class else 0.0


def np_lse(x):
  m = x.max()
  return m + np.log(np.exp(x - m).sum())


def np_pix2proto(anchors, labels, valid, bank, tau, variant="seed"):
  num_classes = bank.shape[0]
  total, count = 0.0, 0
  for a, y, v in zip(anchors, labels, valid):
    if not v or not 0 < y < num_classes:
      continue
    logits = np.einsum("d,cmd->cm", a, bank) / tau
    if variant == "seed":
      total += np_lse(logits[1:].ravel()) - np_lse(logits[y])
    else:
      neg = np.concatenate([logits[c] for c in range(1, num_classes) if c != y])
      log_prob = [l - np_lse(np.concatenate([[l], neg])) for l in logits[y]]
      total += -(tau / 0.07) * np.mean(log_prob)
    count += 1
  return total / count if count else 0.0


def finite_difference(fn, x, h=1e-6):
  grad = np.zeros_like(x)
  for i in np.ndindex(*x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    grad[i] = (fn(up) - fn(down)) / (2 * h)
  return grad


def random_probs(rng, n, c):
  logits = rng.normal(size=(n, c)) * 2
  return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


# ----------------------------------------------------------------------------- focal
def test_focal_alpha_reference_formula():
  # The reference's 0.1% SemanticKITTI class-count table.
  counts = np.array([0, 1877, 9, 10, 80, 130, 22, 23, 2, 7809, 542, 5425, 205, 7718, 2856,
                     15575, 334, 4564, 148, 38], np.float64)
  log_w = np.log(1 + 1 / (counts / counts.sum() + 1e-3))
  log_w[0] = 0
  expected = log_w / log_w.max()
  alpha = np.asarray(losses.focal_alpha(counts))
  assert alpha.dtype == np.float32 and alpha[0] == 0 and alpha.max() == pytest.approx(1)
  np.testing.assert_allclose(alpha, expected, rtol=1e-6)
  # Class 0's count never matters; a zero-count class gets w = 1000, the max.
  np.testing.assert_allclose(losses.focal_alpha(np.where(np.arange(20) == 0, 1e6, counts)),
                             alpha, rtol=1e-6)
  zero = counts.copy()
  zero[4] = 0
  alpha_zero = np.asarray(losses.focal_alpha(zero))
  assert alpha_zero[4] == pytest.approx(1)
  assert np.all(np.isfinite(losses.focal_alpha(np.zeros(5))))


def test_focal_hand_case():
  probs = np.array([[0.5, 0.5], [0.1, 0.9]], np.float32)
  alpha = np.array([0.0, 0.5], np.float32)
  # Pixel 0: -0.5 * 0.5^2 * log 0.5; pixel 1 has label 0 and alpha_0 = 0.
  expected = 0.5 * 0.25 * math.log(2) / 2
  assert float(losses.focal_loss(probs, np.array([1, 0]), alpha)) == pytest.approx(expected,
                                                                                  rel=1e-6)


@pytest.mark.parametrize("use_mask", [False, True])
def test_focal_value_and_grad(use_mask):
  rng = np.random.default_rng(0)
  probs = random_probs(rng, 16, 4)
  probs[3, 2] = 1e-8  # Below the 1e-6 clamp: zero gradient there, as torch.clamp.
  labels = rng.integers(0, 4, 16)
  labels[3] = 2
  alpha = np.array([0, 0.3, 1.0, 0.7])
  mask = rng.random(16) < 0.7 if use_mask else None
  fn = jax.jit(lambda p: losses.focal_loss(p, labels, alpha, 2.0, mask))
  np.testing.assert_allclose(fn(probs.astype(np.float32)), np_focal(probs, labels, alpha, 2.0,
                                                                    mask), rtol=1e-5)
  grad = jax.grad(fn)(probs.astype(np.float32))
  fd = finite_difference(lambda p: np_focal(p, labels, alpha, 2.0, mask), probs, h=1e-9)
  np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5)


def test_focal_empty_mask():
  probs = random_probs(np.random.default_rng(1), 5, 3).astype(np.float32)
  fn = lambda p: losses.focal_loss(p, np.ones(5, int), np.ones(3), mask=np.zeros(5, bool))
  value, grad = jax.jit(jax.value_and_grad(fn))(probs)
  assert float(value) == 0 and np.all(np.asarray(grad) == 0)


# ----------------------------------------------------------------------------- lovasz
def test_lovasz_hand_case():
  probs = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)
  both = jax.jit(lambda p, y: jnp.stack([losses.lovasz_softmax(p, y, ignore=None),
                                         losses.lovasz_softmax(p, y, ignore=0)]))
  all_classes, ignoring_0 = np.asarray(both(probs, np.array([0, 1])))
  # Class 0: errors (0.2, 0.4), sorted grad (0.5, 0.5) -> 0.3; class 1: grad (1, 0) -> 0.4.
  assert all_classes == pytest.approx(0.35, rel=1e-6)
  # Ignoring pixel 0 leaves one pixel of class 1 with error 0.4 and Jaccard gradient 1.
  assert ignoring_0 == pytest.approx(0.4, rel=1e-6)


@pytest.mark.parametrize("ignore,use_mask", [(0, False), (0, True), (None, True)])
def test_lovasz_value_and_grad(ignore, use_mask):
  rng = np.random.default_rng(2)
  n, c = 24, 5
  probs = random_probs(rng, n, c)
  labels = rng.integers(0, c - 1, n)  # Class 4 absent: not 'present', excluded from the mean.
  mask = rng.random(n) < 0.75 if use_mask else None
  fn = jax.jit(lambda p: losses.lovasz_softmax(p, labels, ignore=ignore, mask=mask))
  expected = np_lovasz(probs, labels, ignore, mask)
  np.testing.assert_allclose(fn(probs.astype(np.float32)), expected, rtol=1e-5)
  grad = np.asarray(jax.grad(fn)(probs.astype(np.float32)))
  fd = finite_difference(lambda p: np_lovasz(p, labels, ignore, mask), probs, h=1e-7)
  np.testing.assert_allclose(grad, fd, atol=1e-5)
  dropped = (labels == ignore) if ignore is not None else np.zeros(n, bool)
  if mask is not None:
    dropped |= ~mask
  assert np.all(grad[dropped] == 0) and np.any(grad != 0)


def test_lovasz_no_valid_pixel():
  probs = random_probs(np.random.default_rng(3), 6, 3).astype(np.float32)
  fn = lambda p: losses.lovasz_softmax(p, np.zeros(6, int), ignore=0)
  value, grad = jax.jit(jax.value_and_grad(fn))(probs)
  assert float(value) == 0 and np.all(np.asarray(grad) == 0)


# ----------------------------------------------------------------------------- pix2proto
def hand_bank():
  # Class 0 sits exactly on the anchors: it would change the loss if it were not excluded.
  return np.array([[[1, 0], [0, -1]], [[1, 0], [0, 1]], [[-1, 0], [0, -1]]], np.float32)


pix2proto_jit = jax.jit(jax.value_and_grad(losses.pix2proto_loss),
                        static_argnames=("variant", "axis_name"))


def test_pix2proto_hand_case():
  anchors = np.array([[1, 0], [0, -1]], np.float32)
  labels, valid = np.array([1, 2]), np.ones(2, bool)
  loss = lambda tau, variant: float(pix2proto_jit(anchors, labels, valid, hand_bank(),
                                                  np.float32(tau), variant=variant)[0])
  e = math.e
  # Anchor 0: positives (1, 0) -> logits (1, 0); negatives (-1, 0) -> logits (-1, 0).
  # Anchor 1 (class 2): positives logits (0, 1), negatives (0, -1): the same value.
  seed = -math.log((e + 1) / (e + 1 + 1 / e + 1))
  assert loss(1.0, "seed") == pytest.approx(seed, rel=1e-5)
  seed_half = -math.log((e**2 + 1) / (e**2 + 1 + e**-2 + 1))
  assert loss(0.5, "seed") == pytest.approx(seed_half, rel=1e-5)
  supcon = -(1 / 0.07) * 0.5 * ((1 - math.log(e + 1 / e + 1)) + (0 - math.log(1 + 1 / e + 1)))
  assert loss(1.0, "supcon") == pytest.approx(supcon, rel=1e-5)


@pytest.mark.parametrize("variant", ["seed", "supcon"])
def test_pix2proto_value_and_grad(variant):
  rng = np.random.default_rng(4)
  num_classes, num_sub, dim, a = 5, 3, 4, 12
  bank = rng.normal(size=(num_classes, num_sub, dim))
  bank /= np.linalg.norm(bank, axis=-1, keepdims=True)
  anchors = rng.normal(size=(a, dim))
  anchors /= np.linalg.norm(anchors, axis=-1, keepdims=True)
  labels = rng.integers(0, num_classes, a)
  valid = rng.random(a) < 0.8
  fn = jax.jit(lambda x: losses.pix2proto_loss(x, labels, valid, bank.astype(np.float32), 0.07,
                                               variant))
  ref = lambda x: np_pix2proto(x, labels, valid, bank, 0.07, variant)
  np.testing.assert_allclose(fn(anchors.astype(np.float32)), ref(anchors), rtol=1e-5)
  grad = np.asarray(jax.grad(fn)(anchors.astype(np.float32)))
  np.testing.assert_allclose(grad, finite_difference(ref, anchors), rtol=1e-3, atol=1e-4)
  inactive = ~valid | (labels == 0)
  assert np.all(grad[inactive] == 0) and np.all(np.any(grad[~inactive] != 0, axis=-1))


@pytest.mark.parametrize("variant", ["seed", "supcon"])
def test_pix2proto_no_valid_anchor(variant):
  anchors = np.random.default_rng(5).normal(size=(6, 2)).astype(np.float32)
  for labels, valid in ((np.array([1, 2, 1, 2, 1, 2]), np.zeros(6, bool)),
                        (np.zeros(6, int), np.ones(6, bool))):
    value, grad = pix2proto_jit(anchors, labels, valid, hand_bank(), variant=variant)
    assert float(value) == 0 and np.all(np.asarray(grad) == 0)
  # One non-ignored class: no negatives, the loss is 0 (log 1), and finite.
  value, grad = pix2proto_jit(anchors, np.ones(6, int), np.ones(6, bool), hand_bank()[:2],
                              variant=variant)
  assert abs(float(value)) < 1e-6 and np.all(np.isfinite(grad))


def test_pix2proto_unknown_variant():
  with pytest.raises(ValueError, match="variant"):
    losses.pix2proto_loss(np.ones((1, 2)), np.ones(1, int), np.ones(1, bool), hand_bank(),
                          variant="infonce")


def test_pix2proto_multi_device_equals_single():
  mesh = Mesh(np.array(jax.devices()[:4]), (AXIS,))
  rng = np.random.default_rng(6)
  bank = rng.normal(size=(4, 3, 8)).astype(np.float32)
  bank /= np.linalg.norm(bank, axis=-1, keepdims=True)
  anchors = rng.normal(size=(32, 8)).astype(np.float32)
  labels = rng.integers(0, 4, 32)
  valid = rng.random(32) < 0.7
  valid[:8] = False  # Device 0 has no valid anchor.
  loss = functools.partial(losses.pix2proto_loss, temperature=0.1)

  def per_device(x, y, v, bank):
    return jax.value_and_grad(lambda x: loss(x, y, v, bank, axis_name=AXIS))(x)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(AXIS), P()),
                             out_specs=(P(), P(AXIS))))
  value, grad = fn(anchors, labels, valid, bank)
  value1, grad1 = pix2proto_jit(anchors, labels, valid, bank, np.float32(0.1))
  np.testing.assert_allclose(value, value1, rtol=1e-6)
  np.testing.assert_allclose(grad, grad1, rtol=1e-5, atol=1e-7)
