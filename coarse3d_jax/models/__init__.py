"""Range-image segmentation networks with the COARSE3D projection head.

`MODELS` maps a backbone name to its Flax module class; `create_model` builds one.
Every model maps x (B, H, W, 5) float32 (any H, W) to a dict with 'logits' (B, H, W, C)
float32, 'embedding' (B, H, W, D) float32 of unit L2 norm (when projection_head) and
'aux_logits' (a tuple of (B, H, W, C) float32; SqueezeSegV3's side heads in training).
"""
from typing import Any

import jax.numpy as jnp

from coarse3d_jax.models import network
from coarse3d_jax.models.rangenet import RangeNet21
from coarse3d_jax.models.salsanext import SalsaNext
from coarse3d_jax.models.squeezeseg import SqueezeSegV3

# Compute dtypes by config name (config.model.dtype).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

MODELS: dict[str, type[network.RangeNetwork]] = {
    "salsanext": SalsaNext,
    "rangenet21": RangeNet21,
    "squeezesegv3_21": SqueezeSegV3,
}


def create_model(name: str, *, num_classes: int, width: float = 1.0, embed_dim: int = 256,
                 dtype: Any = jnp.float32, bn_axis_name: str | None = None,
                 projection_head: bool = True,
                 dropout_rate: float | None = None) -> network.RangeNetwork:
  """Builds backbone `name` (a key of MODELS).

  Args:
    num_classes: C, including the ignore class 0.
    width: channel multiplier; 1.0 is the reference architecture.
    embed_dim: D, the projection head's output width.
    dtype: compute dtype (parameters stay float32, outputs are float32).
    bn_axis_name: mesh axis name over which BatchNorm batch statistics are averaged.
    projection_head: whether to build the projection head (output 'embedding').
    dropout_rate: None keeps the reference's dropout rates; a float replaces all of them.
  Raises:
    ValueError: unknown name or non-positive width / sizes.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  if width <= 0 or num_classes < 1 or embed_dim < 1:
    raise ValueError(f"model {name!r}: need width > 0, num_classes >= 1 and embed_dim >= 1, got "
                     f"width={width}, num_classes={num_classes}, embed_dim={embed_dim}")
  if dropout_rate is not None and not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"model {name!r}: dropout_rate must be in [0, 1), got {dropout_rate}")
  return MODELS[name](num_classes=num_classes, width=width, embed_dim=embed_dim, dtype=dtype,
                      bn_axis_name=bn_axis_name, projection_head=projection_head,
                      dropout_rate=dropout_rate)
