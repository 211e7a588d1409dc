"""The facts of a run that follow from its config and its data, derived once before training.

Hyper-parameters stay in the (frozen) config, which the train step reads directly; what is here
is only what has to be computed from the data or the run length: class count, image geometry,
input normalization, focal-loss alpha, the labeled-pixel cap, steps per epoch and the step
counts and bank momentum that follow from it. No TensorFlow: benchmarks and tests derive these
from a stats dict of their own.
"""
import dataclasses
import math
from typing import Any

from absl import logging
import jax.numpy as jnp
import numpy as np

from coarse3d_jax import losses
from coarse3d_jax.data import datasets

# A bank time constant shorter than this many updates would copy each batch's mean into the
# prototypes: on tiny training sets (one step per epoch) the derived momentum is held here.
MIN_BANK_TIME_CONSTANT_STEPS = 10.0


@dataclasses.dataclass(frozen=True)
class DerivedSettings:
  """What the steps need beyond the config (hashable; closed over, never traced)."""
  num_classes: int
  geometry: tuple[tuple[str, Any], ...]  # height, width, fov_*: for re-projection.
  mean: tuple[float, ...]  # (5,) input channel mean and std.
  std: tuple[float, ...]
  focal_alpha: tuple[float, ...]  # (C,) from the weak-label class counts.
  max_labeled_pixels: int  # Static per-scan size of the labeled-pixel gather.
  steps_per_epoch: int
  num_epochs: int  # Epochs actually trained (num_train_steps wins): the pseudo-label schedule.
  contrast_warmup_steps: int
  bank_momentum: float  # Per-step momentum of the prototype update.
  # Classes 1..C-1 with weak labels in the training split: the ones the bank can learn, over
  # which the bank-drift diagnostic is averaged.
  weak_label_classes: tuple[int, ...] = ()

  @property
  def geometry_dict(self) -> dict[str, Any]:
    return dict(self.geometry)


def normalization(config, info: datasets.DatasetInfo, stats: dict) -> tuple[np.ndarray, ...]:
  """(mean, std) of the 5 input channels: the reference constants or the train-split stats.

  A custom dataset described without mean and std (NaN) has no reference constants: its
  train-split statistics stand in for them.
  """
  if config.normalization == "reference" and not np.isnan(info.mean).any():
    return np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
  split = stats["splits"][config.train_split]
  return np.asarray(split["mean"], np.float32), np.maximum(np.asarray(split["std"]), 1e-6)


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


def bank_momentum(contrast, steps_per_epoch: int) -> float:
  """Per-step momentum sigma of the prototype update.

  The bank forgets with a time constant of 1 / (1 - sigma) updates. What carries over between
  datasets, run lengths and batch sizes is that time constant in *epochs*
  (`contrast.momentum_epochs`; the reference's 0.999 at 1,195 SemanticKITTI steps per epoch is
  1000 / 1195 epochs), just as the learning rate scales with the batch. The time constant in steps
  is rounded to 1e-6 (so that the recipe gives exactly 0.999) and held at
  MIN_BANK_TIME_CONSTANT_STEPS or more. `contrast.momentum` > 0 is a raw per-step value and wins.
  """
  if contrast.momentum > 0:
    return float(contrast.momentum)
  steps = round(contrast.momentum_epochs * steps_per_epoch, 6)
  return 1.0 - 1.0 / max(steps, MIN_BANK_TIME_CONSTANT_STEPS)


def contrast_warmup_steps(contrast, steps_per_epoch: int) -> int:
  if contrast.warmup_steps >= 0:
    return int(contrast.warmup_steps)
  return int(round(contrast.warmup_epochs * steps_per_epoch))


def derive(config, info: datasets.DatasetInfo, stats: dict, steps_per_epoch: int,
           total_steps: int) -> DerivedSettings:
  """The derived settings of a run of `total_steps` steps over data described by `stats`."""
  mean, std = normalization(config, info, stats)
  weak_counts = np.asarray(stats["splits"][config.train_split]["weak_class_counts"], np.float64)
  alpha = np.asarray(losses.focal_alpha(jnp.asarray(weak_counts, jnp.float32)))
  geometry = dict(height=int(stats["height"]), width=int(stats["width"]), fov_up=info.fov_up,
                  fov_down=info.fov_down, fov_left=info.fov_left, fov_right=info.fov_right)
  return DerivedSettings(
      num_classes=info.num_classes, geometry=tuple(geometry.items()),
      mean=tuple(map(float, mean)), std=tuple(map(float, std)),
      focal_alpha=tuple(map(float, alpha)),
      max_labeled_pixels=labeled_pixel_cap(config, stats), steps_per_epoch=steps_per_epoch,
      num_epochs=max(1, -(-total_steps // steps_per_epoch)),
      contrast_warmup_steps=contrast_warmup_steps(config.contrast, steps_per_epoch),
      bank_momentum=bank_momentum(config.contrast, steps_per_epoch),
      weak_label_classes=tuple(int(c) for c in np.flatnonzero(weak_counts[1:] > 0) + 1))
