"""A training workdir without training: config.json, data_info.json and a checkpoint of a
randomly initialized network, for the inference tests (predict, TTA, export).

A freshly initialized network has tiny activations (PyTorch's init shrinks them layer after
layer), so its logits are nearly equal and its argmax flips on rounding noise. `write_workdir`
therefore calibrates the BatchNorm running statistics on the given images (forward passes in
training mode, as the first steps of a run would) for O(1) activations, and sets the class
head so the logits' spread is `LOGIT_STD` and every class's mean logit is 0: decisive,
image-dependent predictions of several classes.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax import augment
from coarse3d_jax import checkpoints
from coarse3d_jax import models
from coarse3d_jax.data import datasets
from configs import default

# Channel statistics of SemanticKITTI range images (range, x, y, z, remission).
MEAN = (12.12, 10.88, 0.23, -1.04, 0.21)
STD = (12.32, 11.47, 6.91, 0.86, 0.16)
LOGIT_STD = 3.0


def config_for(dataset: str, width: float = 0.125, dropout: float = 0.0):
  config = default.get_config()
  config.dataset = dataset
  config.model.width = width
  config.model.embed_dim = 16
  config.model.dropout_rate = dropout
  config.contrast.enabled = False
  return config


def calibrated_variables(config, num_classes: int, images: np.ndarray, seed: int = 0,
                         rounds: int = 10) -> dict:
  """Initial variables whose BN running statistics follow `images` (B, H, W, 5) raw and whose
  class head ('cls_head', SalsaNext's) gives logits of spread LOGIT_STD on them."""
  model = models.create_model(config.model.name, num_classes=num_classes,
                              width=config.model.width, embed_dim=config.model.embed_dim,
                              projection_head=False, dropout_rate=config.model.dropout_rate)
  x = augment.normalize(jnp.asarray(images), jnp.asarray(MEAN), jnp.asarray(STD))
  variables = model.init(jax.random.PRNGKey(seed), x, train=False)

  @jax.jit
  def update(variables, key):
    _, new = model.apply(variables, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": key})
    return {**variables, "batch_stats": new["batch_stats"]}

  for i in range(rounds):
    variables = update(variables, jax.random.PRNGKey(i))
  logits = jax.jit(lambda v: model.apply(v, x, train=False)["logits"])(variables)
  scale = LOGIT_STD / float(jnp.std(logits - logits.mean(-1, keepdims=True)))
  # Centred per class over the images' pixels, so that no class wins everywhere.
  head = {"kernel": variables["params"]["cls_head"]["kernel"] * scale,
          "bias": (variables["params"]["cls_head"]["bias"] - logits.mean((0, 1, 2))) * scale}
  return {**variables, "params": {**variables["params"], "cls_head": head}}


def write_workdir(workdir, images: np.ndarray, dataset: str = "semantickitti",
                  width: float = 0.125, dropout: float = 0.0, seed: int = 0, step: int = 7,
                  calibration_columns: int | None = None):
  """A workdir whose `step` checkpoint is the calibrated network; geometry from `images`,
  calibrated on their first `calibration_columns` columns (default all)."""
  os.makedirs(workdir, exist_ok=True)
  config = config_for(dataset, width, dropout)
  info = datasets.get_info(dataset)
  variables = calibrated_variables(config, info.num_classes,
                                   images[:, :, :calibration_columns], seed)
  checkpoints.check_or_save_config(str(workdir), config)
  geometry = {**info.geometry, "height": images.shape[1], "width": images.shape[2]}
  with open(os.path.join(workdir, "data_info.json"), "w") as f:
    json.dump({"dataset": dataset, "mean": list(MEAN), "std": list(STD), "geometry": geometry,
               "num_classes": info.num_classes}, f)
  manager = checkpoints.Checkpoints(str(workdir))
  manager.save(step, {"params": variables["params"], "batch_stats": variables["batch_stats"],
                      "step": jnp.asarray(step, jnp.int32)})
  manager.close()
  return workdir
