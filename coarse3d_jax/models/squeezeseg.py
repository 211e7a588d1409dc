"""SqueezeSegV3-21 (Xu et al., ECCV 2020) with Spatially-Adaptive Convolution, as in COARSE3D.

Layer facts (reference squeezesegv3_Proto.py / SqueezeSegV3 SAC backbone):
- input conv 5 -> 32 (3x3, no bias), BN(momentum 0.01), LeakyReLU(0.1); the x, y, z input
  channels (1:4) drive the attention of every SAC block, bilinearly downsampled
  (align_corners=True) to half the width after each downsampling stage;
- five stages of [1, 1, 2, 2, 1] SAC blocks at 32, 64, 128, 256, 256 channels; the first three
  end with a 3x3 conv of stride (1, 2) (output stride 8, width only); Dropout2d 0.01 after each;
- SAC block (C channels): attention = sigmoid(BN(conv7x7(xyz) -> 9C)), multiplied with the 3x3
  unfolded features (9C), then 1x1 conv -> C, BN, ReLU, 3x3 conv, BN, ReLU, plus the input;
  its BNs use momentum 0.1. The 9C channels are kept offset-major here (`layers.unfold3x3`),
  channel-major in PyTorch; the converter permutes the three layers touching them;
- decoder: two 3x3 conv stages at 256, three [1, 4] transposed-conv stages (128, 64, 32) adding
  the (detached) encoder skips, Dropout2d 0.01 at the end;
- heads: head5 (Dropout2d 0.01 + 3x3 conv) on the last decoder output gives the logits; head4,
  head3, head2, head1 (1x1 convs on the outputs at width/2, /4, /8, /8) are the auxiliary heads.
  The original SqueezeSegV3 trainer adds their NLL losses with weight 1 against labels
  nearest-downsampled to each head's resolution; here they are returned nearest-upsampled to
  H x W so the loss can use every (sparse) label.
- projection head input: skips at output strides 1, 2, 4 and the final backbone features
  (32 + 64 + 128 + 256 = 480 channels).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coarse3d_jax.models import layers
from coarse3d_jax.models import network
from coarse3d_jax.models import rangenet
from coarse3d_jax.models import resize

Array = jax.Array
SAC_BN_MOMENTUM = 0.1


class SACBlock(nn.Module):
  """Spatially-adaptive convolution block with an xyz-driven attention over 3x3 patches."""
  features: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, xyz: Array, x: Array, train: bool) -> Array:
    """xyz: (B, H, W, 3), x: (B, H, W, C) -> (B, H, W, C)."""
    bn = lambda name: layers.batch_norm(train, momentum=SAC_BN_MOMENTUM, dtype=self.dtype,
                                        axis_name=self.bn_axis_name, name=name)
    c = self.features
    attention = layers.conv(9 * c, 7, dtype=self.dtype, name="attention_conv")(xyz)
    attention = jax.nn.sigmoid(bn("attention_bn")(attention))
    y = layers.unfold3x3(x) * attention
    y = nn.relu(bn("mlp_bn1")(layers.conv(c, 1, dtype=self.dtype, name="mlp_conv1")(y)))
    y = nn.relu(bn("mlp_bn2")(layers.conv(c, 3, dtype=self.dtype, name="mlp_conv2")(y)))
    return y + x


class SACStage(nn.Module):
  """`blocks` SAC blocks, then optionally a (1, 2)-strided 3x3 conv to `out_features`."""
  features: int
  out_features: int
  blocks: int
  downsample: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, xyz: Array, x: Array, train: bool) -> Array:
    """x: (B, H, W, features) -> (B, H, W / 2 or W, out_features)."""
    for i in range(self.blocks):
      x = SACBlock(self.features, self.dtype, self.bn_axis_name, name=f"residual_{i}")(
          xyz, x, train)
    if self.downsample:
      x = rangenet.conv_bn_act(self, x, self.out_features, train, stride=(1, 2))
    return x


class SACBackbone(nn.Module):
  """Input conv + five SAC stages; returns (features at stride 8, skips by output stride)."""
  channels: tuple[int, ...]  # input conv width, then each stage's output width
  dropout_rate: float
  detach_skips: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, dict[int, Array]]:
    """x: (B, H, W, 5) -> ((B, H, W / 8, channels[-1]), {1: ..., 2: ..., 4: ...})."""
    xyz = x[..., 1:4]
    x = rangenet.conv_bn_act(self, x, self.channels[0], train, names=("conv1", "bn1"))
    skips, stride = {}, 1
    for i, blocks in enumerate((1, 1, 2, 2, 1)):
      down = i < 3
      stage = SACStage(self.channels[i], self.channels[i + 1], blocks, down, self.dtype,
                       self.bn_axis_name, name=f"enc{i + 1}")
      y = stage(xyz, x, train)
      if down:
        skips[stride] = jax.lax.stop_gradient(x) if self.detach_skips else x
        stride *= 2
        xyz = resize.resize_bilinear(xyz, xyz.shape[1], xyz.shape[2] // 2)
      x = layers.dropout2d(y, self.dropout_rate, train)
    return x, skips


class SqueezeSegV3(network.RangeNetwork):
  """SqueezeSegV3-21 with auxiliary heads and the COARSE3D projection head.

  Attributes: `network.RangeNetwork`'s (reference dropout rate 0.01 everywhere);
  detach_skips=True reproduces the reference's detached skip connections.
  """
  detach_skips: bool = True

  stride = (1, 8)
  encoder_modules = ("backbone",)

  def _head(self, x: Array, kernel: int, name: str, train: bool) -> Array:
    rate = 0.01 if self.dropout_rate is None else self.dropout_rate
    x = layers.dropout2d(x, rate, train)
    return layers.conv(self.num_classes, kernel, dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               coarse_embedding: bool = False) -> dict[str, Any]:
    """x: (B, H, W, 5) normalized range image -> `network.RangeNetwork.assemble_outputs`."""
    _, h, w, _ = x.shape
    xp = self.pad_input(x)
    ch = tuple(layers.scale_channels(c, self.width) for c in (32, 64, 128, 256, 256, 256))
    rate = 0.01 if self.dropout_rate is None else self.dropout_rate
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    feats, skips = SACBackbone(ch, rate, self.detach_skips, name="backbone", **kw)(xp, train)
    dec_planes = [(ch[5], ch[4]), (ch[4], ch[3]), (ch[3], ch[2]), (ch[2], ch[1]), (ch[1], ch[0])]
    ys = rangenet.DarknetDecoder(dec_planes, (False, False, True, True, True), rate,
                                 self.detach_skips, name="decoder", **kw)(feats, skips, 8, train)
    logits = self._head(ys[4], 3, "head5", train)
    aux = [self._head(ys[3 - i], 1, f"head{4 - i}", train) for i in range(4)]
    crop_up = lambda z: layers.crop(resize.upsample_nearest(
        z, 1, xp.shape[2] // z.shape[2]), h, w).astype(jnp.float32)
    aux_logits = tuple(crop_up(z) for z in aux) if train else ()
    return self.assemble_outputs(logits, aux_logits, [skips[1], skips[2], skips[4], feats],
                                 xp.shape[1:3], (h, w), train, coarse_embedding)
