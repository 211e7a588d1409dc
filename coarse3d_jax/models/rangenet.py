"""RangeNet++ with the DarkNet-21 encoder (Milioto et al., IROS 2019) as used by COARSE3D.

Layer facts (reference rangenet_proto.py / lidar-bonnetal darknet): bias-free convolutions,
BatchNorm with momentum 0.01, LeakyReLU(0.1). Input conv 5 -> 32, then five encoder stages
(3x3 conv with stride (1, 2) and [1, 1, 2, 2, 1] residual blocks of 1x1 + 3x3 convs) reaching
1024 channels at output stride 32 along the width only; Dropout2d 0.01 after each stage. The
decoder mirrors it with [1, 4] transposed convolutions (stride (1, 2)), adds the encoder skips
(detached from the graph in the reference) and ends with Dropout2d 0.001; the class head is
Dropout2d 0.01 + 3x3 conv. The projection head reads the skips at output strides 1, 2, 4, 8
(32 + 64 + 128 + 256 = 480 channels). Names mirror the PyTorch modules.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coarse3d_jax.models import layers
from coarse3d_jax.models import network

Array = jax.Array
DARKNET_BN_MOMENTUM = 0.01


def _lrelu(x: Array) -> Array:
  return nn.leaky_relu(x, 0.1)


def conv_bn_act(module: nn.Module, x: Array, features: int, train: bool, *, kernel: int = 3,
                stride: tuple[int, int] = (1, 1), use_bias: bool = False,
                names: tuple[str, str] = ("conv", "bn")) -> Array:
  """Conv ('same' padding), BN (momentum 0.01), LeakyReLU(0.1); submodules named `names`."""
  y = layers.conv(features, kernel, stride=stride, use_bias=use_bias, dtype=module.dtype,
                  name=names[0])(x)
  y = layers.batch_norm(train, momentum=DARKNET_BN_MOMENTUM, axis_name=module.bn_axis_name,
                        dtype=module.dtype, name=names[1])(y)
  return _lrelu(y)


class BasicBlock(nn.Module):
  """Residual block: 1x1 conv to planes[0], 3x3 conv back to planes[1] (each BN, act)."""
  planes: tuple[int, int]
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """x: (B, H, W, planes[1]) -> same shape."""
    y = conv_bn_act(self, x, self.planes[0], train, kernel=1, names=("conv1", "bn1"))
    y = conv_bn_act(self, y, self.planes[1], train, names=("conv2", "bn2"))
    return y + x


class UpConv(nn.Module):
  """`torch.nn.ConvTranspose2d(kernel_size=(1, 4), stride=(1, 2), padding=(0, 1))`: W -> 2W.

  Output column 2j collects x[j] * k[1] + x[j - 1] * k[3] and column 2j + 1 collects
  x[j + 1] * k[0] + x[j] * k[2]; both phases are computed as ordinary (1, 2) convolutions
  and interleaved. Same function as lax.conv_transpose, but XLA:CPU runs the kernel gradient
  of a transposed convolution far slower than that of ordinary convolutions
  (benchmarks/bench_models.py measures the backbones).
  kernel: (1, 4, C_in, C_out) with kernel[0, t] = torch weight[:, :, 0, t] (no flip).
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C_in) -> (B, H, 2 W, features)."""
    kernel = self.param("kernel", layers.torch_conv_init, (1, 4, x.shape[-1], self.features),
                        jnp.float32).astype(self.dtype)
    bias = layers.conv_bias(self, self.features)
    x = x.astype(self.dtype)
    conv = lambda taps, pad: jax.lax.conv_general_dilated(
        x, kernel[:, taps], (1, 1), ((0, 0), pad), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    even = conv((3, 1), (1, 0))
    odd = conv((2, 0), (0, 1))
    b, h, w, c = even.shape
    y = jnp.concatenate([even, odd], axis=-1).reshape(b, h, 2 * w, c)
    return y + bias.astype(self.dtype)


def upconv(features: int, dtype: Any, name: str) -> UpConv:
  """The decoder's upsampling layer (see `UpConv`)."""
  return UpConv(features, dtype, name=name)


class EncoderStage(nn.Module):
  """Strided (1, 2) 3x3 conv planes[0] -> planes[1], then `blocks` residual blocks."""
  planes: tuple[int, int]
  blocks: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """x: (B, H, W, planes[0]) -> (B, H, W / 2, planes[1])."""
    y = conv_bn_act(self, x, self.planes[1], train, stride=(1, 2))
    for i in range(self.blocks):
      y = BasicBlock(self.planes, self.dtype, self.bn_axis_name, name=f"residual_{i}")(y, train)
    return y


