"""tf.data input from the data_prep output: per-process shards, deterministic order, static shapes.

The order of training examples is a pure function of (seed, epoch): a resumed run skips the
batches it already consumed in the current epoch and then sees exactly what an uninterrupted run
would have seen.
"""
import json
import os
from typing import Any, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

Batch = dict[str, np.ndarray]
POINT_KEYS = ("points", "point_label", "point_weak_label", "point_row", "point_col")


class InputError(ValueError):
  """The data directory is missing, empty or inconsistent with the config."""


def load_builder(data_dir: str) -> tfds.core.DatasetBuilder:
  if not data_dir or not os.path.isdir(data_dir):
    raise InputError(f"{data_dir or '(empty)'}: data_dir does not exist; "
                     "run `python -m data_prep ...` first and pass --config.data_dir")
  try:
    return tfds.builder_from_directory(data_dir)
  except Exception as e:  # tfds raises several types for a malformed folder.
    raise InputError(f"{data_dir}: not a data_prep output ({e})") from e


def load_stats(data_dir: str) -> dict[str, Any]:
  path = os.path.join(data_dir, "stats.json")
  if not os.path.exists(path):
    raise InputError(f"{path}: missing (written by data_prep)")
  with open(path) as f:
    return json.load(f)


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  if split not in builder.info.splits:
    raise InputError(f"{builder.data_dir}: no split {split!r} "
                     f"(has {sorted(builder.info.splits.keys())})")
  return builder.info.splits[split].num_examples


def _pad_points(example: dict[str, tf.Tensor], max_points: int) -> dict[str, tf.Tensor]:
  """Pads the per-point features to `max_points` and records how many are real."""
  n = tf.shape(example["points"])[0]
  tf.debugging.assert_less_equal(
      n, max_points, message=f"a scan has more points than config.max_points={max_points}")
  out = dict(example)
  for key in POINT_KEYS:
    if key in example:
      pad = [[0, max_points - n]] + [[0, 0]] * (len(example[key].shape) - 1)
      out[key] = tf.ensure_shape(tf.pad(example[key], pad),
                                 [max_points] + example[key].shape[1:].as_list())
  out["num_points"] = n
  return out


def _epoch_seed(seed: int, epoch: int, shard: int) -> int:
  return int(np.random.SeedSequence([seed, epoch, shard]).generate_state(1)[0] % (2**31 - 1))


def _train_features(mode: str) -> tuple[str, ...]:
  if mode == "points":
    return ("points", "point_label", "point_weak_label")
  return ("range_image", "label", "weak_label")


def num_input_shards(config) -> int:
  """Training data is cut into this many fixed shards (default: one per process).

  A global batch is the concatenation of every shard's next slice, so the batches depend on
  the number of shards, never on how many processes read them.
  """
  shards = config.input_shards or jax.process_count()
  if shards % jax.process_count() or config.batch_size % shards:
    raise InputError(f"input_shards={shards} must be a multiple of the {jax.process_count()} "
                     f"processes and divide batch_size={config.batch_size}")
  return shards


def steps_per_epoch(num_train: int, config) -> int:
  shards = num_input_shards(config)
  return (num_train // shards) // (config.batch_size // shards)


def local_shards(config) -> range:
  """The shards this process reads: a contiguous block, so process order = shard order."""
  per_process = num_input_shards(config) // jax.process_count()
  first = jax.process_index() * per_process
  return range(first, first + per_process)


# Fixed map parallelism: with autotuning off, nothing would tune an AUTOTUNE setting.
PARALLEL_CALLS = max(2, os.cpu_count() or 1)


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` without tf.data's autotuning thread, which stalls the end of an epoch.

  The thread sleeps between optimization rounds for a period that grows with the iterator's
  age, and deleting the iterator waits for it to wake: with one pipeline per epoch, the demo's
  training sat idle at most epoch ends (benchmarks/README.md, Demo, has the measurement).
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def train_epoch(builder, config, epoch: int, shard: int, steps: int) -> tf.data.Dataset:
  """One epoch of one shard's batch slices, shuffled from (seed, epoch, shard)."""
  shards = num_input_shards(config)
  seed = _epoch_seed(config.seed, epoch, shard)
  split = tfds.even_splits(config.train_split, n=shards, drop_remainder=True)[shard]
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4,
                                interleave_block_length=1)
  keys = _train_features(config.augment.mode)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})
  ds = ds.shuffle(config.shuffle_buffer, seed=seed)
  if config.augment.mode == "points":
    ds = ds.map(lambda ex: _pad_points(ex, config.max_points), num_parallel_calls=PARALLEL_CALLS)
  ds = ds.batch(config.batch_size // shards, drop_remainder=True).take(steps)
  return without_autotune(ds.prefetch(2))


def train_iterator(builder, config, start_step: int, steps: int) -> Iterator[Batch]:
  """Endless process-local training batches from global step `start_step` on.

  Args:
    steps: steps per epoch.
  """
  epoch, skip = divmod(start_step, steps)
  while True:
    parts = [tfds.as_numpy(train_epoch(builder, config, epoch, shard, steps).skip(skip))
             for shard in local_shards(config)]
    for slices in zip(*parts):
      yield {k: np.concatenate([s[k] for s in slices]) for k in slices[0]}
    epoch, skip = epoch + 1, 0


EVAL_KEYS = ("range_image", "label", "weak_label", "points", "point_label", "point_row",
             "point_col")


def _empty_like(spec: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
  return {k: tf.zeros([d if d is not None else 0 for d in s.shape], s.dtype)
          for k, s in spec.items()}


def num_eval_batches(total: int, local_batch_size: int) -> int:
  """Equal on every process (collectives need it): sized for the largest process share."""
  per_process = -(-total // jax.process_count())
  return max(1, -(-per_process // local_batch_size))


def eval_dataset(builder, split: str, local_batch_size: int, max_points: int) -> tf.data.Dataset:
  """This process's share of `split` in file order, padded with empty scans to whole batches.

  Padded scans have `example_valid` False and no points, so they change no metric.
  """
  total = num_examples(builder, split)
  n_batches = num_eval_batches(total, local_batch_size)
  ds = builder.as_dataset(split=tfds.split_for_jax_process(split), shuffle_files=False)
  ds = ds.map(lambda ex: {**{k: ex[k] for k in EVAL_KEYS}, "scan_id": ex["scan_id"],
                          "example_valid": True})
  empty = _empty_like(ds.element_spec)
  empty["example_valid"] = tf.constant(False)
  empty["scan_id"] = tf.constant("")
  height, width = ds.element_spec["range_image"].shape[:2]
  empty["range_image"] = -tf.ones([height, width, 5], tf.float32)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat())
  ds = ds.map(lambda ex: _pad_points(ex, max_points), num_parallel_calls=PARALLEL_CALLS)
  return without_autotune(
      ds.batch(local_batch_size, drop_remainder=True).take(n_batches).prefetch(2))
