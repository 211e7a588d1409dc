"""Base layers against numpy references of the PyTorch operators, and against flax's Conv."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax.models import layers


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


def test_pixel_shuffle_matches_torch_channel_order():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 12))  # NHWC, 12 = 3 * 2 * 2
  want = np.zeros((2, 6, 8, 3))
  for c in range(3):
    for i in range(2):
      for j in range(2):
        want[:, i::2, j::2, c] = x[..., c * 4 + i * 2 + j]
  np.testing.assert_allclose(layers.pixel_shuffle(jnp.asarray(x), 2), want, rtol=1e-6)


def test_unfold3x3_offset_major_and_its_torch_order():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 4, 5, 2))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  got = np.asarray(layers.unfold3x3(jnp.asarray(x)))
  for c in range(2):
    for di in range(3):
      for dj in range(3):
        k = 3 * di + dj
        np.testing.assert_allclose(got[..., k * 2 + c], xp[:, di:di + 4, dj:dj + 5, c],
                                   rtol=1e-6)
        # PyTorch's F.unfold puts the same values at channel c * 9 + k.
        assert layers.unfold_order(2)[k * 2 + c] == c * 9 + k


def test_spatial_conv_module_is_an_nn_conv():
  """Same parameter names, shapes, initial values and outputs as flax's Conv of that name."""
  x = jax.random.normal(_key(3), (2, 6, 8, 3))
  ours = layers.conv(5, 3, dilation=2, dtype=jnp.float32, name="c")
  theirs = nn.Conv(5, (3, 3), kernel_dilation=(2, 2), padding=((2, 2), (2, 2)),
                   kernel_init=layers.torch_conv_init, name="c")
  assert isinstance(ours, layers.SpatialConv)
  v_ours, v_theirs = ours.init(_key(4), x), theirs.init(_key(4), x)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)
  v_theirs = jax.tree.map(lambda a: a + 0.5, v_theirs)  # A non-zero bias too.
  np.testing.assert_allclose(ours.apply(v_theirs, x), theirs.apply(v_theirs, x),
                             rtol=1e-6, atol=1e-6)
