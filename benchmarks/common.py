"""Shared pieces of the benchmark scripts: random inputs, step builders, steppers, machine name."""
import jax
import ml_collections
import numpy as np

from benchmarks import hardware
from coarse3d_jax import programs
from coarse3d_jax import settings
from coarse3d_jax.data import datasets
from configs import default


def fake_stats(num_classes: int, height: int, width: int, label_fraction: float) -> dict:
  counts = np.linspace(1000, 10, num_classes).astype(int).tolist()
  counts[0] = 0
  split = {"mean": [0.0] * 5, "std": [1.0] * 5, "weak_class_counts": counts, "num_scans": 1,
           "num_weak_points": label_fraction * height * width}
  return {"height": height, "width": width, "splits": {"train": split}}


def random_batch(args, num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Range images with ~90% valid pixels and `label_fraction` weakly labeled pixels."""
  b, h, w = args.batch, args.height, args.width
  image = rng.normal(size=(b, h, w, 5)).astype(np.float32)
  valid = rng.random((b, h, w)) < 0.9
  image[..., 0] = np.where(valid, rng.uniform(1, 50, (b, h, w)), -1)
  label = np.where(valid, rng.integers(1, num_classes, (b, h, w)), 0).astype(np.uint8)
  weak = np.where(rng.random((b, h, w)) < args.label_fraction, label, 0).astype(np.uint8)
  n = h * w
  rows, cols = np.divmod(np.tile(np.arange(n), (b, 1)), w)
  return {"range_image": image, "label": label, "weak_label": weak,
          "points": np.zeros((b, n, 4), np.float32), "point_label": label.reshape(b, n),
          "point_row": rows.astype(np.int32), "point_col": cols.astype(np.int32),
          "num_points": np.full((b,), n, np.int32), "example_valid": np.ones((b,), bool)}


def bench_config(row: str, args):
  config = default.get_config()
  config.model.name, config.model.width, config.model.dtype = (
      args.model, args.model_width, args.dtype)
  config.batch_size = config.eval_batch_size = args.batch
  config.augment.mode = "none"
  # 'head': the projection head runs (still in the contrast warm-up); 'coarse3d': everything,
  # with the per-step training diagnostics; 'coarse3d_log_step': a logging step (the step and
  # the gradient-diagnostics program before it); 'coarse3d_no_diagnostics': diagnostics off;
  # 'coarse3d_pixel_memory': a 5,000-pixel memory per class in place of the prototypes.
  config.contrast.enabled = row == "head" or row.startswith("coarse3d")
  config.contrast.warmup_steps = 10**9 if row == "head" else 0
  config.contrast.diagnostics = row != "coarse3d_no_diagnostics"
  if row == "coarse3d_pixel_memory":
    config.contrast.memory = "pixels"
  return config


def build(row: str, args):
  """(step function, initial state or variables, global batch, scans per call) for a row."""
  config = bench_config(row, args)
  info = datasets.get_info("semantickitti")
  stats = fake_stats(info.num_classes, args.height, args.width, args.label_fraction)
  derived = settings.derive(config, info, stats, steps_per_epoch=100, total_steps=10_000)
  tx, schedule = programs.make_optimizer(config, 100, 10_000)
  mesh = programs.make_mesh()
  model = programs.build_model(config, info.num_classes)
  state = programs.initial_state(programs.state_init_fn(config, model, tx, derived),
                                 config.seed, mesh)
  batch = random_batch(args, info.num_classes, np.random.default_rng(0))
  if row == "eval":
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    fn = programs.compile_eval_step(model, derived, mesh)
    step = lambda v, b: (v, fn(v, b))
    return step, variables, programs.to_global(batch, mesh), args.batch
  keys = ("range_image", "label", "weak_label")
  frozen = ml_collections.FrozenConfigDict(config)
  train_fn = programs.compile_train_step(model, tx, schedule, frozen, derived, mesh)
  if row == "coarse3d_log_step":
    train_fn = _with_diagnostics(
        train_fn, programs.compile_diagnostics_step(model, frozen, derived, mesh))
  return (train_fn, state, programs.to_global({k: batch[k] for k in keys}, mesh), args.batch)


def _with_diagnostics(train_fn, diagnostics_fn):
  """A logging step of the contrast phase as the training loop runs it: the gradient
  diagnostics of the state, then the step."""
  def step(state, batch):
    measured = diagnostics_fn(state, batch)
    state, logged = train_fn(state, batch)
    return state, (logged, measured)
  return step


def stepper(fn, state, batch):
  """A no-argument callable running one step of `fn` (carrying its state) to completion."""
  box = [state]

  def step():
    box[0], out = fn(box[0], batch)
    jax.block_until_ready(out)
  return step
