"""Layers shared by the backbones: PyTorch-equivalent conv/BN/dropout, resizing and heads.

Every backbone works on NHWC arrays. The helpers here reproduce the PyTorch operators the
reference networks use (zero-padded convolutions, `BatchNorm2d`, `Dropout2d`, `PixelShuffle`,
`F.interpolate(mode='bilinear', align_corners=True)`) so that converted PyTorch weights give
the same function (see `convert_torch.py`).
"""
from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

# PyTorch's default Conv2d weight init: uniform(+-1/sqrt(fan_in)).
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def scale_channels(channels: int, width: float, multiple: int = 1) -> int:
  """Channel count of a reference layer at width multiplier `width` (>= `multiple`)."""
  return max(multiple, int(round(channels * width / multiple)) * multiple)


def conv(features: int, kernel: int | Sequence[int], *, dtype: Dtype,
         stride: int | Sequence[int] = 1, dilation: int = 1,
         padding: int | Sequence[int] | None = None, use_bias: bool = True,
         name: str | None = None) -> nn.Conv:
  """A `torch.nn.Conv2d` with explicit symmetric zero padding (default: 'same' for odd k).

  Args:
    padding: int or (pad_h, pad_w); defaults to dilation * (k - 1) // 2 per axis.
  """
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
  if padding is None:
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
  elif isinstance(padding, int):
    padding = (padding, padding)
  if kernel == (1, 1) and stride == (1, 1) and padding == (0, 0):
    return PointwiseConv(features, use_bias=use_bias, dtype=dtype, name=name)
  return nn.Conv(features, kernel, strides=stride, kernel_dilation=(dilation, dilation),
                 padding=tuple((p, p) for p in padding), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=torch_conv_init, name=name)


