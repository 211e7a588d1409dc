"""Test-time augmentation and MC dropout: averaged class probabilities and their uncertainty.

Transforms are the two that training's range-image augmentation applies exactly
(`augment.augment_range`): a yaw rotation by s whole columns (`augment.yaw_roll`, which rotates
the x, y channels too), then optionally the y-mirror (`augment.mirror_y`). A pass runs the model
on g(x); its per-pixel probabilities are mapped back by g^-1 (columns un-mirrored, then rolled by
-s), so they refer to the pixels of x, and the passes are averaged.

`transform_set(mirror, rolls, width)` is {mirror^m . roll(k W / rolls): m in {0, 1}, k < rolls},
a group (dihedral; cyclic without the mirror). Averaging over a group is equivariant: the TTA
probabilities of g(x) are g applied to those of x for every g of the set, up to the float
rounding of the rotated x, y channels. A set that is not closed (one roll without its inverse)
would lose that, which is why the rolls are evenly spaced over the whole turn.

The distribution of a pass is its softmax over the classes a prediction can take, 1..C-1
(`softmax(logits[..., 1:])`: the ignore class 0 is never predicted), so probabilities sum to 1
and their argmax is the predicted class.

MC dropout (Gal and Ghahramani, ICML 2016): N passes with dropout sampled (fresh masks per pass,
a function of the seed and the batch index) and BatchNorm on its running statistics, as at
inference. Each sample is itself averaged over the TTA set; the outputs are the mean over
samples, its entropy (total uncertainty) and the mutual information between prediction and
dropout mask, H(mean_s q_s) - mean_s H(q_s) (the model's own uncertainty), in nats.

Everything is one jitted program per (model, transform set, sample count): the transformed
images of a batch are stacked into one model call of T * B images.
"""
from collections.abc import Callable
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax import augment

Array = jax.Array
Transform = tuple[bool, int]  # (mirror, column shift)
IDENTITY: tuple[Transform, ...] = ((False, 0),)


@dataclasses.dataclass(frozen=True)
class Passes:
  """Which forward passes are averaged.

  Attributes:
    transforms: (mirror, column shift) pairs; `IDENTITY` is the plain prediction.
    mc_samples: dropout samples; 0 keeps dropout off (one deterministic pass per transform).
    seed: dropout seed (the masks of a batch are a function of seed and batch index).
  """
  transforms: tuple[Transform, ...] = IDENTITY
  mc_samples: int = 0
  seed: int = 0


