"""Class sub-prototype bank: initialization, Sinkhorn-Knopp assignment and the momentum update.

The bank P has shape (C, M, D): C classes (index 0 = ignore, never updated), M sub-prototypes
per class, D embedding dims, every row unit L2 norm. It is training state, not a parameter.

Everything here is jit-able with static shapes and runs unchanged inside `jax.shard_map`: with
`axis_name` every statistic that spans pixels (maxima, Sinkhorn normalizers, the per-prototype
sums and counts) is reduced over that mesh axis, so each device computes the assignment of the
*global* batch and ends with the same (bit-identical) bank.

Precision: Sinkhorn divides cosine scores by epsilon = 0.05, so a score error e becomes a
factor exp(e / 0.05) on Q. In bfloat16 (8-bit mantissa) cosines near 1 carry errors up to
~4e-3, i.e. ~8% on entries of Q, enough to change assignments of near-tied sub-prototypes;
so scores, Sinkhorn and the bank update always run in float32 (scores with HIGHEST matmul
precision, which GPUs/TPUs would otherwise run as bfloat16 / TF32 passes), whatever the
model's compute dtype. The max-shifted exponent keeps every entry in (0, 1]: no overflow.
"""
import jax
import jax.numpy as jnp

from coarse3d_jax.models.layers import l2_normalize

Array = jax.Array


def init_bank(rng: Array, num_classes: int, num_sub: int, dim: int) -> Array:
  """Truncated-normal(std 0.02) sub-prototypes, L2-normalized: (C, M, D) float32."""
  # timm's trunc_normal_ truncates at +-2 absolute, i.e. +-100 std here: practically untruncated.
  # The scale is irrelevant after normalization; only the direction distribution matters.
  bank = 0.02 * jax.random.truncated_normal(rng, -2.0, 2.0, (num_classes, num_sub, dim),
                                            jnp.float32)
  return l2_normalize(bank)


def _psum(x: Array, axis_name: str | None) -> Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmax(x: Array, axis_name: str | None) -> Array:
  return x if axis_name is None else jax.lax.pmax(x, axis_name)


def _safe(den: Array) -> Array:
  """Denominator that is 1 where it is 0, so empty groups give 0 instead of NaN."""
  return jnp.where(den > 0, den, 1)


def segment_sinkhorn(scores: Array, segment_ids: Array, valid: Array, num_segments: int,
                     num_iters: int = 3, epsilon: float = 0.05,
                     axis_name: str | None = None) -> Array:
  """Independent Sinkhorn-Knopp problems, one per segment (class), on one flat set of rows.

  Row i belongs to problem `segment_ids[i]`; each problem is the reference
  `distributed_sinkhorn` on its valid rows (B_s rows, K = M columns): Q = exp(s / eps)
  normalized to total 1, then `num_iters` times [each prototype column to 1/K, each pixel row
  to 1/B_s], finally rows scaled by B_s so that every pixel's row sums to 1.

  Computed in the dtype of `scores` (callers pass float32). exp((s - max_s) / eps) is used
  instead of exp(s / eps): the per-problem max is a global factor that the total
  normalization removes exactly, and it keeps every entry in (0, 1], so nothing overflows
  whatever the scores; with cosine scores entries are >= exp(-2 / eps).

  Args:
    scores: (N, M) similarities of each row to the M sub-prototypes of its own segment.
    segment_ids: (N,) int32 in [0, num_segments); ignored where `valid` is False.
    valid: (N,) bool; invalid rows take no part and come back all zero.
    num_segments: static number of problems S.
    axis_name: mesh axis over which rows are split; sums and maxima are reduced over it.
  Returns:
    (N, M) soft assignments in the dtype of `scores`; valid rows sum to 1.
  """
  num_cols = scores.shape[-1]
  seg = jnp.where(valid, segment_ids, 0)
  seg_sum = lambda x: _psum(jax.ops.segment_sum(x, seg, num_segments), axis_name)
  masked = jnp.where(valid[:, None], scores, -jnp.inf)
  seg_max = _pmax(jnp.max(jax.ops.segment_max(masked, seg, num_segments), axis=-1), axis_name)
  seg_max = jnp.where(jnp.isfinite(seg_max), seg_max, 0)
  q = jnp.exp((masked - seg_max[seg][:, None]) / epsilon)  # exp(-inf) = 0 on invalid rows.
  rows = _safe(seg_sum(valid.astype(scores.dtype)))[seg][:, None]  # B_s of each row's problem.
  q = q / _safe(seg_sum(jnp.sum(q, axis=-1)))[seg][:, None]

  def one_iteration(_, q):
    q = q / _safe(seg_sum(q))[seg] / num_cols
    q = q / _safe(jnp.sum(q, axis=-1, keepdims=True)) / rows
    return q

  q = jax.lax.fori_loop(0, num_iters, one_iteration, q)
  return q * rows


def sinkhorn(scores: Array, valid: Array, num_iters: int = 3, epsilon: float = 0.05,
             axis_name: str | None = None) -> Array:
  """Sinkhorn-Knopp soft assignment of pixels to the M sub-prototypes of one class.

  Args:
    scores: (N, M) cosine similarities (any float dtype; computed in float32).
    valid: (N,) bool; the problem is posed on the valid rows only.
    num_iters, epsilon: as the reference (3, 0.05).
    axis_name: mesh axis over which the N rows are split (None: single device).
  Returns:
    (N, M) float32: valid rows equal the reference Q (before its Gumbel step) computed on the
    valid rows (of all devices) alone, each summing to 1; invalid rows are 0.
  """
  scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
  return segment_sinkhorn(scores, jnp.zeros(scores.shape[:1], jnp.int32), valid, 1,
                          num_iters, epsilon, axis_name)


