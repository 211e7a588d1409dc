"""A trained model as a plain function of raw range images, for predict and the benchmarks.

Only the parameters and BatchNorm statistics are restored: no optimizer, no training module.
"""
import dataclasses
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
import ml_collections
import numpy as np

from coarse3d_jax import augment
from coarse3d_jax import checkpoints
from coarse3d_jax import programs
from coarse3d_jax import test_time
from coarse3d_jax.data import dataset_config
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
  model: Any = dataclasses.field(repr=False, default=None)
  _programs: dict = dataclasses.field(repr=False, default_factory=dict)

  def predict(self, range_images: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(self.variables, jnp.asarray(range_images, jnp.float32)))

  def distribution(self, range_images: np.ndarray, passes: test_time.Passes,
                   batch_index: int = 0) -> dict[str, np.ndarray]:
    """TTA / MC-dropout averaged class distribution and uncertainty of a batch (numpy; keys
    of `test_time.distribution_program`); dropout masks depend on the seed and `batch_index`."""
    if passes not in self._programs:
      self._programs[passes] = test_time.distribution_program(self.model, self.mean, self.std,
                                                              passes)
    out = self._programs[passes](self.variables, jnp.asarray(range_images, jnp.float32),
                                 test_time.batch_key(passes.seed, batch_index))
    return {k: np.asarray(v) for k, v in out.items()}


def check_fits(model, variables: dict[str, Any], geometry: dict[str, Any], source: str) -> None:
  """Raises CheckpointError unless every parameter and BN statistic `model` has is in
  `variables` with its shape (a checkpoint of another backbone, width or class count fails;
  extra entries such as the projection head are allowed)."""
  image = jnp.zeros((1, geometry["height"], geometry["width"], 5), jnp.float32)
  wanted = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image, train=False))
  have = flax.traverse_util.flatten_dict(variables, sep="/")
  for path, leaf in flax.traverse_util.flatten_dict(wanted, sep="/").items():
    got = getattr(have.get(path), "shape", None)
    if got != leaf.shape:
      saved = "missing" if got is None else tuple(got)
      raise checkpoints.CheckpointError(
          f"{source}: does not fit the config's model ({type(model).__name__}, width "
          f"{model.width}, {model.num_classes} classes): {path} is {saved} in the checkpoint, "
          f"{tuple(leaf.shape)} in the model")


def _dataset_info(config, data_info: dict[str, Any], info_path: str) -> datasets.DatasetInfo:
  """The description the run saved (a workdir from before there was one: the built-in table)."""
  if "dataset_description" not in data_info:
    return datasets.get_info(config.dataset)
  try:
    return dataset_config.from_dict(data_info["dataset_description"], info_path,
                                    allow_builtin_names=True)
  except dataset_config.DatasetConfigError as e:
    raise checkpoints.CheckpointError(str(e)) from None


def load_predictor(workdir: str, checkpoint: str | int = "latest") -> Predictor:
  """Restores params and BN statistics of `workdir`'s checkpoint (latest, best or a step)."""
  config = checkpoints.load_saved_config(workdir)
  info_path = os.path.join(workdir, "data_info.json")
  if not os.path.exists(info_path):
    raise checkpoints.CheckpointError(f"{info_path}: missing; was {workdir} written by training?")
  with open(info_path) as f:
    data_info = json.load(f)
  info = _dataset_info(config, data_info, info_path)
  manager = checkpoints.Checkpoints(workdir)
  restored = manager.restore_variables(checkpoint, SingleDeviceSharding(jax.devices()[0]))
  manager.close()
  if restored is None:
    raise checkpoints.CheckpointError(f"{workdir}: no {checkpoint} checkpoint to load")
  variables, step = restored
  # No projection head at inference: its parameters are restored but unused.
  model = programs.build_model(config, info.num_classes, projection_head=False)
  check_fits(model, variables, data_info["geometry"],
             f"{workdir}: checkpoint {checkpoint} (step {step})")
  mean = np.asarray(data_info["mean"], np.float32)
  std = np.asarray(data_info["std"], np.float32)

  @jax.jit
  def apply(variables, images):
    x = augment.normalize(images, mean, std)
    return jax.nn.softmax(model.apply(variables, x, train=False)["logits"], axis=-1)

  return Predictor(config=config, info=info, mean=mean, std=std,
                   geometry=data_info["geometry"], step=step, variables=variables, _apply=apply,
                   model=model)
