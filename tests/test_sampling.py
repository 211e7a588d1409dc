"""Tests of coarse3d_jax.sampling: formulas, exact quotas, and sampling distributions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax import sampling


def np_entropy(probs):
  return -np.sum(probs * np.log(probs + 1e-10), axis=-1)


def chi_square(counts, expected_probs):
  expected = expected_probs * counts.sum()
  return float(np.sum((counts - expected) ** 2 / expected))


def chi_square_bound(dof):
  # Mean dof, sd sqrt(2 dof): mean + 6 sd is far beyond any plausible fluctuation (p < 1e-6)
  # yet well below what a wrong distribution gives with tens of thousands of draws.
  return dof + 6 * math.sqrt(2 * dof)


def probs_with_entropy(rng, n, c, peak_class):
  """(n, c) probabilities predicting `peak_class` with varied confidence (varied entropy)."""
  logits = rng.normal(size=(n, c)) * 0.3
  logits[np.arange(n), peak_class] += rng.uniform(0.5, 6, n)
  return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def test_entropy_and_anchor_weights():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(6), size=(3, 7))
  probs[0, 0] = np.eye(6)[2]  # Zero probabilities: finite entropy (0).
  h = np.asarray(sampling.entropy(probs.astype(np.float32)))
  np.testing.assert_allclose(h, np_entropy(probs), rtol=1e-5, atol=1e-6)
  assert abs(h[0, 0]) < 1e-6
  np.testing.assert_allclose(sampling.anchor_weights(probs.astype(np.float32)),
                             np.exp(-np_entropy(probs) ** 2), rtol=1e-5)


def test_select_ratio():
  assert sampling.select_ratio(0, 100) == pytest.approx(0.5 * math.log2(1.01))
  assert sampling.select_ratio(99, 100) == pytest.approx(0.5)
  traced = jax.jit(lambda e: sampling.select_ratio(e, 100))(jnp.int32(49))
  assert float(traced) == pytest.approx(0.5 * math.log2(1.5), rel=1e-6)


def test_pseudo_labels_quotas_and_override():
  rng = np.random.default_rng(1)
  b, n, c = 2, 300, 6
  probs = rng.dirichlet(np.ones(c) * 0.5, size=(b, n)).astype(np.float32)
  valid = rng.random((b, n)) < 0.9
  weak = np.zeros((b, n), np.int32)
  # Weak labels on invalid pixels (never candidates) so the quotas are observable exactly;
  # scan 0 has classes {1, 3}, scan 1 has {2, 3, 5}; one weak label on a valid pixel.
  for scan, classes in ((0, (1, 3)), (1, (2, 3, 5))):
    spots = np.nonzero(~valid[scan])[0]
    weak[scan, spots[:len(classes)]] = classes
  weak[1, np.nonzero(valid[1])[0][0]] = 4  # Class 4 present in scan 1 too (one pixel).
  ratio = 0.3
  out = np.asarray(jax.jit(sampling.select_pseudo_labels)(jax.random.PRNGKey(0), probs, weak,
                                                           valid, ratio))
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out[weak > 0], weak[weak > 0])  # Weak labels override.
  pred = probs[..., 1:].argmax(-1) + 1
  pseudo = (out > 0) & (weak == 0)
  assert np.all(out[pseudo] == pred[pseudo]) and np.all(valid[pseudo])
  for scan in range(b):
    present = set(weak[scan][weak[scan] > 0])
    for cls in range(1, c):
      kept = np.sum(pseudo[scan] & (out[scan] == cls))
      candidates = np.sum(valid[scan] & (pred[scan] == cls))
      expected = math.floor(ratio * candidates) if cls in present else 0
      if cls == 4 and scan == 1:  # Its weak pixel is a candidate too; at most one overridden.
        assert kept in (expected, expected - 1)
      else:
        assert kept == expected, (scan, cls, kept, expected)


def test_pseudo_labels_small_quota_and_no_weak_labels():
  probs = np.tile(np.eye(3, dtype=np.float32)[1], (1, 5, 1)) * 0.9 + 0.1 / 3
  weak = np.array([[1, 0, 0, 0, 0]])
  valid = np.array([[False, True, True, True, True]])  # 4 candidates of class 1.
  select = jax.jit(sampling.select_pseudo_labels)
  # ratio 0.24 -> int(0.96) = 0 kept (the reference's int()); 0.25 -> exactly one.
  np.testing.assert_array_equal(select(jax.random.PRNGKey(1), probs, weak, valid, 0.24), weak)
  out = np.asarray(select(jax.random.PRNGKey(1), probs, weak, valid, 0.25))
  assert out[0, 0] == 1 and np.sum(out[0, 1:] == 1) == 1 and np.sum(out[0, 1:] != 0) == 1
  out = select(jax.random.PRNGKey(1), probs, 0 * weak, valid, 1.0)
  assert np.all(np.asarray(out) == 0)  # No class present in the weak labels: nothing kept.


def plackett_luce_inclusion(w, k):
  """P(i among the first k draws without replacement, prob ~ w), k in {1, 2}."""
  p = w / w.sum()
  if k == 1:
    return p
  return p + np.array([sum(p[j] * w[i] / (w.sum() - w[j]) for j in range(len(w)) if j != i)
                       for i in range(len(w))])


@pytest.mark.parametrize("ratio,k", [(0.2, 1), (0.4, 2)])
def test_pseudo_labels_draw_without_replacement_by_exp_minus_entropy(ratio, k):
  rng = np.random.default_rng(2)
  n, c, draws = 5, 4, 20000
  probs = probs_with_entropy(rng, n, c, peak_class=2).astype(np.float32)
  weight = np.exp(-np_entropy(probs.astype(np.float64)))
  weak = np.array([[0, 0, 0, 0, 0, 2]])  # The 6th pixel: invalid, only makes class 2 present.
  probs6 = np.concatenate([probs, np.full((1, c), 1 / c, np.float32)])[None]
  valid = np.array([[True] * n + [False]])
  keys = jax.random.split(jax.random.PRNGKey(3), draws)
  out = jax.jit(jax.vmap(lambda key: sampling.select_pseudo_labels(key, probs6, weak, valid,
                                                                   ratio)))(keys)
  chosen = np.asarray(out)[:, 0, :n] == 2
  assert np.all(chosen.sum(1) == k)  # Exactly k distinct pixels every time.
  counts = chosen.sum(0).astype(np.float64)
  inclusion = plackett_luce_inclusion(weight, k)
  assert chi_square(counts, inclusion / inclusion.sum()) < chi_square_bound(n - 1)
  uniform = np.full(n, 1 / n)
  assert chi_square(counts, uniform) > 10 * chi_square_bound(n - 1)  # The weights matter.


def test_sample_anchors_validity_and_membership():
  rng = np.random.default_rng(4)
  b, n, c, k = 3, 200, 7, 64
  labels = rng.integers(0, 4, (b, n)).astype(np.int32)  # Classes 4..6 absent everywhere.
  labels[1] = np.where(labels[1] == 2, 0, labels[1])  # Class 2 absent from scan 1.
  weights = rng.uniform(0, 1, (b, n)).astype(np.float32)
  weights[0, labels[0] == 3] = 0  # Class 3 present in scan 0 but with zero weight.
  idx, valid = jax.jit(sampling.sample_anchors, static_argnums=(3, 4))(
      jax.random.PRNGKey(5), labels, weights, c, k)
  idx, valid = np.asarray(idx), np.asarray(valid)
  assert idx.shape == valid.shape == (b, c - 1, k) and idx.dtype == np.int32  # No class 0 slot.
  present = np.zeros((b, c - 1), bool)  # Slot j is class j + 1.
  for scan in range(b):
    for cls in range(1, c):
      present[scan, cls - 1] = np.any((labels[scan] == cls) & (weights[scan] > 0))
  np.testing.assert_array_equal(valid, np.broadcast_to(present[..., None], valid.shape))
  assert not valid[1, 2 - 1].any() and not valid[0, 3 - 1].any() and not valid[:, 3:].any()
  assert valid[0, 0].all() and valid[2, 2].all()
  scan_ids, slots, _ = np.nonzero(valid)
  drawn = idx[valid]
  np.testing.assert_array_equal(labels[scan_ids, drawn], slots + 1)  # Never another class.
  assert np.all(weights[scan_ids, drawn] > 0)
  assert np.all(idx[~valid] == 0)


def test_sample_anchors_frequencies_follow_weights():
  n, c, k, draws = 30, 4, 512, 100
  labels = np.zeros((1, n), np.int32)
  members = np.array([2, 5, 11, 17, 23, 29])
  labels[0, members] = 2
  labels[0, [0, 1, 3]] = 3
  weights = np.full((1, n), 0.7, np.float32)
  weights[0, members] = [0.05, 0.4, 0.0, 1.0, 0.25, 0.6]  # Pixel 11: zero weight.
  keys = jax.random.split(jax.random.PRNGKey(6), draws)
  idx, valid = jax.jit(jax.vmap(lambda key: sampling.sample_anchors(key, labels, weights, c, k)))(
      keys)
  idx = np.asarray(idx)[:, 0, 2 - 1].ravel()  # Class 2's slot.
  assert np.asarray(valid)[:, 0, 2 - 1].all()
  counts = np.array([np.sum(idx == m) for m in members], np.float64)
  assert counts.sum() == draws * k and counts[2] == 0
  w = weights[0, members].astype(np.float64)
  positive = w > 0
  assert chi_square(counts[positive], w[positive] / w.sum()) < chi_square_bound(4)
