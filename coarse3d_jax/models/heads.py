"""Layers shared by the backbones: PyTorch-equivalent conv/BN/dropout, resizing and heads.

Every backbone works on NHWC arrays. The helpers here reproduce the PyTorch operators the
reference networks use (zero-padded convolutions, `BatchNorm2d`, `Dropout2d`, `PixelShuffle`,
`F.interpolate(mode='bilinear', align_corners=True)`) so that converted PyTorch weights give
the same function (see `convert_torch.py`).
"""
from collections.abc import Sequence
import functools
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
    y = pointwise_product(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
    if self.use_bias:
      y = y + conv_bias(self, self.features).astype(self.dtype)
    return y


@jax.custom_vjp
def pointwise_product(x: Array, kernel: Array) -> Array:
  """x (..., C) @ kernel (C, F) -> (..., F), with a gradient laid out for XLA:CPU.

  The kernel gradient contracts over every pixel, and XLA:CPU writes the left-hand operand of
  that product transposed, fused into whatever produced it. This puts the narrower of x and
  the cotangent there, which for the projection head's 704-channel maps means transposing
  (and recomputing) 3-4x fewer values than autodiff's order.
  """
  return _dot(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _dot(a: Array, b: Array, dims) -> Array:
  """dot_general accumulated in (at least) float32 and returned in a's dtype.

  Low-precision products go to the CPU's bfloat16 matrix units (AMX, AVX-512 BF16) only when
  XLA is asked for a float32 result; a bfloat16 result makes XLA:CPU compute them ~6x slower.
  """
  accumulate = jnp.promote_types(a.dtype, jnp.float32)
  return jax.lax.dot_general(a, b, dims, preferred_element_type=accumulate).astype(a.dtype)


def _pointwise_product_fwd(x, kernel):
  return pointwise_product(x, kernel), (x, kernel)


def _pointwise_product_bwd(residuals, g):
  x, kernel = residuals
  dx = _dot(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
  pixels = tuple(range(x.ndim - 1))
  if x.shape[-1] <= g.shape[-1]:
    dk = _dot(x, g, ((pixels, pixels), ((), ())))
  else:
    dk = _dot(g, x, ((pixels, pixels), ((), ()))).T
  return dx, sum_to_type_of(dk, kernel)


pointwise_product.defvjp(_pointwise_product_fwd, _pointwise_product_bwd)


class SpatialConv(nn.Module):
  """Stride-1 k_h x k_w convolution, zero-padded; same parameters and forward as `nn.Conv`.

  Only the kernel gradient differs in how it is computed (`spatial_conv`), not in value.
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
    y = spatial_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.dilation,
                     self.padding)
    if self.use_bias:
      y = y + conv_bias(self, self.features).astype(self.dtype)
    return y


def _conv_nhwc(x: Array, kernel: Array, dilation: int, padding: tuple[int, int]) -> Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), tuple((p, p) for p in padding), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def spatial_conv(x: Array, kernel: Array, dilation: int, padding: tuple[int, int]) -> Array:
  """Stride-1 NHWC convolution (HWIO kernel, symmetric zero padding) with a fast kernel gradient.

  XLA:CPU computes the kernel gradient of a spatial convolution ~10x slower than the forward
  pass (a 3x3, 32-channel, 2x64x512 one: 40 vs 4 ms); in a SalsaNext train step those gradients
  were 1.2 of 2.2 s. Here it is one matrix product per kernel tap (`conv_kernel_gradient`;
  measured plain step 2.23 -> 1.72 s with the opt-in malloc setting, full COARSE3D step 3.12
  -> ~2.8 s with the default one; README, Benchmarks).
  The input gradient stays XLA's (a convolution, as fast as the forward pass), and so does the
  kernel gradient wherever the step is compiled for anything but a CPU.
  """
  return _conv_nhwc(x, kernel, dilation, padding)


def _spatial_conv_fwd(x, kernel, dilation, padding):
  return _conv_nhwc(x, kernel, dilation, padding), (x, kernel)


# Below this many input channels the per-tap products are too thin to beat XLA's own kernel
# gradient (a 3x3 conv of 8 channels at 4x64x512: 17 vs 7 ms; 32 channels: on par alone,
# faster inside the train step).
PER_TAP_MIN_CHANNELS = 32


def _spatial_conv_bwd(dilation, padding, residuals, g):
  x, kernel = residuals
  conv_of = lambda x, kernel: _conv_nhwc(x, kernel, dilation, padding)
  autodiff = lambda x, g: jax.vjp(conv_of, x, kernel)[1](g)
  if x.shape[-1] < PER_TAP_MIN_CHANNELS:
    return autodiff(x, g)

  def per_tap(x, g):
    (dx,) = jax.vjp(lambda x: conv_of(x, kernel), x)[1](g)
    dk = conv_kernel_gradient(x, g, kernel.shape, dilation, padding)
    return dx, sum_to_type_of(dk, kernel)
  # The slow kernel gradient is XLA:CPU's, and the per-tap workaround was measured there only:
  # GPUs and TPUs keep their own convolution gradient (cuDNN's, the TPU's).
  return jax.lax.platform_dependent(x, g, cpu=per_tap, default=autodiff)


spatial_conv.defvjp(_spatial_conv_fwd, _spatial_conv_bwd)


def conv_kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], dilation: int,
                         padding: tuple[int, int]) -> Array:
  """sum over (b, h, w) of x_pad[b, h + d i, w + d j, c] g[b, h, w, f] (>= float32 sums).

  x: (B, H, W, C); g: (B, H_out, W_out, F) -> (k_h, k_w, C, F) in x's dtype.

  Kernel tap (i, j) pairs x at (h + s, w + t) with g at (h, w), (s, t) = (d i - p_h, d j - p_w).
  The narrower of x and g is shifted by (s, t) once per tap, zero-filled, in its own pixel-major
  layout (runs of W x channels values: a fast copy); the other is transposed to channel-major
  once, so that each tap is the (channels, pixels) @ (pixels, channels) product XLA:CPU runs
  fastest. Neither is padded first: XLA:CPU fuses a pad with a transpose into a copy 5-20x
  slower than the transpose alone (64 x 2x64x512: 10-30 vs 1.5 ms).
  """
  kh, kw, c, f = kernel_shape
  b, h, w, _ = x.shape
  _, h_out, w_out, _ = g.shape
  frame_h, frame_w = max(h, h_out), max(w, w_out)  # Both in one frame: x's unless g is larger.
  x = jnp.pad(x, ((0, 0), (0, frame_h - h), (0, frame_w - w), (0, 0)))
  g = jnp.pad(g, ((0, 0), (0, frame_h - h_out), (0, frame_w - w_out), (0, 0)))
  pixels = b * frame_h * frame_w
  offsets = [(i * dilation - padding[0], j * dilation - padding[1])
             for i in range(kh) for j in range(kw)]
  # Whatever is built from x alone, XLA:CPU built as soon as x existed (in the forward pass)
  # and kept until its products at the end of the backward pass: +1.3 GB of temporaries and 2x
  # the page faults in a SalsaNext step. Adding a zero computed from g makes it wait for the
  # cotangent (`optimization_barrier` does not: XLA:CPU drops it before scheduling);
  # 0 * isfinite(.) is 0 even for a non-finite g.
  x = x + jnp.isfinite(g.reshape(-1)[0]).astype(x.dtype) * 0
  contract = (((1,), (0,)), ((), ()))
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  # Shifting g by (-s, -t) lines it up with x as shifting x by (s, t) lines x up with g.
  fixed, moving, sign = (x, g, -1) if f <= c else (g, x, 1)
  fixed_cm = jnp.moveaxis(fixed, -1, 0).reshape(-1, pixels)
  taps = [shift_pixels(moving, sign * s, sign * t).reshape(pixels, -1) for s, t in offsets]
  products = [jax.lax.dot_general(fixed_cm, tap, contract, preferred_element_type=accumulate)
              for tap in taps]
  grad = jnp.stack(products).reshape(kh, kw, *products[0].shape)  # (.., fixed, moving) channels
  return (grad if f <= c else grad.swapaxes(2, 3)).astype(x.dtype)


def shift_pixels(image: Array, rows: int, cols: int) -> Array:
  """image: (B, H, W, C) -> out[:, h, w] = image[:, h + rows, w + cols], zero outside image."""
  keep = (0, 0, 0)
  return jax.lax.pad(image, jnp.zeros((), image.dtype),
                     (keep, (-rows, rows, 0), (-cols, cols, 0), keep))


def sum_to_type_of(cotangent: Array, primal: Array) -> Array:
  """psums a hand-written cotangent over the mesh axes it varies on and `primal` does not.

  Under `jax.shard_map`, autodiff sums the gradient of a replicated value over the devices; a
  custom VJP has to do the same for its result to have the primal's (replicated) type.
  """
  def varying(x):
    return getattr(getattr(jax.typeof(x), "manual_axis_type", None), "varying", frozenset())
  axes = tuple(sorted(varying(cotangent) - varying(primal)))
  return jax.lax.psum(cotangent, axes) if axes else cotangent


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


def _transposed_taps(n_in: int, n_out: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
  """The transpose of the first `keep` interpolation rows as (n_in, T) output indices/weights.

  Input sample j receives from the outputs whose lo or hi tap is j; padding taps have weight 0.
  """
  lo, hi, frac = (a[:keep] for a in _align_corners_taps(n_in, n_out))
  sources = np.concatenate([lo, hi])
  outputs = np.concatenate([np.arange(keep), np.arange(keep)])
  weights = np.concatenate([1.0 - frac, frac]).astype(np.float32)
  order = np.argsort(sources, kind="stable")
  sources, outputs, weights = sources[order], outputs[order], weights[order]
  counts = np.bincount(sources, minlength=n_in)
  slot = np.arange(len(sources)) - np.repeat(np.cumsum(counts) - counts, counts)
  idx = np.zeros((n_in, max(1, counts.max())), np.int32)
  wts = np.zeros(idx.shape, np.float32)
  idx[sources, slot] = outputs
  wts[sources, slot] = weights
  return idx, wts


def _expand(v: np.ndarray, ndim: int, axis: int, dtype) -> Array:
  shape = [1] * ndim
  shape[axis] = v.shape[0]
  return jnp.asarray(v.reshape(shape), dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _resize_axis_linear(x: Array, axis: int, n_out: int, keep: int) -> Array:
  lo, hi, frac = (a[:keep] for a in _align_corners_taps(x.shape[axis], n_out))
  x_lo = jnp.take(x, jnp.asarray(lo), axis=axis)
  x_hi = jnp.take(x, jnp.asarray(hi), axis=axis)
  return x_lo + _expand(frac, x.ndim, axis, x.dtype) * (x_hi - x_lo)


def _resize_axis_fwd(x, axis, n_out, keep):
  # Only the static size of x is needed for the gradient: keep a zero-size witness of it.
  return _resize_axis_linear(x, axis, n_out, keep), jnp.zeros((0, x.shape[axis]), x.dtype)


def _resize_axis_bwd(axis, n_out, keep, witness, g):
  # The autodiff transpose of the two takes is a scatter-add, which XLA:CPU runs one window
  # at a time; the transpose as a fixed-width gather over the outputs is ~10x faster.
  idx, wts = _transposed_taps(witness.shape[1], n_out, keep)
  grad = 0
  for t in range(idx.shape[1]):
    grad = grad + jnp.take(g, jnp.asarray(idx[:, t]), axis=axis) * _expand(
        wts[:, t], g.ndim, axis, g.dtype)
  return (grad,)


_resize_axis_linear.defvjp(_resize_axis_fwd, _resize_axis_bwd)


def _resize_axis(x: Array, axis: int, n_out: int, keep: int | None = None) -> Array:
  """Linear resize of one axis to n_out samples (align_corners=True); keeps the first `keep`."""
  keep = n_out if keep is None else keep
  if x.shape[axis] == n_out and keep == n_out:
    return x
  return _resize_axis_linear(x, axis, n_out, keep)


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


def padded_size(height: int, width: int, stride: tuple[int, int]) -> tuple[int, int]:
  """(H, W) rounded up to multiples of the network's output stride."""
  return height + (-height % stride[0]), width + (-width % stride[1])


def pad_to_multiple(x: Array, stride_h: int, stride_w: int) -> Array:
  """Zero-pads bottom/right so H % stride_h == 0 and W % stride_w == 0. x: (B, H, W, C)."""
  _, h, w, _ = x.shape
  hp, wp = padded_size(h, w, (stride_h, stride_w))
  if (hp, wp) == (h, w):
    return x
  return jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))


class MultiScalePointwise(nn.Module):
  """1x1 conv of the channel concatenation of maps bilinearly resized to (height, width).

  Same parameters (and function) as `PointwiseConv` on `concat([resize(m) for m in maps])`,
  computed without building that concatenation: resizing acts on pixels and the conv on
  channels, so they commute. Each map is first shrunk along the axes where it is larger than
  the target, multiplied by its rows of the kernel where it has the fewest pixels (maps of one
  size share a matrix product), and the products are grown to the target and summed. For
  SalsaNext's head this is 2.6x fewer multiply-adds than the concatenation.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, maps: Sequence[Array], height: int, width: int) -> Array:
    """maps: (B, h_i, w_i, C_i) -> (B, height, width, features)."""
    kernel = self.param("kernel", torch_conv_init,
                        (1, 1, sum(m.shape[-1] for m in maps), self.features), jnp.float32)
    bias = conv_bias(self, self.features)
    groups: dict[tuple[int, int], list[tuple[Array, int]]] = {}
    offset = 0
    for m in maps:
      shrunk = resize_bilinear(m.astype(self.dtype), min(m.shape[1], height),
                               min(m.shape[2], width))
      groups.setdefault(shrunk.shape[1:3], []).append((shrunk, offset))
      offset += m.shape[-1]
    out = 0
    for i, members in enumerate(groups.values()):
      x = jnp.concatenate([m for m, _ in members], axis=-1)
      rows = np.concatenate([np.arange(o, o + m.shape[-1]) for m, o in members])
      # A contiguous block of rows is a slice; a gathered kernel would keep XLA:CPU from
      # handing the product to its fast matmul library.
      k = (kernel[0, 0, rows[0]:rows[-1] + 1] if np.all(np.diff(rows) == 1)
           else kernel[0, 0, jnp.asarray(rows)])
      y = pointwise_product(x, k.astype(self.dtype))
      if i == 0:  # Resizing keeps constants; here the bias costs no extra pass over the sum.
        y = y + bias.astype(self.dtype)
      out = out + resize_bilinear(y, height, width)
    return out


class ProjectionHead(nn.Module):
  """COARSE3D projection head ("ProjectionV1") on multi-scale features at one resolution.

  1x1 conv of the concatenated, bilinearly resized maps (`MultiScalePointwise`), BN,
  LeakyReLU, 1x1 conv to D, L2 normalization.

  Attributes:
    embed_dim: D.
    dtype: compute dtype.
    bn_axis_name: axis over which batch statistics are averaged in training.
  """
  embed_dim: int = 256
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, maps: Sequence[Array], height: int, width: int, train: bool) -> Array:
    """maps: (B, h_i, w_i, C_i) -> (B, height, width, D) float32, unit L2 norm per pixel."""
    channels = sum(m.shape[-1] for m in maps)
    x = MultiScalePointwise(channels, dtype=self.dtype, name="conv1")(maps, height, width)
    x = batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype, name="bn")(x)
    x = nn.leaky_relu(x, 0.01)
    x = conv(self.embed_dim, 1, dtype=self.dtype, name="conv2")(x)
    return l2_normalize(x.astype(jnp.float32))


def normalize_embedding(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
  """`LayerNorm(D)` (two-pass variance) then L2 normalization. x: (..., D) float32."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return l2_normalize((x - mean) * jax.lax.rsqrt(var + eps) * scale + bias)


class EmbedNorm(nn.Module):
  """The LayerNorm(D) + L2 normalization ending the embedding; params 'scale' and 'bias'."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    return normalize_embedding(x, self.param("scale", nn.initializers.ones, (d,), jnp.float32),
                               self.param("bias", nn.initializers.zeros, (d,), jnp.float32))


def embedding_output(module: nn.Module, features: Sequence[Array], padded_hw: tuple[int, int],
                     out_hw: tuple[int, int], train: bool, coarse: bool) -> dict[str, Array]:
  """Projection head on multi-scale features: the dense or the coarse embedding.

  Runs inside `module`'s compact `__call__` (which provides embed_dim, dtype, bn_axis_name),
  creating the submodules 'proj_head' and 'embed_norm'. The head runs at half the padded
  resolution; its output is resized to the padded resolution (only the un-padded H x W part
  is computed), then LayerNorm(D) and L2 normalization.

  Returns {'embedding': (B, H, W, D)} float32 unit vectors, or with `coarse`
  {'embedding_coarse': (B, hp // 2, wp // 2, D)}, the head's output before the resize, which
  `embedding_at` finishes at chosen pixels only (training needs a few thousand per scan).
  """
  hp, wp = padded_hw
  emb = ProjectionHead(module.embed_dim, module.dtype, module.bn_axis_name,
                       name="proj_head")(features, *coarse_size(hp, wp), train)
  if coarse:
    return {"embedding_coarse": emb}
  emb = resize_bilinear(emb, hp, wp, crop=out_hw)
  return {"embedding": EmbedNorm(name="embed_norm")(emb)}


def coarse_size(padded_h: int, padded_w: int) -> tuple[int, int]:
  """Resolution at which the projection head runs: half the padded input."""
  return max(1, padded_h // 2), max(1, padded_w // 2)


def embedding_at(coarse: Array, norm: dict[str, Array], pixels: Array,
                 padded_hw: tuple[int, int], out_hw: tuple[int, int]) -> Array:
  """The dense embedding of `embedding_output` at chosen pixels only.

  Bilinear interpolation (the same two-tap arithmetic as `resize_bilinear`) of the coarse
  head output at each pixel, then `normalize_embedding` with the 'embed_norm' params.
  Args:
    coarse: (B, h, w, D) 'embedding_coarse'; norm: {'scale', 'bias'} (D,);
    pixels: (B, K) int flat indices r * W + c into the un-padded (H, W) = out_hw image;
    padded_hw: the padded input size the model ran at.
  Returns:
    (B, K, D) float32 unit vectors, equal to embedding.reshape(B, H * W, D)[b, pixels[b]].
  """
  b, h, w, d = coarse.shape
  (hp, wp), (_, width) = padded_hw, out_hw
  row_lo, row_hi, row_frac = (jnp.asarray(a) for a in _align_corners_taps(h, hp))
  col_lo, col_hi, col_frac = (jnp.asarray(a) for a in _align_corners_taps(w, wp))
  r, c = pixels // width, pixels % width
  taps = jnp.stack([row_lo[r] * w + col_lo[c], row_lo[r] * w + col_hi[c],
                    row_hi[r] * w + col_lo[c], row_hi[r] * w + col_hi[c]], axis=-1)
  k = pixels.shape[1]
  v = jnp.take_along_axis(coarse.reshape(b, h * w, d), taps.reshape(b, 4 * k, 1), axis=1)
  v = v.reshape(b, k, 4, d)
  fc, fr = col_frac[c][..., None], row_frac[r][..., None]
  top = v[:, :, 0] + fc * (v[:, :, 1] - v[:, :, 0])
  bottom = v[:, :, 2] + fc * (v[:, :, 3] - v[:, :, 2])
  return normalize_embedding(top + fr * (bottom - top), norm["scale"], norm["bias"])


class RangeNetwork(nn.Module):
  """The attributes the three networks share, and how they pad inputs and assemble outputs.

  Attributes:
    num_classes: C (including the ignore class 0).
    width: channel multiplier (1.0 = the reference architecture).
    embed_dim: D of the projection head.
    dtype: compute dtype (params stay float32; logits/embeddings are returned float32).
    bn_axis_name: mesh axis for cross-device BatchNorm statistics in training.
    projection_head: build the projection head and return 'embedding'.
    dropout_rate: None keeps the reference's Dropout2d rates; a float replaces all of them.
  Subclasses set `stride`, the (height, width) multiple inputs are padded to.
  """
  num_classes: int
  width: float = 1.0
  embed_dim: int = 256
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  projection_head: bool = True
  dropout_rate: float | None = None

  stride = (1, 1)

  def pad_input(self, x: Array) -> Array:
    """(B, H, W, 5) -> (B, Hp, Wp, 5) in the compute dtype, zero-padded to `stride`."""
    return pad_to_multiple(x.astype(self.dtype), *self.stride)

  def assemble_outputs(self, logits: Array, aux_logits: tuple[Array, ...],
                       features: Sequence[Array], padded_hw: tuple[int, int],
                       out_hw: tuple[int, int], train: bool,
                       coarse_embedding: bool) -> dict[str, Any]:
    """{'logits' (cropped, float32), 'aux_logits', and the head's embedding output}.

    Called from the subclass's compact `__call__` (the head's submodules are created here);
    `features` are the multi-scale maps of the projection head (`embedding_output`).
    """
    out = {"logits": crop(logits, *out_hw).astype(jnp.float32), "aux_logits": aux_logits}
    if self.projection_head:
      out.update(embedding_output(self, features, padded_hw, out_hw, train, coarse_embedding))
    return out


def crop(x: Array, height: int, width: int) -> Array:
  """Top-left (height, width) window of an NHWC array."""
  return x[:, :height, :width, :]


def param_count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
