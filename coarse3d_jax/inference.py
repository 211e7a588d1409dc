"""A trained model as a plain function of raw range images, for predict and the benchmarks."""
import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import SingleDeviceSharding

from coarse3d_jax import augment
from coarse3d_jax import checkpoints
from coarse3d_jax import datasets
from coarse3d_jax import train
from coarse3d_jax import train_step as ts


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


def _abstract_state(config, num_classes: int):
  """The TrainState structure of a run, without allocating it."""
  model = train.build_model(config, num_classes)
  tx, _ = train.make_optimizer(config, 1, 2)
  init = functools.partial(
      ts.create_train_state, model=model, tx=tx, image_shape=(1, 64, 64, 5),
      num_classes=num_classes, num_sub=config.contrast.sub_prototypes,
      embed_dim=config.model.embed_dim)
  return ts.abstract_train_state(init, jax.random.PRNGKey(0),
                                 SingleDeviceSharding(jax.devices()[0]))


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
  state = manager.restore(_abstract_state(config, info.num_classes), checkpoint)
  manager.close()
  if state is None:
    raise checkpoints.CheckpointError(f"{workdir}: no {checkpoint} checkpoint to load")
  inference_config = ml_collections.ConfigDict(config.to_dict())
  inference_config.contrast.enabled = False  # No projection head at inference: unused params.
  model = train.build_model(inference_config, info.num_classes)
  mean = np.asarray(data_info["mean"], np.float32)
  std = np.asarray(data_info["std"], np.float32)

  @jax.jit
  def apply(variables, images):
    x = augment.normalize(images, mean, std)
    return jax.nn.softmax(model.apply(variables, x, train=False)["logits"], axis=-1)

  return Predictor(config=config, info=info, mean=mean, std=std,
                   geometry=data_info["geometry"], step=int(state.step),
                   variables={"params": state.params, "batch_stats": state.batch_stats},
                   _apply=apply)
