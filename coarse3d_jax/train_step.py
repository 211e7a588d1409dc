"""The train state and the per-device train / eval steps (run under `jax.shard_map`).

Every loss is reduced to the *global* value inside the step (psum'ed sums over psum'ed counts, or
computed on labeled pixels gathered from all devices), so each device holds the same invariant
loss and `jax.grad` returns the gradient of the global-batch loss: no pmean of gradients, and
N devices give the same update as one device on the same global batch.

The steps close over the model, the optimizer, the frozen config (hyper-parameters) and the
derived settings of the run (`settings.DerivedSettings`: geometry, normalization, caps, ...).

Randomness is drawn per scan from (rng, step, global scan index), never per device, so the
augmentation, pseudo-labels and anchors do not depend on how the batch is split. Dropout is the
exception (Flax draws one mask per device batch).
"""
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from coarse3d_jax import augment
from coarse3d_jax import losses
from coarse3d_jax import metrics
from coarse3d_jax import prototypes
from coarse3d_jax import sampling
from coarse3d_jax import settings as settings_lib
from coarse3d_jax.models import network
from coarse3d_jax.models import projection_head

Array = jax.Array
AXIS = "data"


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: one pytree, checkpointed whole."""
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  bank: Array  # (C, M, D) unit-norm class sub-prototypes; no gradient.
  rng: Array


def create_train_state(rng: Array, model, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int, int], num_classes: int,
                       num_sub: int, embed_dim: int) -> TrainState:
  """Initial state; `image_shape` is the (B, H, W, 5) training input shape."""
  k_params, k_dropout, _, k_state = jax.random.split(rng, 4)
  variables = model.init({"params": k_params, "dropout": k_dropout},
                         jnp.zeros(image_shape, jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
      bank=initial_bank(rng, num_classes, num_sub, embed_dim), rng=k_state)


def initial_bank(rng: Array, num_classes: int, num_sub: int, embed_dim: int) -> Array:
  """The (C, M, D) bank of a state created from `rng`.

  The bank does not move during the contrast warm-up, so this is also its value at the start
  of the contrast phase: the bank-drift diagnostic recomputes it from the seed instead of
  keeping a copy in the checkpointed state.
  """
  return prototypes.init_bank(jax.random.split(rng, 4)[2], num_classes, num_sub, embed_dim)


MEMORIES = ("prototypes", "pixels")


def bank_rows(contrast) -> int:
  """M of the (C, M, D) bank: sub-prototypes, or the pixel memory's size per class."""
  if contrast.memory == "prototypes":
    return contrast.sub_prototypes
  if contrast.memory == "pixels":
    return contrast.pixel_memory_size
  raise ValueError(f"contrast.memory={contrast.memory!r}: use one of {MEMORIES}")