class PointwiseConv(nn.Module):
  """1x1 convolution as a matrix product; same parameters as `nn.Conv` with a 1x1 kernel.

  XLA:CPU runs the kernel gradient of a 1x1 `conv_general_dilated` several times slower than
  the equivalent `dot_general`, and 1x1 convs are a large share of these networks' FLOPs.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (..., C_in) -> (..., features)."""
    kernel = self.param("kernel", torch_conv_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel[0, 0].astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


def batch_norm(train: bool, *, momentum: float = 0.1, axis_name: str | None = None,
               dtype: Dtype = jnp.float32, name: str | None = None) -> nn.BatchNorm:
  """`torch.nn.BatchNorm2d(momentum=momentum)`; batch statistics are pmean'ed over `axis_name`.

  PyTorch's momentum weighs the new batch; flax's weighs the old running value, hence 1 - m.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=1.0 - momentum, epsilon=1e-5,
                      axis_name=axis_name if train else None, dtype=dtype, use_fast_variance=False,
                      param_dtype=jnp.float32, name=name)


def dropout2d(x: Array, rate: float, train: bool) -> Array:
  """`torch.nn.Dropout2d`: zeroes whole channels per example. x: (B, H, W, C)."""
  if rate <= 0.0:
    return x
  return nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train)(x)


def pixel_shuffle(x: Array, factor: int = 2) -> Array:
  """`torch.nn.PixelShuffle` in NHWC with PyTorch's channel order.

  Input channel c * r^2 + i * r + j moves to output channel c at (r * h + i, r * w + j).
  x: (B, H, W, C * r^2) -> (B, r H, r W, C).
  """
  b, h, w, c = x.shape
  out_c = c // (factor * factor)
  x = x.reshape(b, h, w, out_c, factor, factor)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * factor, w * factor, out_c)


def unfold3x3(x: Array) -> Array:
  """3x3 zero-padded neighbourhoods stacked along channels, offset-major.

  Output channel k * C + c, k = 3 * di + dj, holds x[h + di - 1, w + dj - 1, c] (zero outside).
  `F.unfold(kernel_size=3, padding=1)` orders the same values channel-major (c * 9 + k); the
  offset-major order is a concatenation of 9 shifted copies, which XLA:CPU writes ~2x faster
  than the interleaved one. Layers that consume it are stored in this order (the PyTorch
  converter permutes them).
  x: (B, H, W, C) -> (B, H, W, 9 C).
  """
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, di:di + h, dj:dj + w, :] for di in range(3)
                          for dj in range(3)], axis=-1)


def unfold_order(channels: int) -> np.ndarray:
  """perm with offset-major index k * C + c -> channel-major (PyTorch) index c * 9 + k."""
  k, c = np.divmod(np.arange(9 * channels), channels)
  return c * 9 + k


def _align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Indices (lo, hi) and weight of hi for 1-D linear interpolation with align_corners=True."""
  if n_out == 1 or n_in == 1:
    pos = np.zeros(n_out)
  else:
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lo = np.minimum(np.floor(pos).astype(np.int32), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, (pos - lo).astype(np.float32)


def _resize_axis(x: Array, axis: int, n_out: int, keep: int | None = None) -> Array:
  """Linear resize of one axis to n_out samples (align_corners=True); keeps the first `keep`."""
  n_in = x.shape[axis]
  if n_in == n_out and (keep is None or keep == n_out):
    return x
  lo, hi, frac = _align_corners_taps(n_in, n_out)
  keep = n_out if keep is None else keep
  lo, hi, frac = lo[:keep], hi[:keep], frac[:keep]
  shape = [1] * x.ndim
  shape[axis] = keep
  frac = jnp.asarray(frac.reshape(shape), x.dtype)
  x_lo = jnp.take(x, jnp.asarray(lo), axis=axis)
  x_hi = jnp.take(x, jnp.asarray(hi), axis=axis)
  return x_lo + frac * (x_hi - x_lo)


def resize_bilinear(x: Array, height: int, width: int,
                    crop: tuple[int, int] | None = None) -> Array:
  """`F.interpolate(x, (height, width), mode='bilinear', align_corners=True)`, NHWC.

  Separable two-tap interpolation with static gather indices: O(output) work, unlike a dense
  interpolation matrix. With `crop=(h, w)` only the top-left h x w outputs are computed,
  exactly equal to resizing and then cropping.
  x: (B, h_in, w_in, C) -> (B, height, width, C) or (B, *crop, C).
  """
  keep_h, keep_w = crop if crop is not None else (height, width)
  x = _resize_axis(x, 2, width, keep_w)
  return _resize_axis(x, 1, height, keep_h)


def upsample_nearest(x: Array, factor_h: int, factor_w: int) -> Array:
  """Repeats every pixel into a factor_h x factor_w block. x: (B, H, W, C)."""
  if factor_h > 1:
    x = jnp.repeat(x, factor_h, axis=1)
  if factor_w > 1:
    x = jnp.repeat(x, factor_w, axis=2)
  return x


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """`F.normalize(x, dim=-1)`: x / max(||x||, eps) along the last axis."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def pad_to_multiple(x: Array, stride_h: int, stride_w: int) -> Array:
  """Zero-pads bottom/right so H % stride_h == 0 and W % stride_w == 0. x: (B, H, W, C)."""
  _, h, w, _ = x.shape
  pad_h = -h % stride_h
  pad_w = -w % stride_w
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


class ProjectionHead(nn.Module):
  """COARSE3D projection head ("ProjectionV1"): 1x1 conv, BN, LeakyReLU, 1x1 conv to D.

  Attributes:
    embed_dim: D.
    dtype: compute dtype.
    bn_axis_name: axis over which batch statistics are averaged in training.
  """
  embed_dim: int = 256
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, feats: Array, train: bool) -> Array:
    """feats: (B, h, w, C) -> (B, h, w, D) float32, unit L2 norm per pixel."""
    channels = feats.shape[-1]
    x = conv(channels, 1, dtype=self.dtype, name="conv1")(feats)
    x = batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype, name="bn")(x)
    x = nn.leaky_relu(x, 0.01)
    x = conv(self.embed_dim, 1, dtype=self.dtype, name="conv2")(x)
    return l2_normalize(x.astype(jnp.float32))


def multiscale_features(features: Sequence[Array], height: int, width: int,
                        dtype: Dtype) -> Array:
  """Bilinearly resizes every (B, h_i, w_i, C_i) map to (height, width) and concatenates.

  (Applying the head's first 1x1 conv to each map at its own resolution, which commutes with
  the resize, has 2.6x fewer multiply-adds for SalsaNext but measured 1.6x slower on CPU: it
  resizes 704 channels per map instead of C_i, and the resize's gradient is a scatter.)
  """
  resized = [resize_bilinear(f.astype(dtype), height, width) for f in features]
  return jnp.concatenate(resized, axis=-1)


def embedding_output(module: nn.Module, features: Sequence[Array], padded_hw: tuple[int, int],
                     out_hw: tuple[int, int], train: bool) -> Array:
  """Projection head on multi-scale features -> (B, H, W, D) float32 unit embeddings.

  Runs inside `module`'s compact `__call__` (which provides embed_dim, dtype, bn_axis_name),
  creating the submodules 'proj_head' and 'embed_norm'. The head runs at half the padded
  resolution; its output is resized to the padded resolution (only the un-padded H x W part
  is computed), then LayerNorm(D) and L2 normalization.
  """
  hp, wp = padded_hw
  half = (max(1, hp // 2), max(1, wp // 2))
  feats = multiscale_features(features, *half, module.dtype)
  emb = ProjectionHead(module.embed_dim, module.dtype, module.bn_axis_name,
                       name="proj_head")(feats, train)
  emb = resize_bilinear(emb, hp, wp, crop=out_hw)
  emb = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="embed_norm")(emb)
  return l2_normalize(emb)


def crop(x: Array, height: int, width: int) -> Array:
  """Top-left (height, width) window of an NHWC array."""
  return x[:, :height, :width, :]


def param_count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