def nearest_class(similarities: Array) -> Array:
  """(N, C, M) pixel-to-sub-prototype similarities -> (N,) int32 class in 1..C-1.

  Max over sub-prototypes, then argmax over the non-ignored classes (class 0 never wins).
  """
  return jnp.argmax(jnp.max(similarities[:, 1:], axis=-1), axis=-1).astype(jnp.int32) + 1


def momentum_step(bank: Array, sums: Array, counts: Array, momentum: float) -> Array:
  """P <- l2n(m * P + (1 - m) * l2n(sum)) where count > 0; other rows bit-identical.

  l2n(sum) = l2n(mean) since the count is positive. bank, sums: (C, M, D); counts: (C, M).
  """
  moved = l2_normalize(momentum * bank + (1 - momentum) * l2_normalize(sums))
  return jnp.where((counts > 0)[..., None], moved, bank)


def update_bank(bank: Array, embeddings: Array, labels: Array, valid: Array,
                momentum: float = 0.999, axis_name: str | None = None, *, num_iters: int = 3,
                epsilon: float = 0.05) -> tuple[Array, Array]:
  """One momentum update of every class's sub-prototypes from labeled pixel embeddings.

  Per class k (all at once): Sinkhorn over the valid pixels labeled k against the M
  sub-prototypes of k; assignment = argmax of Q. Only pixels whose nearest-prototype class
  (`nearest_class`) equals their label contribute; each sub-prototype with at least one
  contributing pixel moves by `momentum_step`. Class 0 and labels outside 1..C-1 never count.

  Args:
    bank: (C, M, D) float32 unit rows.
    embeddings: (N, D) L2-normalized pixel embeddings (no gradient flows into the bank).
    labels: (N,) int class per pixel; valid: (N,) bool.
    axis_name: mesh axis over which pixels are split; the result is then the update of the
      global batch and identical on every device.
  Returns:
    new_bank (C, M, D) float32 and assignment (N,) int32: the sub-prototype index a pixel
    contributed to, -1 where it did not contribute.
  """
  num_classes, num_sub, _ = bank.shape
  emb = jax.lax.stop_gradient(embeddings).astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  labeled = valid & (labels > 0) & (labels < num_classes)
  cls = jnp.where(labeled, labels, 0)
  # Full float32 (no TF32 / bf16 passes on GPUs/TPUs): Sinkhorn divides scores by eps = 0.05.
  sims = jnp.einsum("nd,cmd->ncm", emb, bank, precision=jax.lax.Precision.HIGHEST)
  own = jnp.take_along_axis(sims, cls[:, None, None], axis=1)[:, 0]
  q = segment_sinkhorn(own, cls, labeled, num_classes, num_iters, epsilon, axis_name)
  sub = jnp.argmax(q, axis=-1).astype(jnp.int32)
  contributes = labeled & (nearest_class(sims) == cls)
  num_slots = num_classes * num_sub
  slot = jnp.where(contributes, cls * num_sub + sub, num_slots)  # Extra slot: discarded.
  sums = jax.ops.segment_sum(emb, slot, num_slots + 1)[:-1]
  counts = jax.ops.segment_sum(contributes.astype(jnp.int32), slot, num_slots + 1)[:-1]
  sums = _psum(sums, axis_name).reshape(bank.shape)
  counts = _psum(counts, axis_name).reshape(num_classes, num_sub)
  new_bank = momentum_step(bank, sums, counts, momentum)
  return new_bank, jnp.where(contributes, sub, -1)


def push_memory(memory: Array, embeddings: Array, labels: Array, valid: Array) -> Array:
  """Per-class FIFO of labeled pixel embeddings, the "pixel memory" that replaces the bank in
  the seed's "w/o prototype" ablation (`contrast.memory='pixels'`).

  Row 0 of a class is its newest entry. The n_c valid embeddings labeled c (1 <= c < C) enter
  at the front in input order and the class's rows move back by n_c; the oldest fall off (with
  n_c >= M only the first M of the batch stay). Class 0 and invalid rows never enter. Static
  shapes: one stable sort by class and one (C, M) gather.

  Args:
    memory: (C, M, D) float32; embeddings: (N, D) unit rows (stop-gradient); labels: (N,) int;
    valid: (N,) bool.
  Returns:
    (C, M, D) float32.
  """
  num_classes, size, _ = memory.shape
  n = embeddings.shape[0]
  labels = labels.astype(jnp.int32)
  enters = valid & (labels > 0) & (labels < num_classes)
  group = jnp.where(enters, labels, num_classes)
  order = jnp.argsort(group, stable=True)  # Grouped by class, input order within a class.
  counts = jax.ops.segment_sum(enters.astype(jnp.int32), group, num_classes + 1)[:-1]
  first = jnp.cumsum(counts) - counts
  slot = jnp.arange(size)[None, :]
  is_new = slot < counts[:, None]
  new_rows = embeddings.astype(jnp.float32)[order[jnp.clip(first[:, None] + slot, 0, n - 1)]]
  old_rows = jnp.take_along_axis(memory, jnp.clip(slot - counts[:, None], 0, size - 1)[..., None],
                                 axis=1)
  return jnp.where(is_new[..., None], new_rows, old_rows)