def transform_set(mirror: bool, rolls: int, width: int) -> tuple[Transform, ...]:
  """The TTA group: `rolls` yaw rolls of width / rolls columns, each with and without mirror.

  Raises:
    ValueError: `rolls` < 1 or not a divisor of `width` (rolls are whole columns, evenly spaced).
  """
  if rolls < 1 or width % rolls:
    raise ValueError(f"{rolls} yaw rolls must evenly divide the image width {width} (rolls are "
                     "whole columns, evenly spaced over 360 degrees)")
  shifts = [k * (width // rolls) for k in range(rolls)]
  return tuple((m, s) for m in ((False, True) if mirror else (False,)) for s in shifts)


def apply_transform(image: Array, mirror: Array, shift: Array) -> Array:
  """g(image): (H, W, 5) raw features (-1 on empty pixels) rolled by `shift` columns about z,
  then y-mirrored where `mirror` (traced bool)."""
  rolled, _ = augment.yaw_roll(image, (), shift)
  mirrored, _ = augment.mirror_y(rolled, ())
  return jnp.where(mirror, mirrored, rolled)


def invert_transform(values: Array, mirror: Array, shift: Array) -> Array:
  """(H, W, ...) per-pixel values computed on g(image) -> the same values at image's pixels."""
  return augment.roll_columns(jnp.where(mirror, values[:, ::-1], values), -shift)


def class_distribution(logits: Array) -> Array:
  """(..., C) logits -> (..., C - 1) softmax over the predictable classes 1..C-1."""
  return jax.nn.softmax(logits[..., 1:].astype(jnp.float32), axis=-1)


def entropy(q: Array) -> Array:
  """(..., K) distributions -> (...) entropy in nats (0 log 0 = 0)."""
  return jnp.sum(jax.scipy.special.entr(q), axis=-1)


def _sampled_dropout(next_fun, args, kwargs, context):
  """Flax method interceptor: every `nn.Dropout` samples a mask even though the model runs in
  inference mode (train=False keeps BatchNorm on its running statistics). Same mask law as
  `nn.Dropout(deterministic=False)`: keep with 1 - rate, scale kept values by 1 / (1 - rate)."""
  module = context.module
  if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  x = args[0]
  shape = [1 if axis in module.broadcast_dims else n for axis, n in enumerate(x.shape)]
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - module.rate, shape)
  return jnp.where(keep, x / (1.0 - module.rate), 0).astype(x.dtype)


def model_logits(model: nn.Module, variables: Any, x: Array, dropout_key: Array | None) -> Array:
  """(N, H, W, 5) normalized -> (N, H, W, C) logits; dropout sampled when a key is given."""
  if dropout_key is None:
    return model.apply(variables, x, train=False)["logits"]
  with nn.intercept_methods(_sampled_dropout):
    return model.apply(variables, x, train=False, rngs={"dropout": dropout_key})["logits"]


def averaged_distribution(model: nn.Module, variables: Any, images: Array, mean: Array,
                          std: Array, transforms: tuple[Transform, ...],
                          dropout_key: Array | None = None) -> Array:
  """TTA distribution of a batch: one model call on the T * B transformed images.

  Args:
    model, variables: the network and its {'params', 'batch_stats'}.
    images: (B, H, W, 5) raw range images, -1 on empty pixels.
    mean, std: (5,) input normalization.
    transforms: T (mirror, shift) pairs.
    dropout_key: dropout sampled with this key; None: dropout off.
  Returns:
    (B, H, W, C - 1) float32 mean over the transforms, at the pixels of `images`.
  """
  mirror = jnp.asarray([m for m, _ in transforms], bool)
  shift = jnp.asarray([s for _, s in transforms], jnp.int32)
  (b, h, w, _), t = images.shape, len(transforms)
  per_image = jax.vmap(apply_transform, (0, None, None))
  moved = jax.vmap(per_image, (None, 0, 0))(images, mirror, shift)  # (T, B, H, W, 5)
  x = augment.normalize(moved.reshape(t * b, h, w, -1), mean, std)
  q = class_distribution(model_logits(model, variables, x, dropout_key))
  back = jax.vmap(jax.vmap(invert_transform, (0, None, None)))(q.reshape(t, b, h, w, -1),
                                                                 mirror, shift)
  return back.mean(axis=0)


def mc_statistics(sample_fn: Callable[[Array], Array], keys: Array) -> dict[str, Array]:
  """Mean distribution, its entropy and the mutual information over dropout samples.

  Args:
    sample_fn: key -> (..., K) distribution of one dropout sample.
    keys: (N, 2) dropout keys, one per sample (a scan over them: memory of one sample).
  """
  def add(carry, key):
    q = sample_fn(key)
    return (carry[0] + q, carry[1] + entropy(q)), None

  first = jax.eval_shape(sample_fn, keys[0])
  zeros = (jnp.zeros(first.shape, jnp.float32), jnp.zeros(first.shape[:-1], jnp.float32))
  (sum_q, sum_h), _ = jax.lax.scan(add, zeros, keys)
  mean_q = sum_q / keys.shape[0]
  total = entropy(mean_q)
  # Jensen: H(mean) >= mean H; the clamp only removes float rounding below zero.
  return {"probs": mean_q, "entropy": total,
          "mutual_information": jnp.maximum(total - sum_h / keys.shape[0], 0.0)}


def distribution_program(model: nn.Module, mean: np.ndarray, std: np.ndarray,
                         passes: Passes) -> Callable[..., dict[str, Array]]:
  """jitted `(variables, images (B, H, W, 5) raw, key) -> outputs`.

  Outputs: 'probs' (B, H, W, C - 1) float32, 'entropy' (B, H, W), and with MC dropout
  'mutual_information' (B, H, W). `key` draws the dropout masks (unused without MC dropout).
  """
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  @jax.jit
  def program(variables, images, key):
    tta = lambda k: averaged_distribution(model, variables, images, mean, std,
                                          passes.transforms, k)
    if not passes.mc_samples:
      q = tta(None)
      return {"probs": q, "entropy": entropy(q)}
    return mc_statistics(tta, jax.random.split(key, passes.mc_samples))

  return program


def batch_key(seed: int, batch_index: int) -> Array:
  """The dropout key of one batch: a function of the seed and the batch's position only."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), batch_index)
