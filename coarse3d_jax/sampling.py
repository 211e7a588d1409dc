"""Entropy-driven pseudo-label selection and anchor sampling (static shapes, jit-able).

Per scan and class, without Python loops over classes and without data-dependent shapes:
- pseudo-labels: weighted sampling WITHOUT replacement by Gumbel-top-k, the per-class top-k done
  by one sort of (class, perturbed key) per scan;
- anchors: weighted sampling WITH replacement by inverse-CDF lookup (a per-class cumulative sum
  over the pixels and a binary search per draw), O(C * N + C * K log N) per scan instead of the
  O(C * K * N) of a categorical draw over all pixels for every anchor.
"""
import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Reference: -sum p log(p + 1e-10).
_ENTROPY_EPS = 1e-10


def entropy(probs: Array) -> Array:
  """H = -sum_c p_c log(p_c + 1e-10). probs: (..., C) -> (...) float32."""
  probs = probs.astype(jnp.promote_types(probs.dtype, jnp.float32))
  return -jnp.sum(probs * jnp.log(probs + _ENTROPY_EPS), axis=-1)


def anchor_weights(probs: Array) -> Array:
  """Anchor sampling weight rho = exp(-H^2) in (0, 1]. probs: (..., C) -> (...)."""
  return jnp.exp(-jnp.square(entropy(probs)))


ANCHOR_SAMPLING = ("entropy", "uniform")


def anchor_sampling_weights(probs: Array, how: str = "entropy") -> Array:
  """Anchor weights by `contrast.anchor_sampling`: 'entropy' (rho = exp(-H^2), COARSE3D) or
  'uniform' (every pixel of the class alike: the seed's "w/o anchor sampling" row).

  probs: (..., C) -> (...) float32.
  """
  if how == "entropy":
    return anchor_weights(probs)
  if how == "uniform":
    return jnp.ones(probs.shape[:-1], jnp.float32)
  raise ValueError(f"contrast.anchor_sampling={how!r}: use one of {ANCHOR_SAMPLING}")


def select_ratio(epoch: int | float | Array, num_epochs: int | float) -> float | Array:
  """Fraction of predicted pixels kept as pseudo-labels: 0.5 * log2(1 + (epoch + 1) / epochs).

  `epoch` counts from 0. Python numbers give a float; a traced epoch gives a float32 scalar.
  """
  if isinstance(epoch, (int, float)) and isinstance(num_epochs, (int, float)):
    return 0.5 * math.log2(1 + (epoch + 1) / num_epochs)
  return 0.5 * jnp.log2(1 + (jnp.asarray(epoch, jnp.float32) + 1) / num_epochs)


def class_presence(labels: Array, num_classes: int) -> Array:
  """(B, N) int labels -> (B, C) bool: class c >= 1 occurs in the scan (0 never 'present')."""
  def one(scan_labels):
    present = jnp.zeros((num_classes,), bool).at[scan_labels].set(True, mode="drop")
    return present.at[0].set(False)
  return jax.vmap(one)(labels.astype(jnp.int32))


def _rank_within_group(group: Array, key: Array, num_groups: int) -> Array:
  """Rank of each element among the elements of its group by decreasing key.

  group: (N,) int32 in [0, num_groups]; key: (N,) float. One stable sort of (group, -key).
  """
  n = group.shape[0]
  sorted_group, _, order = jax.lax.sort((group, -key, jnp.arange(n, dtype=jnp.int32)),
                                        num_keys=2)
  sizes = jax.ops.segment_sum(jnp.ones_like(group), group, num_groups + 1)
  first = jnp.cumsum(sizes) - sizes
  rank_sorted = jnp.arange(n, dtype=jnp.int32) - first[sorted_group]
  return jnp.zeros((n,), jnp.int32).at[order].set(rank_sorted, unique_indices=True)


