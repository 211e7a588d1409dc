"""SalsaNext (Cortinhal et al., ISVC 2020) as used by COARSE3D, in Flax.

Layer facts (from the reference SalsaNextProto): convolutions with bias, each followed by
LeakyReLU(0.01) and then BatchNorm; 3 ResContextBlocks, 5 ResBlocks (3x3 average pooling with
stride 2, padding 1, counting the zero padding; Dropout2d 0.2 except in the first), 4 UpBlocks
(PixelShuffle 2, Dropout2d 0.2 except in the last), a 1x1 class head. The network halves both
height and width four times, so inputs are padded to multiples of 16 and outputs cropped back.
Submodule names mirror the PyTorch attribute names so weights convert one to one.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coarse3d_jax.models import layers
from coarse3d_jax.models import network

Array = jax.Array


def _lrelu(x: Array) -> Array:
  return nn.leaky_relu(x, 0.01)


class ResContextBlock(nn.Module):
  """1x1 conv shortcut + (3x3 conv, 3x3 conv dilation 2) branch, each act -> BN."""
  features: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """x: (B, H, W, C_in) -> (B, H, W, features)."""
    bn = lambda name: layers.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                                        name=name)
    shortcut = _lrelu(layers.conv(self.features, 1, dtype=self.dtype, name="conv1")(x))
    y = _lrelu(layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(shortcut))
    y = bn("bn1")(y)
    y = _lrelu(layers.conv(self.features, 3, dilation=2, dtype=self.dtype, name="conv3")(y))
    y = bn("bn2")(y)
    return shortcut + y


def _dilated_triplet(module: nn.Module, x: Array, features: int, first_conv: int,
                     train: bool) -> Array:
  """3x3 conv, 3x3 dil-2 conv, 2x2 dil-2 conv (each act -> BN), fused by a 1x1 conv.

  Runs inside `module`'s compact call; convs are named conv{first_conv}..conv{first_conv+3}
  and the BNs bn1..bn4, as in the reference. x: (B, H, W, C) -> (B, H, W, features).
  """
  bn = lambda name: layers.batch_norm(train, axis_name=module.bn_axis_name, dtype=module.dtype,
                                      name=name)
  c = lambda i, k, **kw: layers.conv(features, k, dtype=module.dtype,
                                     name=f"conv{first_conv + i}", **kw)
  y1 = bn("bn1")(_lrelu(c(0, 3)(x)))
  y2 = bn("bn2")(_lrelu(c(1, 3, dilation=2)(y1)))
  # 2x2 kernel, dilation 2, padding 1: taps at offsets -1 and +1, same output size.
  y3 = bn("bn3")(_lrelu(c(2, 2, dilation=2, padding=1)(y2)))
  fused = _lrelu(c(3, 1)(jnp.concatenate([y1, y2, y3], axis=-1)))
  return bn("bn4")(fused)


class ResBlock(nn.Module):
  """SalsaNext encoder block; returns (dropped and pooled, pre-pool skip) when pooling."""
  features: int
  dropout_rate: float
  pooling: bool
  drop_out: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array | tuple[Array, Array]:
    """x: (B, H, W, C_in) -> ((B, H/2, W/2, F), (B, H, W, F)) or (B, H, W, F)."""
    shortcut = _lrelu(layers.conv(self.features, 1, dtype=self.dtype, name="conv1")(x))
    res = shortcut + _dilated_triplet(self, x, self.features, 2, train)
    out = layers.dropout2d(res, self.dropout_rate, train) if self.drop_out else res
    if not self.pooling:
      return out
    pooled = nn.avg_pool(out, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                         count_include_pad=True)
    return pooled, res


class UpBlock(nn.Module):
  """PixelShuffle x2, concat skip, dilated triplet; Dropout2d around it when drop_out."""
  features: int
  dropout_rate: float
  drop_out: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, skip: Array, train: bool) -> Array:
    """x: (B, h, w, C), skip: (B, 2h, 2w, S) -> (B, 2h, 2w, features)."""
    drop = lambda y: layers.dropout2d(y, self.dropout_rate, train) if self.drop_out else y
    up = drop(layers.pixel_shuffle(x, 2))
    y = drop(jnp.concatenate([up, skip], axis=-1))
    y = _dilated_triplet(self, y, self.features, 1, train)
    return drop(y)


class SalsaNext(network.RangeNetwork):
  """SalsaNext with the COARSE3D projection head.

  Attributes: `network.RangeNetwork`'s (32 base channels at width 1; reference Dropout2d 0.2).
  """

  stride = (16, 16)
  # The reference's encoder_module.yaml (what it loads from its ImageNet checkpoint).
  encoder_modules = ("downCntx", "downCntx2", "downCntx3", "resBlock1", "resBlock2",
                     "resBlock3", "resBlock4", "resBlock5")

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               coarse_embedding: bool = False) -> dict[str, Any]:
    """x: (B, H, W, 5) normalized range image -> `network.RangeNetwork.assemble_outputs`."""
    _, h, w, _ = x.shape
    xp = self.pad_input(x)
    base = layers.scale_channels(32, self.width, multiple=2)
    rate = 0.2 if self.dropout_rate is None else self.dropout_rate
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    y = ResContextBlock(base, name="downCntx", **kw)(xp, train)
    y = ResContextBlock(base, name="downCntx2", **kw)(y, train)
    y = ResContextBlock(base, name="downCntx3", **kw)(y, train)
    skips = []
    for i, (mult, drop) in enumerate([(2, False), (4, True), (8, True), (8, True)]):
      y, skip = ResBlock(mult * base, rate, True, drop, name=f"resBlock{i + 1}", **kw)(y, train)
      skips.append(skip)
    y = ResBlock(8 * base, rate, False, True, name="resBlock5", **kw)(y, train)
    for i, mult in enumerate([4, 4, 2, 1]):
      y = UpBlock(mult * base, rate, i < 3, name=f"upBlock{i + 1}", **kw)(y, skips[3 - i], train)
    logits = layers.conv(self.num_classes, 1, dtype=self.dtype, name="cls_head")(y)
    return self.assemble_outputs(logits, (), skips, xp.shape[1:3], (h, w), train,
                                 coarse_embedding)
