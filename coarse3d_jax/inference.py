"""A trained model as a plain function of raw range images, for predict and the benchmarks.

Only the parameters and BatchNorm statistics are restored: no optimizer, no training module.
"""
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
import ml_collections
import numpy as np

from coarse3d_jax import augment
from coarse3d_jax import checkpoints
from coarse3d_jax import programs
from coarse3d_jax.data import datasets


@dataclasses.dataclass
class Predictor:
  """`predict(range_images (B, H, W, 5) raw, -1 on empty) -> probs (B, H, W, C)` numpy."""
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  variables: dict[str, Any]
  mean: np.ndarray
  std: np.ndarray
  geometry: dict[str, Any]  # height, width, fov_*: the projection the model was trained on.
  step: int
  _apply: Any = dataclasses.field(repr=False, default=None)

  def predict(self, range_images: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(self.variables, jnp.asarray(range_images, jnp.float32)))


def load_predictor(workdir: str, checkpoint: str | int = "latest") -> Predictor:
  """Restores params and BN statistics of `workdir`'s checkpoint (latest, best or a step)."""
  config = checkpoints.load_saved_config(workdir)
  info = datasets.get_info(config.dataset)
  info_path = os.path.join(workdir, "data_info.json")
  if not os.path.exists(info_path):
    raise checkpoints.CheckpointError(f"{info_path}: missing; was {workdir} written by training?")
  with open(info_path) as f:
    data_info = json.load(f)
  manager = checkpoints.Checkpoints(workdir)
  restored = manager.restore_variables(checkpoint, SingleDeviceSharding(jax.devices()[0]))
  manager.close()
  if restored is None:
    raise checkpoints.CheckpointError(f"{workdir}: no {checkpoint} checkpoint to load")
  variables, step = restored
  # No projection head at inference: its parameters are restored but unused.
  model = programs.build_model(config, info.num_classes, projection_head=False)
  mean = np.asarray(data_info["mean"], np.float32)
  std = np.asarray(data_info["std"], np.float32)

  @jax.jit
  def apply(variables, images):
    x = augment.normalize(images, mean, std)
    return jax.nn.softmax(model.apply(variables, x, train=False)["logits"], axis=-1)

  return Predictor(config=config, info=info, mean=mean, std=std,
                   geometry=data_info["geometry"], step=step, variables=variables, _apply=apply)
