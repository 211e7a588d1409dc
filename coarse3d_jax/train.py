"""The training job: setup, the jitted data-parallel steps, the loop, evaluation and logging."""
import contextlib
import dataclasses
import functools
import math
import os
import time
from typing import Any

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from coarse3d_jax import checkpoints
from coarse3d_jax import datasets
from coarse3d_jax import evaluation
from coarse3d_jax import export
from coarse3d_jax import input_pipeline
from coarse3d_jax import knn as knn_lib
from coarse3d_jax import losses
from coarse3d_jax import models
from coarse3d_jax import train_step as ts
from coarse3d_jax import visualize

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TrainingError(RuntimeError):
  """A run that cannot start or must stop (empty split, bad batch size, NaN loss)."""


@dataclasses.dataclass
class Setup:
  """What the loop and the evaluation need, derived once from the config and the data."""
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  builder: Any
  mesh: jax.sharding.Mesh
  model: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  settings: ts.StepSettings
  steps_per_epoch: int
  total_steps: int
  local_batch: int
  local_eval_batch: int


def make_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(jax.devices()), (ts.AXIS,))


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  return models.create_model(
      config.model.name, num_classes=num_classes, width=config.model.width,
      embed_dim=config.model.embed_dim, dtype=DTYPES[config.model.dtype], bn_axis_name=ts.AXIS,
      projection_head=config.contrast.enabled, dropout_rate=config.model.dropout_rate)


def normalization(config, info: datasets.DatasetInfo, stats: dict) -> tuple[np.ndarray, ...]:
  """(mean, std) of the 5 input channels: the reference constants or the train-split stats."""
  if config.normalization == "reference":
    return np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
  split = stats["splits"][config.train_split]
  return np.asarray(split["mean"], np.float32), np.maximum(np.asarray(split["std"]), 1e-6)


def local_batch_size(global_batch: int, what: str) -> int:
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch % devices:
    raise TrainingError(f"{what}={global_batch} is not divisible by the {devices} devices")
  return global_batch // processes


