"""`RangeNetwork`, the base class of the backbones: shared attributes, padding and outputs.

Each backbone downsamples by a fixed output stride per axis (`RangeNetwork.stride`), so inputs
are zero-padded at the bottom/right to a multiple of it (`pad_to_multiple`) and the outputs are
cropped back to the input size.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Aliased: `RangeNetwork.projection_head` is the attribute that switches the head on.
from coarse3d_jax.models import layers
from coarse3d_jax.models import projection_head as head_lib

Array = jax.Array
Dtype = Any


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
  # Top-level parameter collections of the encoder (the part the classifier and the projection
  # head share): the training diagnostics compare gradients there.
  encoder_modules = ()

  def pad_input(self, x: Array) -> Array:
    """(B, H, W, 5) -> (B, Hp, Wp, 5) in the compute dtype, zero-padded to `stride`."""
    return pad_to_multiple(x.astype(self.dtype), *self.stride)

  def assemble_outputs(self, logits: Array, aux_logits: tuple[Array, ...],
                       features: Sequence[Array], padded_hw: tuple[int, int],
                       out_hw: tuple[int, int], train: bool,
                       coarse_embedding: bool) -> dict[str, Any]:
    """{'logits' (cropped, float32), 'aux_logits', and the head's embedding output}.

    Called from the subclass's compact `__call__` (the head's submodules are created here);
    `features` are the multi-scale maps of the projection head
    (`projection_head.embedding_output`).
    """
    out = {"logits": layers.crop(logits, *out_hw).astype(jnp.float32), "aux_logits": aux_logits}
    if self.projection_head:
      out.update(head_lib.embedding_output(self, features, padded_hw, out_hw, train,
                                           coarse_embedding))
    return out