def abstract_train_state(init_fn, rng: Array, sharding) -> TrainState:
  """The TrainState `init_fn(rng)` would build, as ShapeDtypeStructs with `sharding`."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(init_fn, rng))


def per_scan_keys(rng: Array, step: Array, local_batch: int, num_streams: int) -> Array:
  """(num_streams, B_local) keys, a function of (rng, step, global scan index) only."""
  first = jax.lax.axis_index(AXIS) * local_batch
  index = first + jnp.arange(local_batch)
  base = jax.random.fold_in(rng, step)
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(base, i), num_streams))(index)
  return jnp.swapaxes(keys, 0, 1)


def prepare_train_inputs(batch: dict[str, Array], keys: Array, aug: Any, geometry: dict,
                         crop_width: int):
  """Augmented, cropped (B, H, W', 5) raw features and (B, H, W') int32 label / weak label.

  Args:
    batch: the device's batch; keys: (2, B) augmentation and crop keys; aug: config.augment;
    geometry: height, width, fov_* of the range image; crop_width: W' (0 = full width).
  """
  k_aug, k_crop = keys
  if aug.mode == "points":
    n = batch["points"].shape[1]
    valid = jnp.arange(n)[None, :] < batch["num_points"][:, None]
    points = jax.vmap(lambda k, p: augment.augment_points(k, p, aug))(k_aug, batch["points"])
    image, (label, weak) = augment.reproject(
        points, valid, (batch["point_label"], batch["point_weak_label"]), geometry)
  else:
    image = batch["range_image"]
    label, weak = (batch["label"].astype(jnp.int32), batch["weak_label"].astype(jnp.int32))
    if aug.mode == "range":
      image, (label, weak) = jax.vmap(
          lambda k, im, l, w: augment.augment_range(k, im, (l, w), aug))(
              k_aug, image, label, weak)
  if crop_width and crop_width < image.shape[2]:
    image, label, weak = jax.vmap(
        lambda k, a, b, c: augment.random_crop_columns(k, (a, b, c), crop_width))(
            k_crop, image, label, weak)
  return image, label, weak


def gather_labeled(keys: Array, weak: Array, cap: int) -> tuple[Array, Array]:
  """Indices of up to `cap` weakly labeled pixels per scan, a random subset when there are more.

  Args:
    keys: (B,) keys; weak: (B, P) int labels, 0 = unlabeled.
  Returns:
    idx (B, K) int32 into P and valid (B, K) bool, K = min(cap, P).
  """
  num_pixels = weak.shape[1]
  if cap >= num_pixels:
    return jnp.broadcast_to(jnp.arange(num_pixels), weak.shape), weak > 0
  noise = jax.vmap(lambda k: jax.random.uniform(k, (num_pixels,)))(keys)
  score, idx = jax.lax.top_k(jnp.where(weak > 0, noise, -1.), cap)
  return idx, score >= 0


def _take_rows(x: Array, idx: Array) -> Array:
  """x (B, P, ...) gathered at idx (B, K) -> (B, K, ...)."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _gather_global(x: Array) -> Array:
  """(B_local, K, ...) -> (B_global * K, ...), the same (invariant) value on every device."""
  x = jax.lax.all_gather(x, AXIS, tiled=True, to="invarying")
  return x.reshape((-1,) + x.shape[2:])


SUPERVISED_LOSSES = ("focal", "cross_entropy")


def supervised_loss(logits: Array, weak: Array, idx: Array, valid: Array, loss_config,
                    focal_alpha: tuple[float, ...]) -> tuple[Array, dict[str, Array]]:
  """Focal (or, with loss.supervised='cross_entropy', unweighted cross-entropy) + Lovasz-softmax
  on the weakly labeled pixels of the global batch; loss.lovasz_weight=0 skips the Lovasz term.

  Args:
    logits: (B, H, W, C) float32; weak: (B, H, W) int32; idx, valid: (B, K);
    loss_config: config.loss; focal_alpha: (C,) class weights.
  """
  b, c = logits.shape[0], logits.shape[-1]
  probs = jax.nn.softmax(_take_rows(logits.reshape(b, -1, c), idx), axis=-1)
  labels = _take_rows(weak.reshape(b, -1), idx)
  probs, labels, valid = map(_gather_global, (probs, labels, valid))
  if loss_config.supervised == "focal":
    alpha = jnp.asarray(focal_alpha, jnp.float32)
    loss = losses.focal_loss(probs, labels, alpha, gamma=loss_config.focal_gamma, mask=valid)
  elif loss_config.supervised == "cross_entropy":
    loss = losses.cross_entropy_loss(probs, labels, mask=valid)
  else:
    raise ValueError(f"loss.supervised={loss_config.supervised!r}: use one of "
                     f"{SUPERVISED_LOSSES}")
  correct = (jnp.argmax(probs, -1) == labels) & valid
  logged = {loss_config.supervised: loss,
            "labeled_accuracy": correct.sum() / jnp.maximum(valid.sum(), 1),
            "num_labeled": valid.sum()}
  if loss_config.lovasz_weight:  # A static 0 leaves the sort-heavy Lovasz out of the program.
    logged["lovasz"] = losses.lovasz_softmax(probs, labels, ignore=0, mask=valid)
    loss = loss + loss_config.lovasz_weight * logged["lovasz"]
  return loss, logged


