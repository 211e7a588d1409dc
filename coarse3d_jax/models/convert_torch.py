"""PyTorch state_dict -> Flax variables for the COARSE3D reference checkpoints.

The reference (astra-vision/COARSE3D) saves `{'model': state_dict, ...}` or
`{'model_state': state_dict, ...}`; DistributedDataParallel adds a 'module.' prefix. Keys map
one to one onto the Flax tree (the Flax submodules carry the PyTorch attribute names) except for
a few renamed Sequential members listed in `_RENAMES`:

- conv weight (O, I, kh, kw) -> kernel (kh, kw, I, O); ConvTranspose2d weight (I, O, kh, kw) ->
  kernel (kh, kw, I, O) (`rangenet.UpConv` uses PyTorch's tap order);
- SqueezeSegV3 SAC blocks: the 9C unfolded channels are channel-major in PyTorch and
  offset-major in Flax (`layers.unfold3x3`), so the attention conv's outputs, its BN and the
  first MLP conv's inputs are permuted;
- BatchNorm2d weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var;
- LayerNorm 'feat_norm' -> 'embed_norm' scale/bias.
Ignored: 'prototypes' (the bank lives in the train state), 'mask_norm', 'num_batches_tracked'
and the ImageNet-pretraining classifier 'fc'.

Only `load_torch_checkpoint` needs torch (the optional `torch` extra); `convert_state_dict`
takes numpy arrays.
"""
from collections.abc import Mapping
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax import models
from coarse3d_jax.models import layers

_COMMON_RENAMES = (
    (r"^projector\.proj\.0\.", "proj_head.conv1."),
    (r"^projector\.proj\.1\.", "proj_head.bn."),
    (r"^projector\.proj\.3\.", "proj_head.conv2."),
    (r"^feat_norm\.", "embed_norm."),
)
_RENAMES = {
    "salsanext": _COMMON_RENAMES,
    "rangenet21": _COMMON_RENAMES + ((r"^head\.1\.", "head."),),
    "squeezesegv3_21": _COMMON_RENAMES + (
        (r"^head(\d)\.1\.", r"head\1."),
        (r"\.attention_x\.0\.", ".attention_conv."),
        (r"\.attention_x\.1\.", ".attention_bn."),
        (r"\.position_mlp_2\.0\.", ".mlp_conv1."),
        (r"\.position_mlp_2\.1\.", ".mlp_bn1."),
        (r"\.position_mlp_2\.3\.", ".mlp_conv2."),
        (r"\.position_mlp_2\.4\.", ".mlp_bn2."),
    ),
}
_IGNORED = re.compile(r"(^prototypes$|^mask_norm\.|\.num_batches_tracked$|^fc\.)")
_LOGITS_HEAD = {"salsanext": "cls_head", "rangenet21": "head", "squeezesegv3_21": "head5"}


