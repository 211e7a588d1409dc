"""The COARSE3D projection head: multi-scale features -> unit-norm per-pixel embeddings.

`embedding_output` builds the head inside a backbone ('proj_head' and 'embed_norm'); it runs at
half the padded input resolution (`coarse_size`). Training finishes the embedding only at the
pixels it reads (`embedding_at`), with the same arithmetic as the dense output.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax.models import cpu_gradients
from coarse3d_jax.models import layers
from coarse3d_jax.models import resize

Array = jax.Array
Dtype = Any


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
    kernel = self.param("kernel", layers.torch_conv_init,
                        (1, 1, sum(m.shape[-1] for m in maps), self.features), jnp.float32)
    bias = layers.conv_bias(self, self.features)
    groups: dict[tuple[int, int], list[tuple[Array, int]]] = {}
    offset = 0
    for m in maps:
      shrunk = resize.resize_bilinear(m.astype(self.dtype), min(m.shape[1], height),
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
      y = cpu_gradients.pointwise_product(x, k.astype(self.dtype))
      if i == 0:  # Resizing keeps constants; here the bias costs no extra pass over the sum.
        y = y + bias.astype(self.dtype)
      out = out + resize.resize_bilinear(y, height, width)
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
    x = layers.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype, name="bn")(x)
    x = nn.leaky_relu(x, 0.01)
    x = layers.conv(self.embed_dim, 1, dtype=self.dtype, name="conv2")(x)
    return layers.l2_normalize(x.astype(jnp.float32))


def normalize_embedding(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
  """`LayerNorm(D)` (two-pass variance) then L2 normalization. x: (..., D) float32."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return layers.l2_normalize((x - mean) * jax.lax.rsqrt(var + eps) * scale + bias)


class EmbedNorm(nn.Module):
  """The LayerNorm(D) + L2 normalization ending the embedding; params 'scale' and 'bias'."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (..., D) float32 -> (..., D) float32 unit vectors."""
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
  emb = resize.resize_bilinear(emb, hp, wp, crop=out_hw)
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
  row_lo, row_hi, row_frac = (jnp.asarray(a) for a in resize.align_corners_taps(h, hp))
  col_lo, col_hi, col_frac = (jnp.asarray(a) for a in resize.align_corners_taps(w, wp))
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
