"""Tests of coarse3d_jax.prototypes against numpy float64 ports of the reference algorithm."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from coarse3d_jax import prototypes

AXIS = "data"


# ----------------------------------------------------------------------------- numpy references
def np_l2n(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_sinkhorn(scores, num_iters=3, epsilon=0.05):
  """The reference distributed_sinkhorn (before its Gumbel step), float64, (B, K) in and out."""
  q = np.exp(scores / epsilon).T  # (K, B)
  k, b = q.shape
  q = q / q.sum()
  for _ in range(num_iters):
    q = q / q.sum(axis=1, keepdims=True) / k
    q = q / q.sum(axis=0, keepdims=True) / b
  return (q * b).T


def np_update_bank(bank, emb, labels, valid, momentum, num_iters=3, epsilon=0.05):
  """Per-class loop as the reference prototype_learning, with argmax instead of Gumbel."""
  num_classes, num_sub, _ = bank.shape
  sims = np.einsum("nd,cmd->ncm", emb, bank)
  nearest = sims[:, 1:].max(-1).argmax(-1) + 1
  new = bank.copy()
  assignment = -np.ones(len(labels), np.int64)
  for c in range(1, num_classes):
    rows = np.nonzero(valid & (labels == c))[0]
    if len(rows) == 0:
      continue
    sub = np_sinkhorn(sims[rows, c], num_iters, epsilon).argmax(1)
    ok = nearest[rows] == c
    assignment[rows[ok]] = sub[ok]
    for j in range(num_sub):
      sel = rows[ok & (sub == j)]
      if len(sel):
        new[c, j] = np_l2n(momentum * bank[c, j] + (1 - momentum) * np_l2n(emb[sel].sum(0)))
  return new, assignment


def clustered_inputs(seed, num_classes=5, num_sub=4, dim=8, n=64, noise=0.4):
  """Embeddings near random sub-prototypes of their label, some unlabeled / invalid."""
  rng = np.random.default_rng(seed)
  bank = np_l2n(rng.normal(size=(num_classes, num_sub, dim)))
  labels = rng.integers(0, num_classes, n)
  emb = np_l2n(bank[labels, rng.integers(0, num_sub, n)] + noise * rng.normal(size=(n, dim)))
  valid = rng.random(n) < 0.85
  return bank.astype(np.float32), emb.astype(np.float32), labels.astype(np.int32), valid


# ----------------------------------------------------------------------------- sinkhorn
sinkhorn_jit = jax.jit(prototypes.sinkhorn, static_argnames=("num_iters", "epsilon"))


@pytest.mark.parametrize("num_iters", [0, 1, 3])
def test_sinkhorn_equals_reference_on_valid_rows(num_iters):
  rng = np.random.default_rng(0)
  scores = rng.uniform(-1, 1, (40, 6)).astype(np.float32)
  valid = rng.random(40) < 0.7
  garbage = np.where(valid[:, None], scores, 5.0).astype(np.float32)  # Would dominate if used.
  q = np.asarray(sinkhorn_jit(garbage, valid, num_iters=num_iters))
  expected = np_sinkhorn(scores[valid].astype(np.float64), num_iters)
  np.testing.assert_allclose(q[valid], expected, rtol=2e-5, atol=1e-9)
  assert np.all(q[~valid] == 0)


def test_sinkhorn_marginals():
  rng = np.random.default_rng(1)
  scores = rng.uniform(-1, 1, (50, 5)).astype(np.float32)
  valid = np.arange(50) < 45
  q = np.asarray(sinkhorn_jit(scores, valid, num_iters=3))
  np.testing.assert_allclose(q[valid].sum(1), 1, rtol=1e-5)  # Each pixel is an assignment.
  # Many iterations converge to the balanced transport plan: every prototype gets B / K.
  q = np.asarray(sinkhorn_jit(scores, valid, num_iters=300, epsilon=0.5))
  np.testing.assert_allclose(q[valid].sum(1), 1, rtol=1e-5)
  np.testing.assert_allclose(q[valid].sum(0), 45 / 5, rtol=1e-3)


def test_sinkhorn_is_shift_invariant_and_cannot_overflow():
  rng = np.random.default_rng(2)
  scores = rng.uniform(-1, 1, (20, 4)).astype(np.float32)
  valid = np.ones(20, bool)
  with np.errstate(over="ignore", invalid="ignore"):
    naive = np_sinkhorn(scores.astype(np.float32) + np.float32(100))  # exp(2000) overflows.
  assert not np.all(np.isfinite(naive))
  base = np.asarray(sinkhorn_jit(scores, valid))
  shifted = np.asarray(sinkhorn_jit(scores + 100, valid))
  assert np.all(np.isfinite(shifted))
  np.testing.assert_allclose(shifted, base, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(base, np_sinkhorn(scores.astype(np.float64)), rtol=2e-5, atol=1e-9)


def test_sinkhorn_edge_cases():
  scores = np.random.default_rng(3).uniform(-1, 1, (8, 3)).astype(np.float32)
  none = np.asarray(sinkhorn_jit(scores, np.zeros(8, bool)))
  assert np.all(none == 0)
  one = np.asarray(sinkhorn_jit(scores, np.arange(8) == 5))
  np.testing.assert_allclose(one[5], np.full(3, 1 / 3), rtol=1e-6)  # One pixel: uniform.
  assert np.all(np.delete(one, 5, axis=0) == 0)
  bf16 = sinkhorn_jit(jnp.asarray(scores, jnp.bfloat16), np.ones(8, bool))
  assert bf16.dtype == jnp.float32  # Computed in float32 whatever the input dtype.
  expected = np_sinkhorn(np.asarray(jnp.asarray(scores, jnp.bfloat16), np.float64))
  np.testing.assert_allclose(bf16, expected, rtol=2e-5, atol=1e-9)


# ----------------------------------------------------------------------------- bank
update_jit = jax.jit(prototypes.update_bank, static_argnames=("num_iters", "epsilon"))


def test_init_bank():
  init = jax.jit(prototypes.init_bank, static_argnums=(1, 2, 3))
  bank = init(jax.random.PRNGKey(0), 20, 5, 16)
  assert bank.shape == (20, 5, 16) and bank.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(bank, axis=-1), 1, rtol=1e-6)
  other = init(jax.random.PRNGKey(1), 20, 5, 16)
  assert not np.allclose(bank, other)


@pytest.mark.parametrize("seed,momentum", [(0, 0.9), (1, 0.999), (2, 0.0)])
def test_update_bank_equals_numpy_reference(seed, momentum):
  bank, emb, labels, valid = clustered_inputs(seed)
  new, assignment = update_jit(bank, emb, labels, valid, momentum)
  new, assignment = np.asarray(new), np.asarray(assignment)
  exp_bank, exp_assignment = np_update_bank(bank.astype(np.float64), emb.astype(np.float64),
                                            labels, valid, momentum)
  np.testing.assert_array_equal(assignment, exp_assignment)
  assert 0 < (assignment >= 0).sum() < valid.sum()  # Some pixels contribute, not all.
  np.testing.assert_allclose(new, exp_bank, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(new, axis=-1), 1, rtol=1e-6)
  untouched = np.all(exp_bank == bank, axis=-1)
  assert untouched[0].all() and untouched.any()
  np.testing.assert_array_equal(new[untouched], bank[untouched])  # Bit-identical.


def test_update_bank_hand_case():
  # Class 1 = {(1,0), (0,1)}, class 2 = {(-1,0), (0,-1)}, class 0 = anything (never used).
  bank = np.array([[[1, 0], [1, 0]], [[1, 0], [0, 1]], [[-1, 0], [0, -1]]], np.float32)
  emb = np.array([[0.8, 0.6], [0.6, 0.8], [0.8, 0.6], [0.6, 0.8]], np.float32)
  # Pixels 0, 1: class 1, symmetric -> one per sub-prototype. Pixel 2: labeled 2 but nearest to
  # class 1 -> no contribution. Pixel 3: invalid.
  labels = np.array([1, 1, 2, 1], np.int32)
  valid = np.array([True, True, True, False])
  new, assignment = update_jit(bank, emb, labels, valid, 0.5)
  np.testing.assert_array_equal(assignment, [0, 1, -1, -1])
  # l2n(0.5 * (1, 0) + 0.5 * (0.8, 0.6)) = (3, 1) / sqrt(10), and symmetrically.
  np.testing.assert_allclose(new[1], np.array([[3, 1], [1, 3]]) / np.sqrt(10), rtol=1e-6)
  np.testing.assert_array_equal(new[0], bank[0])
  np.testing.assert_array_equal(new[2], bank[2])


def test_update_bank_edge_cases():
  bank, emb, labels, valid = clustered_inputs(4)
  for case_valid in (np.zeros_like(valid), valid & (labels == 0)):  # Nothing labeled.
    new, assignment = update_jit(bank, emb, labels, case_valid, 0.9)
    np.testing.assert_array_equal(new, bank)
    assert np.all(np.asarray(assignment) == -1)
  # One pixel of class 3 (placed on its sub-prototype 2), nothing else.
  one = np.arange(len(labels)) == 7
  labels_one = np.where(one, 3, labels).astype(np.int32)
  emb_one = emb.copy()
  emb_one[7] = bank[3, 2]
  new, assignment = update_jit(bank, emb_one, labels_one, one, 0.9)
  new = np.asarray(new)
  assert np.all(np.isfinite(new))
  # A single pixel's Sinkhorn row is uniform, so argmax = sub-prototype 0 (as the reference).
  np.testing.assert_array_equal(np.asarray(assignment)[7], 0)
  np.testing.assert_allclose(new[3, 0], np_l2n(0.9 * bank[3, 0] + 0.1 * bank[3, 2]), atol=1e-6)
  moved = np.zeros(bank.shape[:2], bool)
  moved[3, 0] = True
  np.testing.assert_array_equal(new[~moved], bank[~moved])
  # Out-of-range labels are ignored, never NaN.
  bad = np.where(np.arange(len(labels)) % 2 == 0, 99, -3).astype(np.int32)
  new, assignment = update_jit(bank, emb, bad, np.ones_like(valid), 0.9)
  np.testing.assert_array_equal(new, bank)


def test_momentum_step_arithmetic():
  rng = np.random.default_rng(5)
  bank = np_l2n(rng.normal(size=(3, 4, 6))).astype(np.float32)
  sums = rng.normal(size=(3, 4, 6)).astype(np.float32) * 7
  counts = np.array([[0, 2, 0, 1], [5, 0, 0, 0], [0, 0, 0, 0]])
  new = np.asarray(prototypes.momentum_step(bank, sums, counts, 0.999))
  expected = np.where((counts > 0)[..., None],
                      np_l2n(0.999 * bank + 0.001 * np_l2n(sums.astype(np.float64))), bank)
  np.testing.assert_allclose(new, expected, atol=1e-6)
  np.testing.assert_array_equal(new[counts == 0], bank[counts == 0])


# ----------------------------------------------------------------------------- multi-device
@pytest.fixture(scope="module")
def mesh4():
  return Mesh(np.array(jax.devices()[:4]), (AXIS,))


def test_sinkhorn_multi_device_equals_single(mesh4):
  rng = np.random.default_rng(6)
  scores = rng.uniform(-1, 1, (48, 5)).astype(np.float32)
  valid = rng.random(48) < 0.8
  valid[12:24] = False  # One device holds no valid row.
  fn = jax.jit(jax.shard_map(functools.partial(prototypes.sinkhorn, axis_name=AXIS),
                             mesh=mesh4, in_specs=(P(AXIS), P(AXIS)), out_specs=P(AXIS)))
  np.testing.assert_allclose(fn(scores, valid), sinkhorn_jit(scores, valid), rtol=1e-5,
                             atol=1e-9)


def test_update_bank_multi_device_equals_single(mesh4):
  bank, emb, labels, valid = clustered_inputs(7, n=96)

  def per_device(bank, emb, labels, valid):
    new, assignment = prototypes.update_bank(bank, emb, labels, valid, 0.9, axis_name=AXIS)
    return new, new[None], assignment

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh4, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                             out_specs=(P(), P(AXIS), P(AXIS))))
  new, copies, assignment = fn(bank, emb, labels, valid)
  single, single_assignment = update_jit(bank, emb, labels, valid, 0.9)
  np.testing.assert_array_equal(assignment, single_assignment)
  np.testing.assert_allclose(new, single, atol=1e-6)
  assert not np.array_equal(new, bank)
  copies = np.asarray(copies)
  for copy in copies[1:]:
    np.testing.assert_array_equal(copy, copies[0])  # Bit-identical on every device.
