"""The Flax backbones compute the PyTorch reference networks' function (converted weights).

Runs only where torch and the reference package `pc_processor` (astra-vision/COARSE3D, on
PYTHONPATH; never vendored here) import; the converter tests cover the rest without them.
"""
import numpy as np
import pytest

from coarse3d_jax import models
from coarse3d_jax.models import convert_torch

torch = pytest.importorskip("torch")
reference = pytest.importorskip("pc_processor.models")

CLASSES = {"salsanext": "SalsaNextProto", "rangenet21": "RangeNetProto",
           "squeezesegv3_21": "SqueezeSegV3Proto"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_eval_forward_matches_the_reference(name):
  import jax  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = getattr(reference, CLASSES[name])(nclasses=20).eval()
  with torch.no_grad():  # Non-trivial BatchNorm statistics, so eval-mode BN is exercised.
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  variables = convert_torch.convert_state_dict(
      name, {k: v.numpy() for k, v in net.state_dict().items()})
  x = np.random.default_rng(0).normal(size=(1, 5, 32, 256)).astype(np.float32)
  with torch.no_grad():
    probs_ref = net(torch.from_numpy(x))["pred_2d"].numpy().transpose(0, 2, 3, 1)
  out = models.create_model(name, num_classes=20, projection_head=False).apply(
      variables, x.transpose(0, 2, 3, 1), train=False)
  probs = np.asarray(jax.nn.softmax(out["logits"], axis=-1))
  np.testing.assert_allclose(probs, probs_ref, atol=1e-6)
