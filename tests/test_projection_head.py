"""The projection head's multi-scale first layer against a float64 resize-then-conv."""
import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax.models import projection_head
from tests.test_resize import interp_matrix


def test_multiscale_pointwise_equals_conv_of_the_concatenation():
  """Per-map products resized and summed == the 1x1 conv of the resized concatenation."""
  rng = np.random.default_rng(6)
  shapes = [(12, 40, 3), (6, 20, 4), (3, 10, 5), (6, 5, 2), (12, 20, 3)]  # >, =, <, mixed
  maps = [rng.normal(size=(2,) + s) for s in shapes]
  layer = projection_head.MultiScalePointwise(7)
  params = layer.init(jax.random.key(0), [jnp.asarray(m, jnp.float32) for m in maps], 6, 20)
  kernel = rng.normal(size=(17, 7))
  bias = rng.normal(size=(7,))
  params = {"params": {"kernel": jnp.asarray(kernel[None, None], jnp.float32),
                       "bias": jnp.asarray(bias, jnp.float32)}}
  got = layer.apply(params, [jnp.asarray(m, jnp.float32) for m in maps], 6, 20)
  resized = [np.einsum("hi,wj,bijc->bhwc", interp_matrix(m.shape[1], 6),
                       interp_matrix(m.shape[2], 20), m) for m in maps]
  want = np.concatenate(resized, axis=-1) @ kernel + bias
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
