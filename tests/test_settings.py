"""Derived settings of a run: the bank momentum rule, steps per epoch, weakly labeled classes."""
import importlib
import math
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coarse3d_jax import input_pipeline
from coarse3d_jax import prototypes
from coarse3d_jax import settings
from coarse3d_jax.data import datasets
import configs
from configs import default
from configs import demo

KITTI_TRAIN_SCANS = 19_130  # Sequences 00-07, 09, 10.


def _contrast(**overrides) -> ml_collections.ConfigDict:
  contrast = default.get_config().contrast
  contrast.update(overrides)
  return contrast


def _kitti_steps(batch_size: int, input_shards: int = 0) -> int:
  config = default.get_config()
  config.batch_size, config.input_shards = batch_size, input_shards
  return input_pipeline.steps_per_epoch(KITTI_TRAIN_SCANS, config)


def test_steps_per_epoch_drop_the_last_partial_batch_like_the_reference():
  # The reference's loaders use drop_last=True: floor(19130 / 16) = 1195 steps per epoch; its 4
  # DistributedSampler replicas of floor(19130 / 4) = 4782 scans give the same 1195 batches of 4.
  assert _kitti_steps(16) == 1195 and _kitti_steps(16, input_shards=4) == 1195
  assert _kitti_steps(64) == 298 and _kitti_steps(128) == 149
  config = default.get_config()
  assert [input_pipeline.steps_per_epoch(n, config) for n in (15, 16, 31, 32)] == [0, 1, 1, 2]


def test_bank_momentum_is_the_seeds_value_for_the_recipe():
  assert settings.bank_momentum(_contrast(), _kitti_steps(16)) == 0.999  # Exactly.


@pytest.mark.parametrize("steps_per_epoch", [298, 149, 40, 1195 * 4])
def test_bank_time_constant_in_epochs_carries_over(steps_per_epoch):
  """1 / (1 - sigma) = momentum_epochs * steps_per_epoch updates: the same 1000/1195 epoch."""
  sigma = settings.bank_momentum(_contrast(), steps_per_epoch)
  # The rule rounds the time constant to 1e-6 steps (so that the recipe's is exactly 1000).
  steps = 1 / (1 - sigma)
  assert abs(steps - 1000 / 1195 * steps_per_epoch) <= 5e-7 + 1e-9
  # What an epoch of updates keeps of the old bank, sigma^steps = exp(-1195 / 1000) up to
  # O(1 / time constant) of either run, is the recipe's, whatever the batch.
  assert sigma ** steps_per_epoch == pytest.approx(0.999 ** 1195, rel=1 / steps + 1 / 1000)


def test_bank_momentum_of_the_demo_and_of_a_one_step_epoch():
  demo_steps = 160 // demo.get_config().batch_size  # 4 streets x 40 training scans.
  assert demo_steps == 40
  # ~0.970 (33.5 updates); 1e-9: the time constant is rounded to 1e-6 steps.
  assert settings.bank_momentum(demo.get_config().contrast, demo_steps) == pytest.approx(
      1 - 1195 / 40_000, abs=1e-9)
  # Two scans at batch 2: 0.84 updates would copy each batch into the bank; held at 10 updates.
  assert settings.bank_momentum(_contrast(), 1) == pytest.approx(0.9, abs=1e-15)
  assert settings.MIN_BANK_TIME_CONSTANT_STEPS == 10
  assert settings.bank_momentum(_contrast(), 11) == pytest.approx(0.9, abs=1e-15)  # 9.2 -> 10.
  assert settings.bank_momentum(_contrast(), 12) == pytest.approx(1 - 1195 / 12000, abs=1e-9)


def test_raw_momentum_overrides_the_rule():
  for steps in (1, 40, 1195):
    assert settings.bank_momentum(_contrast(momentum=0.95), steps) == 0.95
  assert settings.bank_momentum(_contrast(momentum_epochs=2.0), 500) == 1 - 1 / 1000


def test_every_config_follows_the_rule():
  """No config fixes a raw per-step momentum: they all keep the recipe's time constant."""
  names = sorted(p.stem for p in pathlib.Path(configs.__file__).parent.glob("[a-z]*.py"))
  assert {"default", "demo", "semantickitti_salsanext"} <= set(names)
  for name in names:
    contrast = importlib.import_module(f"configs.{name}").get_config().contrast
    assert contrast.momentum <= 0 and contrast.momentum_epochs == 1000 / 1195, name


def _np_l2n(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("steps_per_epoch", [1195, 40])
def test_update_rule_with_the_derived_momentum_matches_float64(steps_per_epoch):
  """The rule changes sigma only: P <- l2n(sigma P + (1 - sigma) l2n(mean)), step after step,
  tracks a float64 numpy run, and after one epoch toward a fixed target has moved as far as
  the recipe's bank does in its epoch."""
  sigma = settings.bank_momentum(_contrast(), steps_per_epoch)
  rng = np.random.default_rng(0)
  bank = _np_l2n(rng.normal(size=(3, 2, 8)))
  target = _np_l2n(rng.normal(size=(3, 2, 8)))
  counts = np.ones((3, 2), np.int32)
  counts[0] = 0  # Rows without pixels stay.
  got, want = jnp.asarray(bank, jnp.float32), bank.copy()
  for _ in range(steps_per_epoch):
    got = prototypes.momentum_step(got, jnp.asarray(target * 3, jnp.float32), counts, sigma)
    want = np.where((counts > 0)[..., None],
                    _np_l2n(sigma * want + (1 - sigma) * _np_l2n(target * 3)), want)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(got)[0], bank[0].astype(np.float32))
  # How far toward the target one epoch goes (cosine to it) is the recipe's, to O(1 / tau).
  cosine = np.sum(want[1:] * target[1:], -1)
  recipe = _np_l2n_run(bank[1:], target[1:], 0.999, 1195)
  np.testing.assert_allclose(cosine, np.sum(recipe * target[1:], -1), atol=1 - sigma)


def _np_l2n_run(bank, target, sigma, steps):
  for _ in range(steps):
    bank = _np_l2n(sigma * bank + (1 - sigma) * target)
  return bank


def test_derive_reports_the_momentum_and_the_weakly_labeled_classes():
  config = demo.get_config()
  info = datasets.get_info("synthetic")
  counts = [0] * info.num_classes
  counts[1], counts[9], counts[15] = 5, 50, 7
  stats = {"height": 64, "width": 2048, "splits": {"train": {
      "num_scans": 160, "num_weak_points": 4000, "weak_class_counts": counts,
      "mean": [0.0] * 5, "std": [1.0] * 5}}}
  derived = settings.derive(config, info, stats, steps_per_epoch=40, total_steps=480)
  assert derived.bank_momentum == settings.bank_momentum(config.contrast, 40)
  assert derived.weak_label_classes == (1, 9, 15)
  assert derived.num_epochs == 12
  assert derived.contrast_warmup_steps == round(config.contrast.warmup_epochs * 40)
  assert math.isclose(1 / (1 - derived.bank_momentum) / 40, 1000 / 1195, rel_tol=1e-7)
