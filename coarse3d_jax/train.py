"""The training job: set-up from the config and the data, the loop, evaluation, checkpoints.

The per-device steps are in `train_step`, their jitted SPMD programs in `programs`, what the
run reports in `reporting`; this module reads the data (tf.data) and runs the loop.
"""
import dataclasses
import time
from typing import Any

from absl import logging
from clu import metric_writers
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from coarse3d_jax import checkpoints
from coarse3d_jax import input_pipeline
from coarse3d_jax import metrics
from coarse3d_jax import programs
from coarse3d_jax import reporting
from coarse3d_jax import sampling
from coarse3d_jax import settings as settings_lib
from coarse3d_jax import train_step as ts
from coarse3d_jax.data import dataset_config
from coarse3d_jax.data import datasets
from coarse3d_jax.data.errors import DataError

TrainingError = reporting.TrainingError


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
  derived: settings_lib.DerivedSettings
  total_steps: int
  local_batch: int
  local_eval_batch: int

  @property
  def steps_per_epoch(self) -> int:
    return self.derived.steps_per_epoch

  @property
  def init_fn(self):
    return programs.state_init_fn(self.config, self.model, self.tx, self.derived)


def local_batch_size(global_batch: int, what: str) -> int:
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch % devices:
    raise TrainingError(f"{what}={global_batch} is not divisible by the {devices} devices")
  return global_batch // processes


# Config keys that name one of a few behaviours, and their choices.
CHOICES = {
    "augment.mode": ("points", "range", "none"),
    "loss.supervised": ts.SUPERVISED_LOSSES,
    "contrast.memory": ts.MEMORIES,
    "contrast.anchor_sampling": sampling.ANCHOR_SAMPLING,
}


def check_choices(config: ml_collections.ConfigDict) -> None:
  """A one-line TrainingError naming the key whose value is none of its CHOICES."""
  for key, choices in CHOICES.items():
    section, name = key.split(".")
    if config[section][name] not in choices:
      raise TrainingError(f"{key}={config[section][name]!r}: use one of {', '.join(choices)}")


def dataset_info(config: ml_collections.ConfigDict) -> datasets.DatasetInfo:
  """The classes, maps and sensor of the data: data_prep's dataset.json in config.data_dir, or
  for a directory converted before it existed, the built-in table of config.dataset."""
  try:
    info = dataset_config.load_description(config.data_dir)
  except DataError as e:
    raise TrainingError(str(e)) from None
  if info is None:
    return datasets.get_info(config.dataset)
  if info.name != config.dataset:
    raise TrainingError(f"{config.data_dir} holds {info.name!r} data, but config.dataset="
                        f"{config.dataset!r}; pass --config.dataset={info.name}")
  return info


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  check_choices(config)
  builder = input_pipeline.load_builder(config.data_dir)
  info = dataset_info(config)
  stats = input_pipeline.load_stats(config.data_dir)
  num_train = input_pipeline.num_examples(builder, config.train_split)
  steps_per_epoch = input_pipeline.steps_per_epoch(num_train, config)
  if steps_per_epoch == 0:
    raise TrainingError(
        f"{config.data_dir}: split {config.train_split!r} has {num_train} scans, fewer than one "
        f"global batch of {config.batch_size}; nothing to train on")
  total = config.num_train_steps if config.num_train_steps > 0 else (
      config.num_epochs * steps_per_epoch)
  tx, schedule = programs.make_optimizer(config, steps_per_epoch, total)
  return Setup(
      config=config, info=info, builder=builder, mesh=programs.make_mesh(),
      model=programs.build_model(config, info.num_classes), tx=tx, schedule=schedule,
      derived=settings_lib.derive(config, info, stats, steps_per_epoch, total), total_steps=total,
      local_batch=local_batch_size(config.batch_size, "batch_size"),
      local_eval_batch=local_batch_size(config.eval_batch_size, "eval_batch_size"))


def initial_state(setup: Setup) -> ts.TrainState:
  return programs.initial_state(setup.init_fn, setup.config.seed, setup.mesh)


def abstract_state(setup: Setup) -> ts.TrainState:
  return programs.abstract_state(setup.init_fn, setup.config.seed, setup.mesh)


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
  return programs.compile_train_step(setup.model, setup.tx, setup.schedule,
                                     ml_collections.FrozenConfigDict(setup.config),
                                     setup.derived, setup.mesh)