def _per_scan(fn: Callable, keys: Array, *arrays: Array):
  """Applies a batched (B, ...) sampling function scan by scan, each scan with its own key."""
  def one(key, *scan):
    return jax.tree.map(lambda o: o[0], fn(key, *(x[None] for x in scan)))
  return jax.vmap(one)(keys, *arrays)


EmbedFn = Callable[[Array], Array]  # (B, K) flat pixel indices -> (B, K, D) unit embeddings.


def _ratio(numerator, denominator) -> Array:
  """A diagnostic as [numerator, denominator] float32: the loop sums both over its window."""
  return jnp.stack([jnp.asarray(numerator, jnp.float32), jnp.asarray(denominator, jnp.float32)])


def _no_ratio() -> Array:
  return jnp.zeros((2,), jnp.float32)


def _labeled(labels: Array, valid: Array, num_classes: int) -> Array:
  return valid & (labels > 0) & (labels < num_classes)


def label_precision(chosen: Array, predicted: Array, full: Array) -> Array:
  """[correct, checked] of the chosen pixels against their full labels, over all devices.

  Pixels whose full label is 0 (unknown) are not checked. chosen: bool; predicted, full: int;
  one shape. Diagnostics only: the full labels never reach a loss.
  """
  checked = chosen & (full > 0)
  correct = checked & (predicted == full)
  return jax.lax.psum(_ratio(correct.sum(), checked.sum()), AXIS)


CONTRAST_DIAGNOSTICS = ("loss", "pseudo_label_precision", "anchor_precision")


def contrast_loss(probs: Array, embed_at: EmbedFn, weak: Array, full: Array, valid_pix: Array,
                  keys: Array, bank: Array, epoch: Array, contrast,
                  derived: settings_lib.DerivedSettings
                  ) -> tuple[Array, Array, dict[str, Array]]:
  """Pseudo-labels, anchors and the Pix2Proto loss (global mean), with their diagnostics.

  Args:
    probs: (B, P, C) stop-gradient probabilities; embed_at: the embedding at chosen pixels;
    weak: (B, P) int32; full: (B, P) int32 full labels (diagnostics only); valid_pix: (B, P)
    bool, the pseudo-label candidates; keys: (2, B) keys; bank: (C, M, D) prototypes or pixel
    memory; epoch: int scalar; contrast: config.contrast.
  Returns:
    (loss, number of valid anchors in the global batch, {name: [numerator, denominator]} of
    CONTRAST_DIAGNOSTICS, empty without contrast.diagnostics).
  """
  k_pseudo, k_anchor = keys
  labels = weak
  if contrast.pseudo_labels:
    ratio = sampling.select_ratio(epoch, derived.num_epochs)
    labels = _per_scan(lambda k, p, w, v: sampling.select_pseudo_labels(k, p, w, v, ratio),
                       k_pseudo, probs, weak, valid_pix)
  weights = sampling.anchor_sampling_weights(probs, contrast.anchor_sampling)
  idx, anchor_valid = _per_scan(
      lambda k, l, w: sampling.sample_anchors(k, l, w, derived.num_classes,
                                              contrast.num_anchors),
      k_anchor, labels, weights)
  b, c, k = idx.shape
  anchors = embed_at(idx.reshape(b, c * k)).reshape(b * c * k, -1)
  anchor_classes = jnp.broadcast_to(jnp.arange(1, c + 1)[None, :, None], idx.shape)
  loss = losses.pix2proto_loss(anchors, anchor_classes.reshape(-1), anchor_valid.reshape(-1),
                               bank, temperature=contrast.temperature,
                               variant=contrast.loss_variant, axis_name=AXIS,
                               by_class=contrast.memory == "pixels")
  diagnostics = {}
  if contrast.diagnostics:
    full_at_anchors = jnp.take_along_axis(full, idx.reshape(b, c * k), axis=1).reshape(idx.shape)
    diagnostics = {
        "loss": _ratio(loss, 1),
        "pseudo_label_precision": label_precision((labels > 0) & (weak == 0), labels, full),
        "anchor_precision": label_precision(anchor_valid, anchor_classes, full_at_anchors)}
  return loss, jax.lax.psum(anchor_valid.sum(), AXIS), diagnostics