class ConversionError(ValueError):
  """A state dict that does not fit the requested model (missing/unknown key, bad shape)."""


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (O, I, kh, kw) -> flax Conv kernel (kh, kw, I, O)."""
  return np.transpose(weight, (2, 3, 1, 0))


def conv_transpose_kernel(weight: np.ndarray) -> np.ndarray:
  """torch ConvTranspose2d weight (I, O, kh, kw) -> `rangenet.UpConv` kernel (kh, kw, I, O)."""
  return np.transpose(weight, (2, 3, 0, 1))


def _sac_reorder(key: str, value: np.ndarray) -> np.ndarray:
  """PyTorch's channel-major unfold order -> the offset-major order of `layers.unfold3x3`."""
  if ".attention_conv." in key or ".attention_bn." in key:
    return value[layers.unfold_order(value.shape[0] // 9)]
  if key.endswith(".mlp_conv1.weight"):
    return value[:, layers.unfold_order(value.shape[1] // 9)]
  return value


def flax_key(name: str, torch_key: str) -> str | None:
  """Dotted Flax path ('module.sub.leaf', leaf still PyTorch's) or None for ignored keys."""
  key = torch_key[len("module."):] if torch_key.startswith("module.") else torch_key
  if _IGNORED.search(key):
    return None
  for pattern, repl in _RENAMES[name]:
    key = re.sub(pattern, repl, key)
  return key


def _place(path: tuple[str, ...], leaf: str, value: np.ndarray) -> tuple[str, tuple, np.ndarray]:
  """(collection, Flax path, array) of one PyTorch tensor, by the tensor's role."""
  is_upconv = path[-1] == "upconv"
  if leaf == "weight" and value.ndim == 4:
    kernel = conv_transpose_kernel(value) if is_upconv else conv_kernel(value)
    return "params", path + ("kernel",), kernel
  if leaf == "weight":
    return "params", path + ("scale",), value
  if leaf == "bias":
    return "params", path + ("bias",), value
  if leaf in ("running_mean", "running_var"):
    return "batch_stats", path + (leaf[len("running_"):],), value
  raise ConversionError(f"unexpected tensor kind {leaf!r} at {'.'.join(path)}")


def _head_classes(name: str, mapped: Mapping[tuple, np.ndarray]) -> int:
  head = mapped.get(("params", _LOGITS_HEAD[name], "kernel"))
  if head is None:
    raise ConversionError(f"{name}: the state dict has no class head; pass num_classes")
  return int(head.shape[-1])


def expected_variables(name: str, *, num_classes: int, width: float = 1.0,
                       embed_dim: int | None = 256) -> dict[str, Any]:
  """Shapes (ShapeDtypeStructs) of the Flax variables; embed_dim=None: no projection head."""
  model = models.create_model(name, num_classes=num_classes, width=width,
                              embed_dim=embed_dim or 256, projection_head=embed_dim is not None)
  x = jax.ShapeDtypeStruct((1, 64, 512, 5), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return tree


def _check_name(name: str) -> None:
  if name not in models.MODELS:
    raise ConversionError(f"unknown model {name!r}; choose one of {sorted(models.MODELS)}")


def _map_one(name: str, key: str, value: Any) -> tuple[tuple[str, ...], np.ndarray] | None:
  """(Flax path incl. collection, converted array) of one PyTorch tensor; None if ignored."""
  fkey = flax_key(name, key)
  if fkey is None:
    return None
  *path, leaf = fkey.split(".")
  array = _sac_reorder(fkey, np.asarray(value, dtype=np.float32))
  collection, fpath, array = _place(tuple(path), leaf, array)
  return (collection,) + fpath, array


def map_tensors(name: str, state_dict: Mapping[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
  """Every non-ignored PyTorch tensor at its Flax place, without checking it against a model.

  Returns {(collection, module, ..., leaf): float32 array}, e.g.
  ('params', 'resBlock1', 'conv2', 'kernel') for 'resBlock1.conv2.weight'.
  """
  _check_name(name)
  pairs = (_map_one(name, k, v) for k, v in state_dict.items())
  return dict(p for p in pairs if p is not None)


def _checked(name: str, key: str, path: tuple[str, ...], array: np.ndarray,
             expected: Mapping[tuple, Any], width: float, strict: bool) -> bool:
  """Whether the tensor of `key` fits the model; raises on a bad shape or (strict) no place."""
  where = "/".join(path)
  if path not in expected:
    if strict:
      raise ConversionError(f"{name}: state dict key {key!r} has no Flax counterpart ({where})")
    return False
  if tuple(array.shape) != tuple(expected[path].shape):
    raise ConversionError(f"{name}: state dict key {key!r} converts to shape {array.shape}, "
                          f"but {where} of the model (width={width}) is "
                          f"{tuple(expected[path].shape)}")
  return True


def convert_state_dict(name: str, state_dict: Mapping[str, Any], width: float = 1.0, *,
                       num_classes: int | None = None, embed_dim: int | None = None,
                       strict: bool = True) -> dict[str, Any]:
  """Converts a reference PyTorch state dict (numpy-convertible values) to Flax variables.

  Args:
    name: a key of `models.MODELS`.
    state_dict: PyTorch key -> array (torch tensors must already be numpy, see
      `load_torch_checkpoint`); a 'module.' prefix is stripped.
    width: the width multiplier the state dict was trained with.
    num_classes, embed_dim: inferred from the class head / projector when None.
    strict: every Flax variable must be filled and no unknown key may remain. With
      strict=False (e.g. an encoder-only pretrained checkpoint) only the given tensors are
      converted; combine them with freshly initialized variables via `merge_variables`.
  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays.
  Raises:
    ConversionError: unknown model, unknown/missing key, or shape mismatch (names the key).
  """
  _check_name(name)
  mapped = {k: m for k, v in state_dict.items() if (m := _map_one(name, k, v)) is not None}
  paths = dict(mapped.values())
  if num_classes is None:
    num_classes = _head_classes(name, paths)
  proj = paths.get(("params", "proj_head", "conv2", "kernel"))
  if embed_dim is None and proj is not None:
    embed_dim = int(proj.shape[-1])
  expected = _flatten(expected_variables(name, num_classes=num_classes, width=width,
                                         embed_dim=embed_dim))
  converted = {path: array for key, (path, array) in mapped.items()
               if _checked(name, key, path, array, expected, width, strict)}
  missing = sorted("/".join(p) for p in expected if p not in converted)
  if strict and missing:
    raise ConversionError(f"{name}: state dict lacks {len(missing)} variables, e.g. "
                          f"{missing[:5]}")
  return _unflatten(converted)


def merge_variables(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
  """`base` with every leaf present in `update` replaced (nested dicts, same paths)."""
  flat = _flatten(base)
  for path, value in _flatten(update).items():
    if path not in flat:
      raise ConversionError(f"merge_variables: {'/'.join(path)} is not in the base variables")
    flat[path] = jnp.asarray(value, dtype=flat[path].dtype)
  return _unflatten(flat)


def load_torch_checkpoint(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a reference `.pth` file into {key: float32 numpy array} (needs torch installed).

  Accepts a bare state dict or a dict holding it under 'model', 'model_state' or 'state_dict';
  strips DistributedDataParallel's 'module.' prefix. Files are unpickled with
  `weights_only=True` unless `trust_pickle` (only for files from a trusted source that also
  pickle other objects).
  Raises:
    ImportError: torch is not installed (pip install 'coarse3d_jax[torch]').
    ConversionError: unreadable file or no state dict in it (the message names the file).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install 'coarse3d_jax[torch]'") from e
  try:
    data = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds)
    raise ConversionError(f"{path}: cannot be read as a PyTorch checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          f"if it is trusted and pickles other objects, pass trust_pickle=True"
                          ) from e
  for wrapper in ("model", "model_state", "state_dict"):
    if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
      data = data[wrapper]
      break
  if not isinstance(data, Mapping) or not all(torch.is_tensor(v) for v in data.values()):
    raise ConversionError(f"{path}: not a PyTorch state dict (expected a dict of tensors, "
                          f"possibly under 'model' or 'model_state')")
  return {k.removeprefix("module."): v.detach().float().cpu().numpy() for k, v in data.items()}
