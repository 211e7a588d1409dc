"""Base layers of the backbones: the PyTorch-equivalent building blocks and small helpers.

Every backbone works on NHWC arrays. The modules and functions here reproduce the PyTorch
operators the reference networks use (zero-padded `Conv2d`, `BatchNorm2d`, `Dropout2d`,
`PixelShuffle`, `F.unfold`, `F.normalize`) so that converted PyTorch weights give the same
function (see `convert_torch.py`); `crop` and `param_count` are the small helpers they share.
The convolutions' gradients come from `cpu_gradients`.
"""
from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax.models import cpu_gradients

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
  if stride == (1, 1):
    return SpatialConv(features, kernel, dilation, padding, use_bias=use_bias, dtype=dtype,
                       name=name)
  return nn.Conv(features, kernel, strides=stride, kernel_dilation=(dilation, dilation),
                 padding=tuple((p, p) for p in padding), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=torch_conv_init, name=name)


def conv_bias(module: nn.Module, features: int) -> Array:
  """A conv module's zero-initialized float32 'bias' (features,), as `nn.Conv` declares it."""
  return module.param("bias", nn.initializers.zeros, (features,), jnp.float32)


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
    y = cpu_gradients.pointwise_product(x.astype(self.dtype),
                                        kernel[0, 0].astype(self.dtype))
    if self.use_bias:
      y = y + conv_bias(self, self.features).astype(self.dtype)
    return y


class SpatialConv(nn.Module):
  """Stride-1 k_h x k_w convolution, zero-padded; same parameters and forward as `nn.Conv`.

  Only the kernel gradient differs in how it is computed (`cpu_gradients.spatial_conv`), not in
  value.
  """
  features: int
  kernel_size: tuple[int, int]
  dilation: int
  padding: tuple[int, int]
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C_in) -> (B, H + 2 p_h - d (k_h - 1), ..., features)."""
    kernel = self.param("kernel", torch_conv_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    y = cpu_gradients.spatial_conv(x.astype(self.dtype), kernel.astype(self.dtype),
                                   self.dilation, self.padding)
    if self.use_bias:
      y = y + conv_bias(self, self.features).astype(self.dtype)
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
  offset-major order is a concatenation of 9 shifted copies, which XLA:CPU writes faster than
  the interleaved one. Layers that consume it are stored in this order (the PyTorch
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


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """`F.normalize(x, dim=axis)`: x / max(||x||, eps) along `axis`.

  The floor on the norm keeps zero vectors zero instead of NaN.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def crop(x: Array, height: int, width: int) -> Array:
  """Top-left (height, width) window of an NHWC array, as a static slice even when the batch
  size is symbolic (export_model): jnp indexing would then export a gather, which the TFLite
  converter cannot read."""
  return jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, 0, height, axis=1), 0, width, axis=2)


def param_count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