def update_bank(bank: Array, embed_at: EmbedFn, weak: Array, idx: Array, valid: Array,
                contrast, momentum: float) -> tuple[Array, Array]:
  """Momentum update of the bank from the (stop-gradient) embeddings of labeled pixels.

  Args:
    bank: (C, M, D); weak: (B, P) int32; idx, valid: (B, K) labeled pixels (`gather_labeled`);
    contrast: config.contrast; momentum: the per-step momentum.
  Returns:
    the new bank and [labeled pixels that moved a sub-prototype (those passing the
    nearest-class rule), labeled pixels] of the global batch.
  """
  emb = jax.lax.stop_gradient(embed_at(idx))
  labels, valid = _take_rows(weak, idx).reshape(-1), valid.reshape(-1)
  new_bank, assignment = prototypes.update_bank(
      bank, emb.reshape(-1, emb.shape[-1]), labels, valid,
      momentum=momentum, num_iters=contrast.sinkhorn_iters, epsilon=contrast.sinkhorn_epsilon,
      axis_name=AXIS)
  moved = jnp.sum(assignment >= 0)
  return new_bank, jax.lax.psum(_ratio(moved, _labeled(labels, valid, bank.shape[0]).sum()), AXIS)


def update_memory(memory: Array, embed_at: EmbedFn, weak: Array, idx: Array,
                  valid: Array) -> tuple[Array, Array]:
  """The pixel memory (contrast.memory='pixels') after the labeled pixels of the global batch
  enter it, in global scan order (`prototypes.push_memory`).

  Args: as `update_bank`, memory (C, M, D).
  Returns:
    the new memory and [labeled pixels kept in it, labeled pixels] of the global batch.
  """
  emb = jax.lax.stop_gradient(embed_at(idx))
  labels = _take_rows(weak, idx)
  emb, labels, valid = map(_gather_global, (emb, labels, valid))
  num_classes, size, _ = memory.shape
  entering = _labeled(labels, valid, num_classes)
  per_class = jax.ops.segment_sum(entering.astype(jnp.int32), jnp.where(entering, labels, 0),
                                  num_classes)
  kept = jnp.minimum(per_class, size).sum()
  return prototypes.push_memory(memory, emb, labels, valid), _ratio(kept, entering.sum())


def embedding_fn(model, coarse: Array, norm: dict[str, Array],
                 image_hw: tuple[int, int]) -> EmbedFn:
  """The model's dense embedding at chosen pixels, from its 'embedding_coarse' output.

  Training reads the embedding at a few thousand pixels per scan (anchors, labeled pixels);
  finishing it only there avoids resizing and normalizing (B, H, W, D) maps and their
  gradients.
  """
  padded = network.padded_size(*image_hw, model.stride)
  return lambda pixels: projection_head.embedding_at(coarse, norm, pixels, padded, image_hw)