def compile_diagnostics_step(setup: Setup):
  """The gradient-ratio and bank-drift program, or None when the run has no diagnostics."""
  contrast = setup.config.contrast
  if not (contrast.enabled and contrast.diagnostics):
    return None
  return programs.compile_diagnostics_step(setup.model,
                                           ml_collections.FrozenConfigDict(setup.config),
                                           setup.derived, setup.mesh)


def gradient_diagnostics_due(setup: Setup, step: int) -> bool:
  """Whether step `step` (from 1) is a logging step of the contrast phase."""
  every = setup.config.log_every_steps
  return every > 0 and step % every == 0 and step > setup.derived.contrast_warmup_steps


def compile_eval_step(setup: Setup):
  return programs.compile_eval_step(setup.model, setup.derived, setup.mesh,
                                    knn=setup.config.eval.knn,
                                    oracle_ignore_mask=setup.config.oracle_ignore_mask)


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
    out = p_eval(variables, programs.to_global(batch, setup.mesh))
    # int64 on the host: a whole training split overflows int32 point counts.
    conf_points = conf_points + np.asarray(out["points"], np.int64)
    conf_pixels = conf_pixels + np.asarray(out["pixels"], np.int64)
    num_scans += int(out["num_scans"])
    if picture_fn is not None:
      picture_fn(batch, programs.local_rows(out["pred"]))
  results = metrics.results_from_confusion(setup.info, conf_points, num_scans)
  _, pixel_miou = metrics.iou_from_confusion(
      conf_pixels, metrics.metric_ignore(setup.info), metrics.protocol_for(setup.info.name))
  results.update(step=int(state.step), split=split, pixel_miou=float(pixel_miou),
                 scans_per_second=num_scans / (time.time() - start))
  return results


def _pictures(setup: Setup, writer, step: int):
  return reporting.picture_writer(setup.info, setup.config.eval.num_pictures, writer, step)


def _report(setup: Setup, results: dict[str, Any], workdir: str, writer) -> None:
  reporting.report_evaluation(setup.info, results, workdir, writer)


def _train_step(setup: Setup, compiled: tuple[Any, Any], state: ts.TrainState,
                batch: dict[str, np.ndarray], step: int) -> tuple[ts.TrainState, dict]:
  """Step `step` (from 1) on a host batch, with the gradient diagnostics on their steps."""
  p_train, p_diagnostics = compiled
  batch = programs.to_global(batch, setup.mesh)
  measured = {}
  if p_diagnostics is not None and gradient_diagnostics_due(setup, step):
    measured = p_diagnostics(state, batch)  # Before the step, which donates the state.
  state, logged = p_train(state, batch)
  if measured:
    logged["diagnostics"].update(measured)
  return state, logged


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
    reporting.write_data_info(workdir, setup.info.name, setup.derived, setup.info)
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
  p_diagnostics = compile_diagnostics_step(setup)
  batches = input_pipeline.train_iterator(setup.builder, config, start, setup.steps_per_epoch)
  progress = reporting.Progress(start, setup.total_steps, config.batch_size)
  pending, results, last_saved = [], None, ckpt.latest.latest_step()
  diagnostics = {}  # The last logged value of each training diagnostic, for results.json.
  for step in range(start + 1, setup.total_steps + 1):
    state, logged = _train_step(setup, (p_train, p_diagnostics), state, next(batches), step)
    pending.append(logged)
    save = _is_due(step, config.checkpoint_every_steps, setup.total_steps)
    run_eval = _is_due(step, config.eval_every_steps, setup.total_steps)
    if save or run_eval or _is_due(step, config.log_every_steps, setup.total_steps):
      diagnostics.update(reporting.flush_metrics(pending, step, writer, progress, last_saved))
    with progress.paused():
      if save:
        ckpt.save(step, state)
        last_saved = step
      if run_eval:
        results = evaluate(setup, state, p_eval, picture_fn=_pictures(setup, writer, step))
        if diagnostics:
          results["contrast"] = dict(diagnostics)
        _report(setup, results, workdir, writer)
        ckpt.save_if_best(step, state, results["miou"])
    if stop_after_step is not None and step >= stop_after_step:
      writer.flush()
      ckpt.close()
      return None
  if results is None:  # Nothing left to train: evaluate what was restored (or imported).
    if ckpt.latest.latest_step() is None:
      ckpt.save(int(state.step), state)  # E.g. num_epochs=0 with init_from: for predict.
    results = evaluate(setup, state, p_eval)
    _report(setup, results, workdir, writer)
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
                     picture_fn=_pictures(setup, writer, int(state.step)))
  _report(setup, results, workdir, writer)
  writer.flush()
  return results
