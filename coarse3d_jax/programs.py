"""The jitted data-parallel programs of a run: mesh, initial state, sharded train / eval steps.

The steps of `train_step` are per-device programs with explicit collectives; here they are
wrapped in `jax.jit(jax.shard_map(...))` over a 1-D `data` mesh of all devices. Nothing here
reads data files, so benchmarks and tests build the same programs from arrays of their own.
"""
import functools

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from coarse3d_jax import knn as knn_lib
from coarse3d_jax import models
from coarse3d_jax import settings as settings_lib
from coarse3d_jax import train_step as ts

AXIS = ts.AXIS


def make_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(jax.devices()), (AXIS,))


def build_model(config, num_classes: int, projection_head: bool | None = None):
  """The network of `config`; BatchNorm statistics are averaged over the mesh axis."""
  head = config.contrast.enabled if projection_head is None else projection_head
  return models.create_model(
      config.model.name, num_classes=num_classes, width=config.model.width,
      embed_dim=config.model.embed_dim, dtype=models.DTYPES[config.model.dtype],
      bn_axis_name=AXIS, projection_head=head, dropout_rate=config.model.dropout_rate)


def make_optimizer(config, steps_per_epoch: int, total_steps: int):
  """AdamW with linear warm-up then cosine decay; returns (optimizer, schedule)."""
  warmup = int(round(config.optimizer.warmup_epochs * steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.optimizer.lr, max(warmup, 1), max(total_steps, warmup + 1))
  tx = optax.adamw(schedule, b1=config.optimizer.b1, b2=config.optimizer.b2,
                   eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)
  return tx, schedule


def state_init_fn(config, model, tx, derived: settings_lib.DerivedSettings):
  """`init(rng) -> TrainState` for training inputs of the run's (cropped) shape."""
  geometry = derived.geometry_dict
  width = config.train_crop_width or geometry["width"]
  return functools.partial(
      ts.create_train_state, model=model, tx=tx, image_shape=(1, geometry["height"], width, 5),
      num_classes=derived.num_classes, num_sub=ts.bank_rows(config.contrast),
      embed_dim=config.model.embed_dim)


def initial_state(init_fn, seed: int, mesh: jax.sharding.Mesh) -> ts.TrainState:
  """A fresh state, replicated over the mesh; identical on every process (same seed)."""
  key = jax.random.PRNGKey(seed)
  lowered = jax.jit(init_fn, out_shardings=NamedSharding(mesh, P())).lower(key)
  # Initialization is ~120 threefry draws that run once; LLVM's optimizer takes several times
  # longer on them than without it, for the same bits.
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(key)


def abstract_state(init_fn, seed: int, mesh: jax.sharding.Mesh) -> ts.TrainState:
  """The structure, shapes and (replicated) shardings of the state; a restore target."""
  return ts.abstract_train_state(init_fn, jax.random.PRNGKey(seed), NamedSharding(mesh, P()))


def compile_train_step(model, tx, schedule, config, derived: settings_lib.DerivedSettings,
                       mesh: jax.sharding.Mesh):
  """`(state, global batch) -> (state, logged scalars)`; the state is donated."""
  step = functools.partial(ts.train_step, model=model, tx=tx, schedule=schedule, config=config,
                           derived=derived)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


def compile_diagnostics_step(model, config, derived: settings_lib.DerivedSettings,
                             mesh: jax.sharding.Mesh):
  """`(state, global batch) -> {name: [numerator, denominator]}`: the gradient ratio and bank
  drift of the step the state is about to take (`train_step.gradient_diagnostics`)."""
  step = functools.partial(ts.gradient_diagnostics, model=model, config=config, derived=derived)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P()))


def compile_eval_step(model, derived: settings_lib.DerivedSettings, mesh: jax.sharding.Mesh,
                      knn: bool = False, oracle_ignore_mask: bool = False):
  """Evaluation step; with `knn`, points get RangeNet++ KNN labels; `oracle_ignore_mask` as
  config.oracle_ignore_mask."""
  knn_fn = None
  if knn:
    knn_fn = functools.partial(knn_lib.knn_from_batch, num_classes=derived.num_classes)
  step = functools.partial(ts.eval_step, model=model, derived=derived, knn=knn_fn,
                           oracle_ignore_mask=oracle_ignore_mask)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs={"points": P(), "pixels": P(), "num_scans": P(),
                                     "pred": P(AXIS)})
  return jax.jit(sharded)


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global arrays sharded over the batch axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items() if k != "scan_id"}


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in batch order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])