def _contrast_term(out: dict[str, Array], params, state: TrainState, model, weak: Array,
                   full: Array, valid_pix: Array, keys: Array, contrast_on: Array, config,
                   derived: settings_lib.DerivedSettings
                   ) -> tuple[Array, Array, dict[str, Array]]:
  """The Pix2Proto loss of the batch once the contrast warm-up is over (else 0, no anchors)."""
  b, p = weak.shape[0], weak.shape[1] * weak.shape[2]
  embed_at = embedding_fn(model, out["embedding_coarse"], params["embed_norm"], weak.shape[1:3])
  probs = jax.lax.stop_gradient(jax.nn.softmax(out["logits"], -1)).reshape(b, p, -1)
  epoch = state.step // derived.steps_per_epoch
  args = (probs, weak.reshape(b, p), full.reshape(b, p), valid_pix.reshape(b, p), keys,
          state.bank, epoch)
  names = CONTRAST_DIAGNOSTICS if config.contrast.diagnostics else ()
  return jax.lax.cond(
      contrast_on, lambda a: contrast_loss(a[0], embed_at, *a[1:], config.contrast, derived),
      lambda a: (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                 {name: _no_ratio() for name in names}), args)


def _bank_update(state: TrainState, embed_at: EmbedFn, weak: Array, lab: tuple[Array, Array],
                 contrast_on: Array, contrast, momentum: float) -> tuple[Array, Array]:
  """The bank (or pixel memory) after this step, which moves once the warm-up is over unless
  contrast.update_bank is False, and the bank_update_fraction diagnostic."""
  if not contrast.update_bank:  # Frozen, as the published trainer runs: nothing ever moves.
    labeled = _labeled(_take_rows(weak, lab[0]), lab[1], state.bank.shape[0]).sum()
    return state.bank, jax.lax.psum(_ratio(0, jnp.where(contrast_on, labeled, 0)), AXIS)
  if contrast.memory == "pixels":
    update = lambda: update_memory(state.bank, embed_at, weak, *lab)
  else:
    update = lambda: update_bank(state.bank, embed_at, weak, *lab, contrast, momentum)
  return jax.lax.cond(contrast_on, update, lambda: (state.bank, _no_ratio()))


def encoder_norm(grads: Any, model) -> Array:
  """L2 norm of a gradient over the model's encoder parameters (`encoder_modules`)."""
  return optax.tree.norm({k: grads[k] for k in model.encoder_modules if k in grads})


def bank_drift(bank: Array, initial: Array, classes: tuple[int, ...]) -> Array:
  """[sum, count] of the cosines between the rows of `classes` and their initial values."""
  rows = jnp.asarray(classes, jnp.int32)
  cosines = jnp.sum(bank[rows] * initial[rows], axis=-1)
  return _ratio(cosines.sum(), cosines.size)


def apply_oracle_ignore_mask(x: Array, valid: Array, label: Array) -> tuple[Array, Array]:
  """config.oracle_ignore_mask, what the published trainer does with the *full* labels: the
  normalized input is zeroed, and pixels leave the pseudo-label candidates, wherever the full
  annotation says 0 (unlabeled). x: (B, H, W, 5); valid, label: (B, H, W)."""
  known = label > 0
  return x * known[..., None].astype(x.dtype), valid & known


class StepInputs(NamedTuple):
  """What a step feeds the network and its losses, from the state's rng and step alone."""
  x: Array  # (B, H, W', 5) normalized network input.
  label: Array  # (B, H, W') int32 full labels: diagnostics (or the oracle mask) only.
  weak: Array  # (B, H, W') int32 weak labels.
  valid_pix: Array  # (B, H, W') bool pseudo-label candidates.
  lab: tuple[Array, Array]  # The labeled-pixel gather (`gather_labeled`).
  contrast_keys: Array  # (2, B) pseudo-label and anchor keys.
  dropout_rng: Array
  contrast_on: Array  # The contrast warm-up is over.