def make_optimizer(config, steps_per_epoch: int, total_steps: int):
  warmup = int(round(config.optimizer.warmup_epochs * steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.optimizer.lr, max(warmup, 1), max(total_steps, warmup + 1))
  tx = optax.adamw(schedule, b1=config.optimizer.b1, b2=config.optimizer.b2,
                   eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)
  return tx, schedule


def make_settings(config, info, stats, steps_per_epoch: int, total_steps: int
                  ) -> ts.StepSettings:
  mean, std = normalization(config, info, stats)
  weak_counts = np.asarray(stats["splits"][config.train_split]["weak_class_counts"], np.float64)
  alpha = np.asarray(losses.focal_alpha(jnp.asarray(weak_counts, jnp.float32)))
  warmup = config.contrast.warmup_steps
  if warmup < 0:
    warmup = int(round(config.contrast.warmup_epochs * steps_per_epoch))
  geometry = dict(height=int(stats["height"]), width=int(stats["width"]), fov_up=info.fov_up,
                  fov_down=info.fov_down, fov_left=info.fov_left, fov_right=info.fov_right)
  return ts.StepSettings(
      num_classes=info.num_classes, geometry=tuple(geometry.items()),
      mean=tuple(map(float, mean)), std=tuple(map(float, std)),
      focal_alpha=tuple(map(float, alpha)), focal_gamma=config.loss.focal_gamma,
      lovasz_weight=config.loss.lovasz_weight, aux_weight=config.loss.aux_weight,
      max_labeled_pixels=labeled_pixel_cap(config, stats),
      crop_width=config.train_crop_width,
      augment_mode=config.augment.mode, augment=config.augment,
      # The pseudo-label schedule runs over the epochs actually trained (num_train_steps wins).
      steps_per_epoch=steps_per_epoch, num_epochs=max(1, -(-total_steps // steps_per_epoch)),
      contrast_enabled=config.contrast.enabled, contrast_weight=config.contrast.weight,
      contrast_warmup_steps=warmup, temperature=config.contrast.temperature,
      num_anchors=config.contrast.num_anchors, momentum=config.contrast.momentum,
      sinkhorn_iters=config.contrast.sinkhorn_iters,
      sinkhorn_epsilon=config.contrast.sinkhorn_epsilon,
      loss_variant=config.contrast.loss_variant, pseudo_labels=config.contrast.pseudo_labels)


def labeled_pixel_cap(config, stats: dict) -> int:
  """Static number of weakly labeled pixels per scan that focal, Lovasz and the bank see.

  config.max_labeled_pixels, or with 0 (auto) four times the mean weakly labeled points of a
  (cropped) training scan, rounded up to a multiple of 256 and at most H x W': at 0.1% labels
  a few hundred instead of thousands of mostly empty slots. A scan with more labeled pixels
  than the cap contributes a random subset of them each step: say so when that is the norm.
  """
  split = stats["splits"][config.train_split]
  height, full_width = int(stats["height"]), int(stats["width"])
  width = config.train_crop_width or full_width
  per_scan = split["num_weak_points"] / max(split["num_scans"], 1) * width / full_width
  cap = config.max_labeled_pixels
  if cap <= 0:
    cap = min(height * width, 256 * max(1, math.ceil(4 * per_scan / 256)))
    logging.info("max_labeled_pixels: auto = %d per scan (%.0f weakly labeled points per "
                 "training scan on average)", cap, per_scan)
  elif per_scan > cap:
    logging.warning(
        "about %d weakly labeled points per (cropped) training scan, but max_labeled_pixels=%d: "
        "the losses and the bank update use a random subset of them each step; raise "
        "--config.max_labeled_pixels (up to H x W, or 0 for auto) for exact full-label losses",
        per_scan, cap)
  return cap


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  if config.augment.mode not in ("points", "range", "none"):
    raise TrainingError(f"augment.mode={config.augment.mode!r}: use points, range or none")
  info = datasets.get_info(config.dataset)
  builder = input_pipeline.load_builder(config.data_dir)
  stats = input_pipeline.load_stats(config.data_dir)
  num_train = input_pipeline.num_examples(builder, config.train_split)
  steps_per_epoch = input_pipeline.steps_per_epoch(num_train, config)
  if steps_per_epoch == 0:
    raise TrainingError(
        f"{config.data_dir}: split {config.train_split!r} has {num_train} scans, fewer than one "
        f"global batch of {config.batch_size}; nothing to train on")
  total = config.num_train_steps if config.num_train_steps > 0 else (
      config.num_epochs * steps_per_epoch)
  tx, schedule = make_optimizer(config, steps_per_epoch, total)
  return Setup(
      config=config, info=info, builder=builder, mesh=make_mesh(),
      model=build_model(config, info.num_classes), tx=tx, schedule=schedule,
      settings=make_settings(config, info, stats, steps_per_epoch, total),
      steps_per_epoch=steps_per_epoch, total_steps=total,
      local_batch=local_batch_size(config.batch_size, "batch_size"),
      local_eval_batch=local_batch_size(config.eval_batch_size, "eval_batch_size"))


def _init_fn(setup: Setup):
  config, geom = setup.config, dict(setup.settings.geometry)
  width = setup.settings.crop_width or geom["width"]
  return functools.partial(
      ts.create_train_state, model=setup.model, tx=setup.tx,
      image_shape=(1, geom["height"], width, 5), num_classes=setup.info.num_classes,
      num_sub=config.contrast.sub_prototypes, embed_dim=config.model.embed_dim)


def initial_state(setup: Setup) -> ts.TrainState:
  """A fresh state, replicated over the mesh; identical on every process (same seed)."""
  key = jax.random.PRNGKey(setup.config.seed)
  lowered = jax.jit(_init_fn(setup), out_shardings=NamedSharding(setup.mesh, P())).lower(key)
  # Initialization is ~120 threefry draws that run once; LLVM's optimizer takes 4x longer
  # on them (~20 s on a CPU) than without it, for the same bits.
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(key)


def abstract_state(setup: Setup) -> ts.TrainState:
  """The structure, shapes and (replicated) shardings of the state; a restore target."""
  return ts.abstract_train_state(_init_fn(setup), jax.random.PRNGKey(setup.config.seed),
                                 NamedSharding(setup.mesh, P()))


def init_from_torch(setup: Setup, state: ts.TrainState) -> ts.TrainState:
  """config.model.init_from: the variables of a reference PyTorch `.pth` (a released COARSE3D
  model, or an encoder-only ImageNet checkpoint) replace the matching initial ones."""
  path = setup.config.model.init_from
  if not path:
    return state
  from coarse3d_jax.models import convert_torch  # pylint: disable=g-import-not-at-top
  config = setup.config
  try:
    converted = convert_torch.convert_state_dict(
        config.model.name, convert_torch.load_torch_checkpoint(path), config.model.width,
        num_classes=setup.info.num_classes, embed_dim=config.model.embed_dim, strict=False)
    merged = convert_torch.merge_variables(
        {"params": state.params, "batch_stats": state.batch_stats}, converted)
  except (ImportError, convert_torch.ConversionError) as e:
    raise TrainingError(f"model.init_from={path}: {e}") from e
  replicated = jax.device_put(merged, NamedSharding(setup.mesh, P()))
  count = sum(np.size(x) for x in jax.tree.leaves(converted))
  logging.info("Initialized %d values from %s", count, path)
  return state.replace(params=replicated["params"], batch_stats=replicated["batch_stats"])


def compile_train_step(setup: Setup):
  step = functools.partial(ts.train_step, model=setup.model, tx=setup.tx,
                           schedule=setup.schedule, s=setup.settings)
  sharded = jax.shard_map(step, mesh=setup.mesh, in_specs=(P(), P(ts.AXIS)),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


def compile_eval_step(setup: Setup):
  """Evaluation step; with config.eval.knn, points get RangeNet++ KNN labels."""
  knn = None
  if setup.config.eval.knn:
    knn = functools.partial(knn_lib.knn_from_batch, num_classes=setup.info.num_classes)
  step = functools.partial(ts.eval_step, model=setup.model, s=setup.settings, knn=knn)
  sharded = jax.shard_map(step, mesh=setup.mesh, in_specs=(P(), P(ts.AXIS)),
                          out_specs={"points": P(), "pixels": P(), "num_scans": P(),
                                     "pred": P(ts.AXIS)})
  return jax.jit(sharded)


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global arrays sharded over the batch axis."""
  sharding = NamedSharding(mesh, P(ts.AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items() if k != "scan_id"}


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in batch order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def evaluate(setup: Setup, state: ts.TrainState, p_eval, split: str | None = None,
             picture_fn=None) -> dict[str, Any]:
  """Point-level (official) and pixel-level mIoU over a whole split.

  `picture_fn(batch, pred)` is called on this process's first batches, for pictures.
  """
  config = setup.config
  split = split or config.eval_split
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  ds = input_pipeline.eval_dataset(setup.builder, split, setup.local_eval_batch,
                                   config.max_points)
  conf_points = conf_pixels = np.zeros((setup.info.num_classes,) * 2, np.int64)
  start, num_scans = time.time(), 0
  for batch in ds.as_numpy_iterator():
    out = p_eval(variables, to_global(batch, setup.mesh))
    # int64 on the host: a whole training split overflows int32 point counts.
    conf_points = conf_points + np.asarray(out["points"], np.int64)
    conf_pixels = conf_pixels + np.asarray(out["pixels"], np.int64)
    num_scans += int(out["num_scans"])
    if picture_fn is not None:
      picture_fn(batch, _local_rows(out["pred"]))
  results = evaluation.results_from_confusion(setup.info, conf_points, num_scans)
  _, pixel_miou = evaluation.iou_from_confusion(
      conf_pixels, evaluation.metric_ignore(setup.info), evaluation.protocol_for(setup.info.name))
  results.update(step=int(state.step), split=split, pixel_miou=float(pixel_miou),
                 scans_per_second=num_scans / (time.time() - start))
  return results


def picture_writer(setup: Setup, writer, step: int):
  """A `picture_fn` that sends the first config.eval.num_pictures scans to TensorBoard."""
  remaining = [setup.config.eval.num_pictures if jax.process_index() == 0 else 0]
  colors = setup.info.colors_rgb

  def write(batch: dict[str, np.ndarray], pred: np.ndarray) -> None:
    count = min(remaining[0], int(batch["example_valid"].sum()))
    if count <= 0:
      return
    images = np.stack([visualize.scan_panels(
        colors, batch["range_image"][i, ..., 0], pred[i], batch["label"][i],
        batch["weak_label"][i], row_scale=2) for i in range(count)])
    writer.write_images(step, {"eval/scans": images})
    remaining[0] -= count

  return write


def report_evaluation(setup: Setup, results: dict[str, Any], workdir: str, writer) -> None:
  """results.json, TensorBoard scalars and the per-class table (point-level mIoU)."""
  table = evaluation.report(setup.info, results)
  logging.info("Evaluation on %s at step %d (point-level, official protocol):\n%s\n"
               "pixel-level mIoU (2D, not the benchmark metric): %.4f",
               results["split"], results["step"], table, results["pixel_miou"])
  scalars = {"eval/miou": results["miou"], "eval/pixel_miou": results["pixel_miou"],
             "eval/scans_per_second": results["scans_per_second"]}
  scalars.update({f"eval_iou/{k}": v for k, v in results["per_class_iou"].items()})
  writer.write_scalars(results["step"], scalars)
  if jax.process_index() == 0:
    summary = {k: v for k, v in results.items() if k != "confusion_matrix"}
    export.atomic_write_json(os.path.join(workdir, "results.json"), summary, indent=2,
                           sort_keys=True)


class Progress:
  """A progress line with loss, rate (scans/s) and ETA at every log step.

  The rate counts training time only: time spent inside `paused()` (evaluations, checkpoint
  saves) is left out, so the line after an evaluation does not report a spurious slowdown.
  """

  def __init__(self, start_step: int, total_steps: int, global_batch: int):
    self.total, self.global_batch = total_steps, global_batch
    self.last_step, self.last_time, self.excluded = start_step, time.time(), 0.0

  @contextlib.contextmanager
  def paused(self):
    start = time.time()
    try:
      yield
    finally:
      self.excluded += time.time() - start

  def __call__(self, step: int, loss: float) -> float:
    now = time.time()
    elapsed = now - self.last_time - self.excluded
    rate = (step - self.last_step) * self.global_batch / max(elapsed, 1e-9)
    eta = (self.total - step) * self.global_batch / max(rate, 1e-9)
    logging.info("step %d/%d | loss %.4f | %.2f scans/s | ETA %s", step, self.total, loss,
                 rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
    self.last_step, self.last_time, self.excluded = step, now, 0.0
    return rate


def flush_metrics(pending: list[dict], step: int, writer, progress: Progress,
                  last_saved: int | None) -> None:
  """Averages the buffered step metrics, stops on a non-finite loss, logs the rest."""
  if not pending:
    return
  host = jax.device_get(pending)
  losses_seen = np.asarray([m["loss"] for m in host], np.float64)
  if not np.all(np.isfinite(losses_seen)):
    bad = step - len(host) + 1 + int(np.argmin(np.isfinite(losses_seen)))
    kept = f"step {last_saved}" if last_saved is not None else "none saved yet"
    raise TrainingError(f"loss is {losses_seen[~np.isfinite(losses_seen)][0]} at step {bad}: "
                        f"stopping; the last checkpoint ({kept}) is kept")
  means = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
  means["train/scans_per_second"] = progress(step, means["train/loss"])
  writer.write_scalars(step, means)
  pending.clear()


def write_data_info(workdir: str, setup: Setup) -> None:
  """What inference needs besides the checkpoint: the input normalization and geometry."""
  s = setup.settings
  export.atomic_write_json(os.path.join(workdir, "data_info.json"), {
      "dataset": setup.info.name, "mean": list(s.mean), "std": list(s.std),
      "geometry": dict(s.geometry), "num_classes": s.num_classes}, indent=2, sort_keys=True)


def _is_due(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_step: int | None = None) -> dict[str, Any] | None:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  `stop_after_step` ends the loop like a kill would (no final save or evaluation); tests use it.
  Returns the last evaluation results, or None when stopped early.
  """
  setup = make_setup(config)
  if jax.process_index() == 0:
    checkpoints.check_or_save_config(workdir, config)
    write_data_info(workdir, setup)
  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  state = ckpt.restore(abstract_state(setup))
  if state is None:
    state = init_from_torch(setup, initial_state(setup))
  start = int(state.step)
  if start:
    logging.info("Resuming %s from step %d", workdir, start)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})
  p_train, p_eval = compile_train_step(setup), compile_eval_step(setup)
  batches = input_pipeline.train_iterator(setup.builder, config, start, setup.steps_per_epoch)
  progress = Progress(start, setup.total_steps, config.batch_size)
  pending, results, last_saved = [], None, ckpt.latest.latest_step()
  for step in range(start + 1, setup.total_steps + 1):
    state, metrics = p_train(state, to_global(next(batches), setup.mesh))
    pending.append(metrics)
    save = _is_due(step, config.checkpoint_every_steps, setup.total_steps)
    run_eval = _is_due(step, config.eval_every_steps, setup.total_steps)
    if save or run_eval or _is_due(step, config.log_every_steps, setup.total_steps):
      flush_metrics(pending, step, writer, progress, last_saved)
    with progress.paused():
      if save:
        ckpt.save(step, state)
        last_saved = step
      if run_eval:
        results = evaluate(setup, state, p_eval, picture_fn=picture_writer(setup, writer, step))
        report_evaluation(setup, results, workdir, writer)
        ckpt.save_if_best(step, state, results["miou"])
    if stop_after_step is not None and step >= stop_after_step:
      writer.flush()
      ckpt.close()
      return None
  if results is None:  # Nothing left to train: evaluate what was restored (or imported).
    if ckpt.latest.latest_step() is None:
      ckpt.save(int(state.step), state)  # E.g. num_epochs=0 with init_from: for predict.
    results = evaluate(setup, state, p_eval)
    report_evaluation(setup, results, workdir, writer)
  writer.flush()
  ckpt.close()
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        which: str | int = "latest") -> dict[str, Any]:
  """--mode eval: evaluates a saved checkpoint on config.eval_split, writes results.json."""
  setup = make_setup(config)
  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  state = ckpt.restore(abstract_state(setup), which)
  ckpt.close()
  if state is None:
    raise checkpoints.CheckpointError(f"{workdir}: no {which} checkpoint to evaluate")
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  results = evaluate(setup, state, compile_eval_step(setup),
                     picture_fn=picture_writer(setup, writer, int(state.step)))
  report_evaluation(setup, results, workdir, writer)
  writer.flush()
  return results
