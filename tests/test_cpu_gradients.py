"""Hand-written gradients of the XLA:CPU ops against float64, under shard_map and per platform.

`spatial_conv`'s per-tap kernel gradient is forced on or off by monkeypatching
`cpu_gradients.PER_TAP_MIN_CHANNELS`, so that both paths are tested at a few channels.
"""
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from coarse3d_jax.models import cpu_gradients


@pytest.mark.parametrize("c_in,c_out", [(3, 7), (7, 3)])  # Both orders of the kernel product.
def test_pointwise_product_gradient_matches_float64(c_in, c_out):
  """The hand-written VJP: dx = g k^T and dk = x^T g over all pixels, in float64."""
  rng = np.random.default_rng(7)
  x, k = rng.normal(size=(2, 3, 5, c_in)), rng.normal(size=(c_in, c_out))
  y, vjp = jax.vjp(cpu_gradients.pointwise_product, jnp.asarray(x, jnp.float32),
                   jnp.asarray(k, jnp.float32))
  np.testing.assert_allclose(y, x @ k, rtol=1e-5, atol=1e-5)
  g = rng.normal(size=y.shape)
  dx, dk = vjp(jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(dx, g @ k.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, np.einsum("bhwi,bhwo->io", x, g), rtol=1e-5, atol=1e-5)


def test_pointwise_product_kernel_gradient_is_summed_over_devices():
  """Under shard_map a replicated kernel's gradient is the whole batch's, as with autodiff."""
  mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.normal(size=(4, 3, 5, 6)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
  loss = lambda k, x: jnp.sum(jnp.sin(cpu_gradients.pointwise_product(x, k)))
  sharded = jax.jit(jax.shard_map(
      lambda k, x: jax.grad(lambda k: jax.lax.psum(loss(k, x), "data"))(k),
      mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
  want = jax.grad(lambda k: jnp.sum(jnp.sin(x @ k)))(k)
  np.testing.assert_allclose(sharded(k, x), want, rtol=1e-5, atol=1e-5)


def _correlate_float64(x, k, dilation, padding):
  """Zero-padded stride-1 cross-correlation, NHWC / HWIO, written out tap by tap."""
  kh, kw, _, _ = k.shape
  xp = np.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
  h = xp.shape[1] - dilation * (kh - 1)
  w = xp.shape[2] - dilation * (kw - 1)
  return sum(np.einsum("bhwc,cf->bhwf",
                       xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w], k[i, j])
             for i in range(kh) for j in range(kw))


# SalsaNext's 3x3, 3x3 dilation 2 and 2x2 dilation 2 padding 1; SqueezeSeg's 7x7; a 1x3; a
# taller and narrower output than input.
@pytest.mark.parametrize("kernel,dilation,padding", [
    ((3, 3), 1, (1, 1)), ((3, 3), 2, (2, 2)), ((2, 2), 2, (1, 1)), ((7, 7), 1, (3, 3)),
    ((1, 3), 1, (0, 1)), ((3, 3), 1, (2, 0))])
# Per-tap products forced on or off for these few channels; with per_tap, 3 -> 4 channels shifts
# x and 5 -> 2 shifts the cotangent.
@pytest.mark.parametrize("per_tap,channels", [(True, (3, 4)), (True, (5, 2)), (False, (3, 4))])
def test_spatial_conv_value_and_gradients_match_float64(kernel, dilation, padding, per_tap,
                                                        channels, monkeypatch):
  """Forward, input gradient and both kernel gradients against a float64 correlation."""
  monkeypatch.setattr(cpu_gradients, "PER_TAP_MIN_CHANNELS", 1 if per_tap else 10**6)
  rng = np.random.default_rng(9)
  x, k = rng.normal(size=(2, 6, 9, channels[0])), rng.normal(size=kernel + channels)
  y, vjp = jax.vjp(lambda a, b: cpu_gradients.spatial_conv(a, b, dilation, padding),
                   jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32))
  np.testing.assert_allclose(y, _correlate_float64(x, k, dilation, padding), rtol=1e-5, atol=1e-5)
  g = rng.normal(size=y.shape)
  dx, dk = vjp(jnp.asarray(g, jnp.float32))
  # Both gradients of the linear map x, k -> y: by directional derivatives in float64.
  want_dk = np.stack([np.sum(_correlate_float64(x, np.eye(k.size)[n].reshape(k.shape), dilation,
                                                padding) * g) for n in range(k.size)])
  np.testing.assert_allclose(dk, want_dk.reshape(k.shape), rtol=1e-5, atol=1e-4)
  probe = rng.normal(size=x.shape)
  np.testing.assert_allclose(np.sum(np.asarray(dx, np.float64) * probe),
                             np.sum(_correlate_float64(probe, k, dilation, padding) * g),
                             rtol=1e-5)


@pytest.mark.parametrize("per_tap", [True, False])
def test_spatial_conv_kernel_gradient_is_summed_over_devices(per_tap, monkeypatch):
  """Under shard_map the replicated kernel's gradient is the whole batch's, as with autodiff."""
  # 3 channels: the per-tap path only when forced.
  monkeypatch.setattr(cpu_gradients, "PER_TAP_MIN_CHANNELS", 1 if per_tap else 10**6)
  mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.normal(size=(4, 5, 7, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 3, 2)), jnp.float32)
  loss = lambda k, x: jnp.sum(jnp.sin(cpu_gradients.spatial_conv(x, k, 2, (2, 2))))
  sharded = jax.jit(jax.shard_map(
      lambda k, x: jax.grad(lambda k: jax.lax.psum(loss(k, x), "data"))(k),
      mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
  np.testing.assert_allclose(sharded(k, x), jax.grad(loss)(k, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform,convolutions,products", [
    ("cpu", 2, 9), ("cuda", 3, 0), ("rocm", 3, 0), ("tpu", 3, 0)])
def test_spatial_conv_per_tap_kernel_gradient_is_for_xla_cpu_only(platform, convolutions,
                                                                   products):
  """Lowered for a GPU or TPU, the kernel gradient stays a convolution (cuDNN's, the TPU's).

  On CPU: the forward and input-gradient convolutions, and one product per tap of the 3x3.
  """
  loss = lambda k, x: jnp.sum(jnp.sin(cpu_gradients.spatial_conv(x, k, 1, (1, 1))))
  k = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
  x = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32)
  exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=[platform])
  text = exported(k, x).mlir_module()
  assert text.count("stablehlo.convolution") == convolutions
  assert text.count("stablehlo.dot_general") == products


def test_spatial_conv_per_tap_copies_live_only_in_their_layers_backward(monkeypatch):
  """The per-tap copies of x are made when the cotangent arrives, not kept from the forward.

  Were they made with x (as XLA:CPU scheduled them before), the copies of all six layers would
  be live at once: 4.4x the temporary memory of XLA's own gradient here, instead of 1.5x.
  """
  def temp_bytes(per_tap: bool) -> int:
    monkeypatch.setattr(cpu_gradients, "PER_TAP_MIN_CHANNELS", 1 if per_tap else 10**6)

    def loss(kernels, x):
      for k in kernels:
        x = jnp.tanh(cpu_gradients.spatial_conv(x, k, 1, (1, 1)))
      return jnp.sum(x)
    kernels, x = [jnp.zeros((3, 3, 8, 8))] * 6, jnp.zeros((2, 16, 64, 8))
    compiled = jax.jit(jax.grad(loss)).lower(kernels, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes(per_tap=True) < 2 * temp_bytes(per_tap=False)


@pytest.mark.parametrize("in_channels", [3, 1])  # Shifting the cotangent; shifting x.
def test_spatial_conv_kernel_gradient_columns_of_finite_cotangents_stay_finite(in_channels,
                                                                               monkeypatch):
  """An inf in one output channel's cotangent leaves the other channels' kernel gradient exact."""
  monkeypatch.setattr(cpu_gradients, "PER_TAP_MIN_CHANNELS", 1)
  rng = np.random.default_rng(11)
  x, g = rng.normal(size=(1, 4, 5, in_channels)), rng.normal(size=(1, 4, 5, 2))
  g[0, 0, 0, 0] = np.inf
  conv_of = lambda k: cpu_gradients.spatial_conv(jnp.asarray(x, jnp.float32), k, 1, (1, 1))
  _, vjp = jax.vjp(conv_of, jnp.zeros((3, 3, in_channels, 2)))
  (dk,) = vjp(jnp.asarray(g, jnp.float32))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([np.einsum("bhwc,bhw->c", xp[:, i:i + 4, j:j + 5], g[..., 1])
                   for i in range(3) for j in range(3)]).reshape(3, 3, in_channels)
  np.testing.assert_allclose(dk[..., 1], want, rtol=1e-5, atol=1e-5)