def step_inputs(state: TrainState, batch: dict[str, Array], config,
                derived: settings_lib.DerivedSettings) -> StepInputs:
  local_batch = next(iter(batch.values())).shape[0]
  k_aug, k_crop, k_lab, k_pseudo, k_anchor = per_scan_keys(state.rng, state.step, local_batch, 5)
  image, label, weak = prepare_train_inputs(batch, (k_aug, k_crop), config.augment,
                                            derived.geometry_dict, config.train_crop_width)
  x = augment.normalize(image, jnp.asarray(derived.mean), jnp.asarray(derived.std))
  valid_pix = image[..., 0] > 0
  if config.oracle_ignore_mask:
    x, valid_pix = apply_oracle_ignore_mask(x, valid_pix, label)
  dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                   jax.lax.axis_index(AXIS) + (1 << 20))
  return StepInputs(
      x=x, label=label, weak=weak, valid_pix=valid_pix,
      lab=gather_labeled(k_lab, weak.reshape(weak.shape[0], -1), derived.max_labeled_pixels),
      contrast_keys=jnp.stack([k_pseudo, k_anchor]), dropout_rng=dropout_rng,
      contrast_on=state.step >= derived.contrast_warmup_steps)


def loss_terms_fn(state: TrainState, inputs: StepInputs, model, config,
                  derived: settings_lib.DerivedSettings) -> Callable:
  """`params -> ((supervised, contrast.weight * Pix2Proto), (batch_stats, coarse embedding,
  logged scalars))`: the two terms apart, so that their gradients can be taken apart."""
  use_contrast = config.contrast.enabled

  def loss_terms(params):
    out, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, inputs.x,
                               train=True, coarse_embedding=use_contrast,
                               rngs={"dropout": inputs.dropout_rng}, mutable=["batch_stats"])
    loss, logged = supervised_loss(out["logits"], inputs.weak, *inputs.lab, config.loss,
                                   derived.focal_alpha)
    for aux in out.get("aux_logits", ()):
      aux_loss, _ = supervised_loss(aux, inputs.weak, *inputs.lab, config.loss,
                                    derived.focal_alpha)
      loss = loss + config.loss.aux_weight * aux_loss
    contrast = jnp.zeros((), jnp.float32)
    if use_contrast:
      contrast, n_anchors, diagnostics = _contrast_term(
          out, params, state, model, inputs.weak, inputs.label, inputs.valid_pix,
          inputs.contrast_keys, inputs.contrast_on, config, derived)
      logged.update(contrast=contrast, num_anchors=n_anchors, diagnostics=diagnostics)
    terms = (loss, config.contrast.weight * contrast)
    logged["loss"] = terms[0] + terms[1]
    return terms, (mutated["batch_stats"], out.get("embedding_coarse"), logged)

  return loss_terms


def train_step(state: TrainState, batch: dict[str, Array], *, model, tx, schedule, config,
               derived: settings_lib.DerivedSettings) -> tuple[TrainState, dict[str, Array]]:
  """One optimization step on this device's share of the global batch (under shard_map).

  Args:
    state: the replicated train state; batch: this device's scans; model, tx, schedule: the
    network, optimizer and learning-rate schedule; config: the frozen run config; derived: the
    run's derived settings.
  Returns:
    the new state and the step's global scalars; with the contrast module and
    contrast.diagnostics, 'diagnostics' maps the names of the per-step training diagnostics
    to their [numerator, denominator] (both 0 where the step has no value for one).
  """
  inputs = step_inputs(state, batch, config, derived)
  _, backward, (batch_stats, coarse, logged) = jax.vjp(
      loss_terms_fn(state, inputs, model, config, derived), state.params, has_aux=True)
  (grads,) = backward((jnp.ones((), jnp.float32), jnp.ones((), jnp.float32)))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  bank = state.bank
  if config.contrast.enabled:
    weak = inputs.weak
    embed_at = embedding_fn(model, coarse, state.params["embed_norm"], weak.shape[1:3])
    bank, fraction = _bank_update(state, embed_at, weak.reshape(weak.shape[0], -1), inputs.lab,
                                  inputs.contrast_on, config.contrast, derived.bank_momentum)
    if config.contrast.diagnostics:
      logged["diagnostics"]["bank_update_fraction"] = fraction
  logged.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state, bank=bank)
  return new_state, logged