def select_pseudo_labels(rng: Array, probs: Array, weak_labels: Array, valid: Array,
                         ratio: float | Array) -> Array:
  """Entropy-weighted pseudo-labels, merged under the weak labels.

  For each scan and each class c present in its weak labels, among the valid pixels predicted as
  c (argmax over classes 1..C-1), keep floor(ratio * count) pixels (the reference's int(): a
  class with ratio * count < 1 gets none) drawn without replacement with probability
  proportional to exp(-H) (Gumbel-top-k on -H). Weakly labeled pixels keep their weak label;
  every other pixel is 0.

  Args:
    rng: key; probs: (B, N, C) probabilities; weak_labels: (B, N) int (0 = unlabeled);
    valid: (B, N) bool; ratio: float or traced scalar in [0, 1].
  Returns:
    (B, N) int32 labels.
  """
  b, n, num_classes = probs.shape
  weak = weak_labels.astype(jnp.int32)
  pred = jnp.argmax(probs[..., 1:], axis=-1).astype(jnp.int32) + 1
  present = class_presence(weak, num_classes)
  candidate = valid & jnp.take_along_axis(present, pred, axis=1)
  group = jnp.where(candidate, pred, num_classes)  # Non-candidates: group C, never kept.
  counts = jax.vmap(lambda g: jax.ops.segment_sum(jnp.ones_like(g), g, num_classes + 1))(group)
  quota = jnp.floor(ratio * counts.astype(jnp.float32)).astype(jnp.int32)
  key = -entropy(probs) + jax.random.gumbel(rng, (b, n), jnp.float32)
  rank = jax.vmap(lambda g, k: _rank_within_group(g, k, num_classes))(group, key)
  keep = candidate & (rank < jnp.take_along_axis(quota, group, axis=1))
  return jnp.where(weak > 0, weak, jnp.where(keep, pred, 0))


def _draw_with_replacement(rng: Array, weights: Array, num_draws: int) -> Array:
  """Inverse-CDF draws of indices i with probability weights[i] / sum(weights).

  weights: (N,) >= 0 with a positive sum. Returns (num_draws,) int32, each with weights > 0.
  """
  n = weights.shape[0]
  cdf = jnp.cumsum(weights)
  u = jax.random.uniform(rng, (num_draws,), weights.dtype) * cdf[-1]
  idx = jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)
  # Rounding (u == total, or a cumulative sum not exactly flat over a zero weight) could land
  # on a zero-weight index: move to the next positive-weight index, the last one at most.
  position = jnp.arange(n, dtype=jnp.int32)
  next_positive = jax.lax.cummin(jnp.where(weights > 0, position, n), reverse=True)
  last_positive = jnp.max(jnp.where(weights > 0, position, 0))
  return next_positive[jnp.minimum(idx, last_positive)]


def sample_anchors(rng: Array, labels: Array, weights: Array, num_classes: int,
                   num_per_class: int = 512) -> tuple[Array, Array]:
  """Per scan and class 1..C-1, `num_per_class` pixels drawn with replacement, prob. ~ weights.

  Class 0 (no label) never has anchors, so it has no slot: slot j is class j + 1. Classes that
  occur in the scan's labels (with positive total weight) get valid draws; the others get
  index 0 and valid False.

  Args:
    rng: key; labels: (B, N) int32 (0 = none); weights: (B, N) >= 0 (e.g. anchor_weights).
  Returns:
    indices (B, C-1, K) int32 into N and valid (B, C-1, K) bool, K = num_per_class.
  """
  b = labels.shape[0]
  classes = jnp.arange(1, num_classes, dtype=jnp.int32)
  member = labels.astype(jnp.int32)[:, None, :] == classes[None, :, None]
  class_weights = jnp.where(member, jnp.maximum(weights, 0).astype(jnp.float32)[:, None, :], 0)
  has_weight = jnp.sum(class_weights, axis=-1) > 0
  # Absent classes draw from a uniform dummy distribution; their draws are marked invalid.
  class_weights = jnp.where(has_weight[..., None], class_weights, 1)
  # Class c draws with key c of a split over all C classes, whatever the slot layout.
  keys = jax.random.split(rng, (b, num_classes))[:, 1:]
  draw = lambda k, w: _draw_with_replacement(k, w, num_per_class)
  idx = jax.vmap(jax.vmap(draw))(keys, class_weights)
  valid = jnp.broadcast_to(has_weight[..., None], idx.shape)
  return jnp.where(valid, idx, 0), valid
