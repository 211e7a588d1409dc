"""Losses of COARSE3D: weighted focal, Lovasz-softmax and the Pix2Proto contrastive loss.

All take probabilities / embeddings as flat (N, ...) arrays with masks, are jit-able with static
shapes (no boolean indexing) and return float32 scalars. An empty mask gives 0 with a zero
gradient, never NaN.
"""
import jax
import jax.numpy as jnp

Array = jax.Array

# The public reference's SupCon loss scales by temperature / base_temperature, base fixed at 0.07.
SUPCON_BASE_TEMPERATURE = 0.07
# Reference clamp of the target probability before the log (FocalSoftmaxLoss).
_FOCAL_MIN_PROB = 1e-6


def _float(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def _masked_mean(values: Array, mask: Array, axis_name: str | None = None) -> Array:
  """sum(values * mask) / sum(mask) (psum'ed over `axis_name`); 0 when the mask is empty."""
  total = jnp.sum(jnp.where(mask, values, 0))
  count = jnp.sum(mask.astype(values.dtype))
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / jnp.maximum(count, 1)


def focal_alpha(weak_class_counts: Array) -> Array:
  """Per-class focal weights from the weak-label class counts, as the reference trainer.

  freq_c = count_c / sum_{c>=1} count_c, w_c = 1 / (freq_c + 1e-3),
  alpha_c = log(1 + w_c) / max_{c>=1} log(1 + w_c), alpha_0 = 0.
  Class 0 (ignore) is left out of the total and the max (the reference zeroes its weight, and
  its count table has 0 there). A class with zero count gets the largest weight,
  w = 1000, alpha = 1, and so sets the max, exactly as in the reference.

  Args:
    weak_class_counts: (C,) counts (any numeric dtype).
  Returns:
    (C,) float32 in [0, 1].
  """
  counts = jnp.asarray(weak_class_counts, jnp.float32)
  counts = counts.at[0].set(0)
  freq = counts / jnp.maximum(jnp.sum(counts), 1)
  log_w = jnp.log1p(1 / (freq + 1e-3)).at[0].set(0)
  return log_w / jnp.max(log_w[1:])


def focal_loss(probs: Array, labels: Array, alpha: Array, gamma: float = 2.0,
               mask: Array | None = None) -> Array:
  """Reference FocalSoftmaxLoss on probabilities (softmax=False).

  loss_i = -alpha[y_i] * (1 - p_i)^gamma * log(max(p_i, 1e-6)), p_i = probs[i, y_i];
  mean over `mask` (sum / count; 0 when the mask is empty) or over all N rows without a mask.

  Args:
    probs: (N, C) probabilities; labels: (N,) int in [0, C); alpha: (C,) class weights;
    mask: (N,) bool or None.
  Returns:
    scalar float32.
  """
  probs = _float(probs)
  labels = jnp.clip(jnp.asarray(labels, jnp.int32), 0, probs.shape[-1] - 1)
  p = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
  weight = jnp.asarray(alpha, probs.dtype)[labels]
  loss = -weight * jnp.power(1 - p, gamma) * jnp.log(jnp.maximum(p, _FOCAL_MIN_PROB))
  if mask is None:
    return jnp.mean(loss)
  return _masked_mean(loss, mask)


def cross_entropy_loss(probs: Array, labels: Array, mask: Array | None = None) -> Array:
  """Unweighted cross-entropy on probabilities: mean of -log(max(p_y, 1e-6)).

  The focal loss without its modulation (1 - p)^gamma and without class weights (the seed's
  "w/o focal loss" row); the class-weighted variant is the focal loss at gamma = 0.

  Args:
    probs: (N, C) probabilities; labels: (N,) int in [0, C); mask: (N,) bool or None.
  Returns:
    scalar float32: the mean over `mask` (0 when empty) or over all N rows.
  """
  probs = _float(probs)
  labels = jnp.clip(jnp.asarray(labels, jnp.int32), 0, probs.shape[-1] - 1)
  p = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
  loss = -jnp.log(jnp.maximum(p, _FOCAL_MIN_PROB))
  if mask is None:
    return jnp.mean(loss)
  return _masked_mean(loss, mask)


def _lovasz_grad(fg_sorted: Array) -> Array:
  """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman Alg. 1).

  fg_sorted: (N,) 0/1 ground truth in the order of decreasing error.
  """
  gts = jnp.sum(fg_sorted)
  intersection = gts - jnp.cumsum(fg_sorted)
  union = gts + jnp.cumsum(1 - fg_sorted)  # >= 1 everywhere: no 0/0.
  jaccard = 1 - intersection / union
  return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_one_class(prob_c: Array, fg: Array, valid: Array) -> Array:
  """Lovasz hinge of one class on the valid pixels; invalid ones sort last with zero weight."""
  errors = jnp.where(valid, jnp.abs(fg - prob_c), -1)
  order = jnp.argsort(-errors)
  errors_sorted = jnp.take(errors, order)
  fg_sorted = jnp.take(fg, order)
  # After the last valid pixel every foreground pixel is counted, the Jaccard stays 1 and its
  # increments are 0, so the padding contributes nothing.
  return jnp.dot(jnp.where(jnp.take(valid, order), errors_sorted, 0), _lovasz_grad(fg_sorted))


def lovasz_softmax(probs: Array, labels: Array, ignore: int | None = 0,
                   mask: Array | None = None) -> Array:
  """Multi-class Lovasz-softmax (Berman et al. 2018), classes='present', over all pixels.

  Pixels with label == `ignore` or mask False are dropped; the loss is the mean over the classes
  present among the remaining pixels of dot(errors sorted descending, lovasz_grad), with
  errors = |[y == c] - p_c|. No remaining pixel: 0. Vectorized over classes (one sort each).

  Args:
    probs: (N, C) probabilities; labels: (N,) int; mask: (N,) bool or None.
  Returns:
    scalar float32.
  """
  probs = _float(probs)
  num_classes = probs.shape[-1]
  labels = jnp.asarray(labels, jnp.int32)
  valid = (labels >= 0) & (labels < num_classes)
  if ignore is not None:
    valid = valid & (labels != ignore)
  if mask is not None:
    valid = valid & mask
  fg = (labels[None, :] == jnp.arange(num_classes)[:, None]) & valid[None, :]
  per_class = jax.vmap(_lovasz_one_class, in_axes=(1, 0, None))(
      probs, fg.astype(probs.dtype), valid)
  present = jnp.any(fg, axis=1)
  return jnp.sum(jnp.where(present, per_class, 0)) / jnp.maximum(jnp.sum(present), 1)


def _pix2proto_seed(logits: Array, rows: Array) -> Array:
  """-log(sum_pos exp / sum_{pos+neg} exp) per anchor.

  logits: (A, C - 1, M) against the sub-prototypes of classes 1..C-1; rows: (A,) the anchor's
  class - 1.
  """
  own = jnp.take_along_axis(logits, rows[:, None, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=(1, 2)) - jax.nn.logsumexp(own, axis=-1)


def _pix2proto_seed_by_class(anchors: Array, bank: Array, rows: Array) -> Array:
  """`_pix2proto_seed` computed one class at a time, (A, M) logits alive instead of
  (A, C - 1, M): for a bank with many entries per class (the pixel memory). The backward pass
  recomputes each class's logits rather than keeping them.

  anchors: (A, D); bank: (C - 1, M, D), already divided by the temperature; rows: (A,).
  """
  class_lse = jax.checkpoint(lambda members: jax.nn.logsumexp(anchors @ members.T, axis=-1))

  def one_class(carry, inputs):
    lse_all, own = carry
    index, members = inputs
    lse = class_lse(members)
    return (jnp.logaddexp(lse_all, lse), jnp.where(rows == index, lse, own)), None

  first = class_lse(bank[0])  # The carry starts from it: the anchors' device-varying type.
  (lse_all, own), _ = jax.lax.scan(one_class, (first, jnp.where(rows == 0, first, 0.0)),
                                   (jnp.arange(1, bank.shape[0]), bank[1:]))
  return lse_all - own


def _pix2proto_supcon(logits: Array, rows: Array, temperature: float) -> Array:
  """Reference SupCon: -(tau / 0.07) * mean_p [l_p - log(exp(l_p) + sum_neg exp(l_n))].

  logits: (A, C - 1, M) as in `_pix2proto_seed`; rows: (A,) the anchor's class - 1.
  """
  num_rows = logits.shape[1]
  own = jnp.take_along_axis(logits, rows[:, None, None], axis=1)[:, 0]
  if num_rows > 1:  # Static: otherwise no anchor has a negative and log_prob = 0.
    is_neg = jnp.arange(num_rows)[None, :] != rows[:, None]
    lse_neg = jax.nn.logsumexp(logits, axis=(1, 2), where=is_neg[:, :, None])
    log_prob = own - jnp.logaddexp(own, lse_neg[:, None])
  else:
    log_prob = jnp.zeros_like(own)
  return -(temperature / SUPCON_BASE_TEMPERATURE) * jnp.mean(log_prob, axis=-1)


def pix2proto_loss(anchors: Array, anchor_labels: Array, anchor_valid: Array, bank: Array,
                   temperature: float = 0.07, variant: str = "seed",
                   axis_name: str | None = None, by_class: bool = False) -> Array:
  """Pix2Proto contrastive loss of anchor embeddings against the prototype bank.

  'seed' (default, the paper's formula; docs/design.md): per anchor of class k,
    -log( sum_{p in P_k} e^{a.p/tau} / sum_{p in P_c, c >= 1} e^{a.p/tau} ),
  positives = the M sub-prototypes of k, negatives = those of every other class except 0.
  'supcon': the public reference's mean log-probability over positives, each positive against
  all negatives, scaled by tau / 0.07.
  Mean over valid anchors (labels outside 1..C-1 are invalid); with `axis_name` sum and count are
  psum'ed, so the value is the global-batch mean on every device. No valid anchor: 0, zero grad.
  `by_class` ('seed' only): the same value, computed one class at a time to bound the memory.

  Args:
    anchors: (A, D) unit embeddings (gradient flows into them).
    anchor_labels: (A,) int; anchor_valid: (A,) bool.
    bank: (C, M, D) unit sub-prototypes (treated as a constant).
  Returns:
    scalar float32.
  """
  if variant not in ("seed", "supcon"):
    raise ValueError(f"pix2proto_loss: unknown variant {variant!r} (expected 'seed' or 'supcon')")
  num_classes = bank.shape[0]
  anchor_labels = jnp.asarray(anchor_labels, jnp.int32)
  valid = anchor_valid & (anchor_labels > 0) & (anchor_labels < num_classes)
  if num_classes < 2:  # No class besides ignore: nothing to contrast.
    return jnp.zeros((), jnp.float32)
  # Class 0's sub-prototypes are neither positives nor negatives: leave them out of the product.
  rows = jnp.where(valid, anchor_labels - 1, 0)
  bank = jax.lax.stop_gradient(bank[1:]).astype(jnp.float32) / temperature
  if by_class:
    if variant != "seed":
      raise ValueError(f"pix2proto_loss: by_class computes the 'seed' variant, not {variant!r}")
    return _masked_mean(_pix2proto_seed_by_class(_float(anchors), bank, rows), valid, axis_name)
  logits = jnp.einsum("ad,cmd->acm", _float(anchors), bank)
  if variant == "seed":
    per_anchor = _pix2proto_seed(logits, rows)
  else:
    per_anchor = _pix2proto_supcon(logits, rows, temperature)
  return _masked_mean(per_anchor, valid, axis_name)