class DecoderStage(nn.Module):
  """[1, 4] transposed conv (stride (1, 2)) or 3x3 conv, BN, act, then one residual block."""
  planes: tuple[int, int]
  upsample: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """x: (B, H, W, planes[0]) -> (B, H, 2W or W, planes[1])."""
    out = self.planes[1]
    if self.upsample:
      y = upconv(out, self.dtype, "upconv")(x)
      y = layers.batch_norm(train, momentum=DARKNET_BN_MOMENTUM, axis_name=self.bn_axis_name,
                            dtype=self.dtype, name="bn")(y)
      y = _lrelu(y)
    else:
      y = conv_bn_act(self, x, out, train, use_bias=True)
    return BasicBlock((self.planes[0], out), self.dtype, self.bn_axis_name,
                      name="residual")(y, train)


class DarknetDecoder(nn.Module):
  """Decoder stages dec5 ... dec1; after each upsampling stage the matching skip is added.

  Attributes:
    planes: (in, out) channels per stage, first stage first.
    upsample: whether each stage doubles the width.
    dropout_rate: Dropout2d on the last output.
    detach_skips: stop gradients through the skip connections (reference behaviour).
  """
  planes: Sequence[tuple[int, int]]
  upsample: Sequence[bool]
  dropout_rate: float
  detach_skips: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, skips: dict[int, Array], stride: int,
               train: bool) -> list[Array]:
    """x: (B, H, W / stride, C); skips: output stride -> (B, H, W / os, C_os).

    Returns the outputs of every stage, first stage first (the last one after dropout).
    """
    outs = []
    for i, (planes, up) in enumerate(zip(self.planes, self.upsample)):
      x = DecoderStage(planes, up, self.dtype, self.bn_axis_name,
                       name=f"dec{len(self.planes) - i}")(x, train)
      if up:
        stride //= 2
        skip = skips[stride]
        x = x + (jax.lax.stop_gradient(skip) if self.detach_skips else skip)
      outs.append(x)
    outs[-1] = layers.dropout2d(outs[-1], self.dropout_rate, train)
    return outs


class DarknetBackbone(nn.Module):
  """Input conv + five strided encoder stages; returns (features, skips by output stride)."""
  channels: Sequence[int]  # input conv width, then each stage's output width
  blocks: Sequence[int]
  dropout_rate: float
  detach_skips: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, dict[int, Array]]:
    """x: (B, H, W, 5) -> ((B, H, W / 32, channels[-1]), {1: ..., 2: ..., 16: ...})."""
    x = conv_bn_act(self, x, self.channels[0], train, names=("conv1", "bn1"))
    skips, stride = {}, 1
    for i, blocks in enumerate(self.blocks):
      skips[stride] = jax.lax.stop_gradient(x) if self.detach_skips else x
      stride *= 2
      planes = (self.channels[i], self.channels[i + 1])
      x = EncoderStage(planes, blocks, self.dtype, self.bn_axis_name, name=f"enc{i + 1}")(
          x, train)
      x = layers.dropout2d(x, self.dropout_rate, train)
    return x, skips


class RangeNet21(network.RangeNetwork):
  """RangeNet++ (DarkNet-21 encoder + decoder) with the COARSE3D projection head.

  Attributes: `network.RangeNetwork`'s (reference dropout rates: encoder 0.01, decoder 0.001,
  head 0.01); detach_skips=True reproduces the reference's detached skip connections (also
  feeding the projection head).
  """
  detach_skips: bool = True

  stride = (1, 32)
  encoder_modules = ("backbone",)

  def _rates(self) -> tuple[float, float, float]:
    if self.dropout_rate is None:
      return 0.01, 0.001, 0.01
    return (self.dropout_rate,) * 3

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               coarse_embedding: bool = False) -> dict[str, Any]:
    """x: (B, H, W, 5) normalized range image -> `network.RangeNetwork.assemble_outputs`."""
    _, h, w, _ = x.shape
    xp = self.pad_input(x)
    ch = [layers.scale_channels(c, self.width) for c in (32, 64, 128, 256, 512, 1024)]
    enc_rate, dec_rate, head_rate = self._rates()
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    feats, skips = DarknetBackbone(ch, (1, 1, 2, 2, 1), enc_rate, self.detach_skips,
                                   name="backbone", **kw)(xp, train)
    dec_planes = [(ch[i], ch[i - 1]) for i in range(5, 0, -1)]
    y = DarknetDecoder(dec_planes, (True,) * 5, dec_rate, self.detach_skips, name="decoder",
                       **kw)(feats, skips, 32, train)[-1]
    y = layers.dropout2d(y, head_rate, train)
    logits = layers.conv(self.num_classes, 3, dtype=self.dtype, name="head")(y)
    mix = [skips[s] for s in (1, 2, 4, 8)]
    return self.assemble_outputs(logits, (), mix, xp.shape[1:3], (h, w), train,
                                 coarse_embedding)