def gradient_diagnostics(state: TrainState, batch: dict[str, Array], *, model, config,
                         derived: settings_lib.DerivedSettings) -> dict[str, Array]:
  """grad_ratio and bank_drift of the step `state` is about to take on `batch` (per device).

  grad_ratio: the L2 norm over the encoder's parameters of the gradient of the contrastive
  term (contrast.weight * Pix2Proto, as it enters the loss) over that of the supervised
  terms; bank_drift: the mean cosine between the bank's rows of the weakly labeled classes and
  their values at the start of the contrast phase. A program of its own, which changes nothing,
  run by the loop on logging steps of the contrast phase only. Each term's gradient is taken
  on its own, so that autodiff leaves out what the term does not reach (the decoder for the
  contrastive term, the projection head for the supervised one). (As a lax.cond or a loop
  inside the train step, the extra backward pass ran several times slower on XLA:CPU:
  benchmarks/README.md.)
  Returns {name: [numerator, denominator]}, global values.
  """
  inputs = step_inputs(state, batch, config, derived)
  terms = loss_terms_fn(state, inputs, model, config, derived)
  supervised, contrast = (
      encoder_norm(jax.grad(lambda p, i=i: terms(p)[0][i])(state.params), model) for i in (0, 1))
  ratio = contrast / jnp.where(supervised > 0, supervised, 1)
  initial = initial_bank(jax.random.PRNGKey(config.seed), *state.bank.shape)
  return {"grad_ratio": _ratio(ratio, supervised > 0),
          "bank_drift": bank_drift(state.bank, initial, derived.weak_label_classes)}


def point_predictions(pred: Array, row: Array, col: Array) -> Array:
  """pred (B, H, W) -> per-point labels (B, N) through each point's pixel."""
  b, _, width = pred.shape
  return jnp.take_along_axis(pred.reshape(b, -1), row * width + col, axis=1)


def eval_step(variables: dict[str, Any], batch: dict[str, Array], *, model,
              derived: settings_lib.DerivedSettings,
              knn: Callable | None = None, oracle_ignore_mask: bool = False) -> dict[str, Array]:
  """Point and pixel confusion matrices of this device's scans, summed over all devices.

  With `oracle_ignore_mask` (config.oracle_ignore_mask) the input is zeroed where the full label
  is 0, as the published trainer validates.

  Returns dict with 'points' and 'pixels' (C, C) int32 global confusion matrices, the global
  'num_scans' (padding excluded) and the local 'pred' (B, H, W) int32 pixel predictions (never
  the ignore class 0).
  """
  x = augment.normalize(batch["range_image"], jnp.asarray(derived.mean),
                        jnp.asarray(derived.std))
  if oracle_ignore_mask:
    x = x * (batch["label"] > 0)[..., None].astype(x.dtype)
  logits = model.apply(variables, x, train=False)["logits"]
  pred = jnp.argmax(logits[..., 1:], axis=-1).astype(jnp.int32) + 1
  n = batch["point_row"].shape[1]
  point_valid = ((jnp.arange(n)[None, :] < batch["num_points"][:, None])
                 & batch["example_valid"][:, None])
  if knn is None:
    point_pred = point_predictions(pred, batch["point_row"], batch["point_col"])
  else:
    point_pred = knn(batch, pred, point_valid)
  c = derived.num_classes
  label = batch["point_label"].astype(jnp.int32)
  conf_points = metrics.confusion_matrix(point_pred, label, c, mask=point_valid & (label > 0))
  pixel_label = batch["label"].astype(jnp.int32)
  conf_pixels = metrics.confusion_matrix(
      pred, pixel_label, c, mask=(pixel_label > 0) & batch["example_valid"][:, None, None])
  num_scans = jnp.sum(batch["example_valid"].astype(jnp.int32))
  return {"points": jax.lax.psum(conf_points, AXIS), "pixels": jax.lax.psum(conf_pixels, AXIS),
          "num_scans": jax.lax.psum(num_scans, AXIS), "pred": pred}
