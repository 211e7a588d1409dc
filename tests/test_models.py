"""Backbones: shapes at full size (eval_shape only), parameter counts, tiny real forwards,
padding, cross-device BatchNorm and a tiny overfit per backbone.

Compiled programs are shared through module-scoped fixtures; full-size models are never
compiled. Model init uses 'rbg' PRNG keys, whose programs compile ~4x faster than threefry's.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from coarse3d_jax import models
from coarse3d_jax.models import heads

NAMES = ("salsanext", "rangenet21", "squeezesegv3_21")
SEG_PARAMS = {"salsanext": 6_711_572, "rangenet21": 24_712_980, "squeezesegv3_21": 9_247_140}
PROJ_PARAMS = {"salsanext": 678_208, "rangenet21": 354_976, "squeezesegv3_21": 354_976}
NUM_AUX = {"salsanext": 0, "rangenet21": 0, "squeezesegv3_21": 4}
TINY = dict(num_classes=5, width=0.125, embed_dim=16)


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


def _abstract(name: str, shape, **kwargs):
  """(variables, train outputs, eval outputs) as ShapeDtypeStructs; nothing is compiled."""
  model = models.create_model(name, num_classes=20, **kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  train_out, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                               mutable=["batch_stats"]), variables, x)
  eval_out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  return variables, train_out, eval_out


@pytest.mark.parametrize("name", NAMES)
def test_reference_param_counts_at_64x2048(name):
  variables, _, _ = _abstract(name, (1, 64, 2048, 5))
  params = variables["params"]
  seg = {k: v for k, v in params.items() if k not in ("proj_head", "embed_norm")}
  assert heads.param_count(seg) == SEG_PARAMS[name]
  assert heads.param_count(params["proj_head"]) == PROJ_PARAMS[name]
  assert heads.param_count(params["embed_norm"]) == 2 * 256
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(variables))
  plain, _, _ = _abstract(name, (1, 64, 2048, 5), projection_head=False)
  assert heads.param_count(plain["params"]) == SEG_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(40, 1800), (64, 2048), (32, 100)])
def test_output_shapes_any_size(name, hw):
  _, train_out, eval_out = _abstract(name, (2,) + hw + (5,))
  for out in (train_out, eval_out):
    assert out["logits"].shape == (2,) + hw + (20,)
    assert out["embedding"].shape == (2,) + hw + (256,)
    assert out["logits"].dtype == out["embedding"].dtype == jnp.float32
  assert len(train_out["aux_logits"]) == NUM_AUX[name]
  assert all(a.shape == (2,) + hw + (20,) and a.dtype == jnp.float32
             for a in train_out["aux_logits"])
  assert eval_out["aux_logits"] == ()


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_compute_keeps_float32_params_and_outputs(name):
  variables, train_out, _ = _abstract(name, (1, 32, 100, 5), dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(variables))
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(train_out))


def test_create_model_rejects_unknown_names_and_bad_sizes():
  with pytest.raises(ValueError, match="salsanext"):
    models.create_model("unet", num_classes=20)
  with pytest.raises(ValueError, match="width"):
    models.create_model("salsanext", num_classes=20, width=0.0)
  assert set(models.MODELS) == set(NAMES)


# ---- numpy references of the PyTorch operators the models rely on ----

def test_pixel_shuffle_matches_torch_channel_order():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 12))  # NHWC, 12 = 3 * 2 * 2
  want = np.zeros((2, 6, 8, 3))
  for c in range(3):
    for i in range(2):
      for j in range(2):
        want[:, i::2, j::2, c] = x[..., c * 4 + i * 2 + j]
  np.testing.assert_allclose(heads.pixel_shuffle(jnp.asarray(x), 2), want, rtol=1e-6)


def test_unfold3x3_offset_major_and_its_torch_order():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 4, 5, 2))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  got = np.asarray(heads.unfold3x3(jnp.asarray(x)))
  for c in range(2):
    for di in range(3):
      for dj in range(3):
        k = 3 * di + dj
        np.testing.assert_allclose(got[..., k * 2 + c], xp[:, di:di + 4, dj:dj + 5, c],
                                   rtol=1e-6)
        # PyTorch's F.unfold puts the same values at channel c * 9 + k.
        assert heads.unfold_order(2)[k * 2 + c] == c * 9 + k


@pytest.mark.parametrize("shape_in,shape_out", [((5, 7), (10, 14)), ((8, 9), (4, 3)),
                                                ((3, 4), (1, 1)), ((6, 6), (6, 6))])
def test_resize_bilinear_align_corners(shape_in, shape_out):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1,) + shape_in + (2,))

  def src(i, n_in, n_out):
    return 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)

  want = np.zeros((1,) + shape_out + (2,))
  for i in range(shape_out[0]):
    for j in range(shape_out[1]):
      y, xx = src(i, shape_in[0], shape_out[0]), src(j, shape_in[1], shape_out[1])
      y0, x0 = int(np.floor(y)), int(np.floor(xx))
      y1, x1 = min(y0 + 1, shape_in[0] - 1), min(x0 + 1, shape_in[1] - 1)
      fy, fx = y - y0, xx - x0
      want[0, i, j] = ((1 - fy) * (1 - fx) * x[0, y0, x0] + (1 - fy) * fx * x[0, y0, x1]
                       + fy * (1 - fx) * x[0, y1, x0] + fy * fx * x[0, y1, x1])
  got = heads.resize_bilinear(jnp.asarray(x, jnp.float32), *shape_out)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cropped = heads.resize_bilinear(jnp.asarray(x, jnp.float32), *shape_out,
                                  crop=(max(1, shape_out[0] - 1), max(1, shape_out[1] - 2)))
  np.testing.assert_allclose(cropped, got[:, :cropped.shape[1], :cropped.shape[2]], rtol=1e-6)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) float64 align_corners=True linear interpolation matrix."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)
    lo = min(int(np.floor(src)), n_in - 1)
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1 - (src - lo)
    m[i, hi] += src - lo
  return m


@pytest.mark.parametrize("shape_in,shape_out,crop", [
    ((5, 7), (10, 14), None), ((8, 64), (32, 256), (30, 250)), ((64, 16), (32, 40), None),
    ((1, 3), (4, 9), (2, 5))])
def test_resize_bilinear_gradient_is_the_transposed_interpolation(shape_in, shape_out, crop):
  """The custom gradient (a gather over outputs) equals M_h^T g M_w in float64."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2,) + shape_in + (3,))
  keep = crop or shape_out
  mh = _interp_matrix(shape_in[0], shape_out[0])[:keep[0]]
  mw = _interp_matrix(shape_in[1], shape_out[1])[:keep[1]]
  y, vjp = jax.vjp(lambda a: heads.resize_bilinear(a, *shape_out, crop=crop),
                   jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, np.einsum("hi,wj,bijc->bhwc", mh, mw, x), rtol=1e-5, atol=1e-5)
  g = rng.normal(size=y.shape)
  (grad,) = vjp(jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(grad, np.einsum("hi,wj,bhwc->bijc", mh, mw, g),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in,c_out", [(3, 7), (7, 3)])  # Both orders of the kernel product.
def test_pointwise_product_gradient_matches_float64(c_in, c_out):
  """The hand-written VJP: dx = g k^T and dk = x^T g over all pixels, in float64."""
  rng = np.random.default_rng(7)
  x, k = rng.normal(size=(2, 3, 5, c_in)), rng.normal(size=(c_in, c_out))
  y, vjp = jax.vjp(heads.pointwise_product, jnp.asarray(x, jnp.float32),
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
  loss = lambda k, x: jnp.sum(jnp.sin(heads.pointwise_product(x, k)))
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
  monkeypatch.setattr(heads, "PER_TAP_MIN_CHANNELS", 1 if per_tap else 10**6)
  rng = np.random.default_rng(9)
  x, k = rng.normal(size=(2, 6, 9, channels[0])), rng.normal(size=kernel + channels)
  y, vjp = jax.vjp(lambda a, b: heads.spatial_conv(a, b, dilation, padding),
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
  monkeypatch.setattr(heads, "PER_TAP_MIN_CHANNELS", 1 if per_tap else 10**6)  # 3 channels.
  mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.normal(size=(4, 5, 7, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 3, 2)), jnp.float32)
  loss = lambda k, x: jnp.sum(jnp.sin(heads.spatial_conv(x, k, 2, (2, 2))))
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
  loss = lambda k, x: jnp.sum(jnp.sin(heads.spatial_conv(x, k, 1, (1, 1))))
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
    monkeypatch.setattr(heads, "PER_TAP_MIN_CHANNELS", 1 if per_tap else 10**6)

    def loss(kernels, x):
      for k in kernels:
        x = jnp.tanh(heads.spatial_conv(x, k, 1, (1, 1)))
      return jnp.sum(x)
    kernels, x = [jnp.zeros((3, 3, 8, 8))] * 6, jnp.zeros((2, 16, 64, 8))
    compiled = jax.jit(jax.grad(loss)).lower(kernels, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes(per_tap=True) < 2 * temp_bytes(per_tap=False)


@pytest.mark.parametrize("in_channels", [3, 1])  # Shifting the cotangent; shifting x.
def test_spatial_conv_kernel_gradient_columns_of_finite_cotangents_stay_finite(in_channels,
                                                                               monkeypatch):
  """An inf in one output channel's cotangent leaves the other channels' kernel gradient exact."""
  monkeypatch.setattr(heads, "PER_TAP_MIN_CHANNELS", 1)
  rng = np.random.default_rng(11)
  x, g = rng.normal(size=(1, 4, 5, in_channels)), rng.normal(size=(1, 4, 5, 2))
  g[0, 0, 0, 0] = np.inf
  _, vjp = jax.vjp(lambda k: heads.spatial_conv(jnp.asarray(x, jnp.float32), k, 1, (1, 1)),
                   jnp.zeros((3, 3, in_channels, 2)))
  (dk,) = vjp(jnp.asarray(g, jnp.float32))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([np.einsum("bhwc,bhw->c", xp[:, i:i + 4, j:j + 5], g[..., 1])
                   for i in range(3) for j in range(3)]).reshape(3, 3, in_channels)
  np.testing.assert_allclose(dk[..., 1], want, rtol=1e-5, atol=1e-5)


def test_spatial_conv_module_is_an_nn_conv():
  """Same parameter names, shapes, initial values and outputs as flax's Conv of that name."""
  x = jax.random.normal(_key(3), (2, 6, 8, 3))
  ours = heads.conv(5, 3, dilation=2, dtype=jnp.float32, name="c")
  theirs = nn.Conv(5, (3, 3), kernel_dilation=(2, 2), padding=((2, 2), (2, 2)),
                   kernel_init=heads.torch_conv_init, name="c")
  assert isinstance(ours, heads.SpatialConv)
  v_ours, v_theirs = ours.init(_key(4), x), theirs.init(_key(4), x)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)
  v_theirs = jax.tree.map(lambda a: a + 0.5, v_theirs)  # A non-zero bias too.
  np.testing.assert_allclose(ours.apply(v_theirs, x), theirs.apply(v_theirs, x),
                             rtol=1e-6, atol=1e-6)


def test_multiscale_pointwise_equals_conv_of_the_concatenation():
  """Per-map products resized and summed == the 1x1 conv of the resized concatenation."""
  rng = np.random.default_rng(6)
  shapes = [(12, 40, 3), (6, 20, 4), (3, 10, 5), (6, 5, 2), (12, 20, 3)]  # >, =, <, mixed
  maps = [rng.normal(size=(2,) + s) for s in shapes]
  layer = heads.MultiScalePointwise(7)
  params = layer.init(jax.random.key(0), [jnp.asarray(m, jnp.float32) for m in maps], 6, 20)
  kernel = rng.normal(size=(17, 7))
  bias = rng.normal(size=(7,))
  params = {"params": {"kernel": jnp.asarray(kernel[None, None], jnp.float32),
                       "bias": jnp.asarray(bias, jnp.float32)}}
  got = layer.apply(params, [jnp.asarray(m, jnp.float32) for m in maps], 6, 20)
  resized = [np.einsum("hi,wj,bijc->bhwc", _interp_matrix(m.shape[1], 6),
                       _interp_matrix(m.shape[2], 20), m) for m in maps]
  want = np.concatenate(resized, axis=-1) @ kernel + bias
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- tiny real models ----

def _torch_like_init(abstract, seed: int = 0):
  """Concrete variables for `abstract` (ShapeDtypeStructs) with PyTorch's default init.

  Kernels uniform(+-1/sqrt(fan_in)), biases 0, BN/LayerNorm scale 1, running mean 0 / var 1.
  Avoids compiling `model.init` for every tiny model (its RNG code compiles slowly); the real
  init is exercised in `test_real_init_matches_torch_defaults`.
  """
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = path[-1].key
    if name == "kernel":
      bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    fill = 1.0 if name in ("scale", "var") else 0.0
    return np.full(leaf.shape, fill, np.float32)

  return jax.tree_util.tree_map_with_path(make, abstract)


@pytest.fixture(scope="module")
def tiny():
  """name -> (model, variables) at width 0.125, without compiling init."""
  out = {}
  x = jax.ShapeDtypeStruct((1, 16, 64, 5), jnp.float32)
  for name in NAMES:
    model = models.create_model(name, **TINY)
    abstract = jax.eval_shape(lambda x, model=model: model.init(jax.random.key(0), x), x)
    out[name] = (model, _torch_like_init(abstract))
  return out


def test_real_init_matches_torch_defaults():
  model = models.create_model("salsanext", **TINY)
  variables = jax.jit(lambda x: model.init({"params": _key(0)}, x))(jnp.zeros((1, 16, 64, 5)))
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  for path, leaf in flat:
    name = path[-1].key
    if name == "kernel":
      bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      assert np.max(np.abs(leaf)) <= bound and np.std(leaf) > 0.3 * bound
    else:
      np.testing.assert_array_equal(leaf, 1.0 if name in ("scale", "var") else 0.0)


def _input(shape, seed=0):
  x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  return x.at[:, :, 0, :].set(0.0)  # an empty column, as in real scans


def _check_outputs(out, shape, num_classes, dim):
  assert out["logits"].shape == shape + (num_classes,)
  assert out["embedding"].shape == shape + (dim,)
  logits, embedding = np.asarray(out["logits"]), np.asarray(out["embedding"])
  assert np.isfinite(logits).all() and np.isfinite(embedding).all()
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_forward_train(tiny, name):
  model, variables = tiny[name]
  x = _input((2, 32, 100, 5))
  pixels = jnp.asarray(np.random.default_rng(0).integers(0, 32 * 100, (2, 40)))

  @jax.jit
  def train_fn(v, x, k):
    """Dense outputs, and the coarse embedding finished at `pixels` as training does."""
    out, updates = model.apply(v, x, train=True, rngs={"dropout": k}, mutable=["batch_stats"])
    coarse, _ = model.apply(v, x, train=True, coarse_embedding=True, rngs={"dropout": k},
                            mutable=["batch_stats"])
    sparse = heads.embedding_at(coarse["embedding_coarse"], v["params"]["embed_norm"], pixels,
                                heads.padded_size(32, 100, model.stride), (32, 100))
    return out, updates, sparse, coarse

  out, updates, sparse, coarse = train_fn(variables, x, _key(1))
  _check_outputs(out, (2, 32, 100), 5, 16)
  assert "embedding" not in coarse
  dense = np.take_along_axis(np.asarray(out["embedding"]).reshape(2, -1, 16),
                             np.asarray(pixels)[..., None], axis=1)
  np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-6)
  assert len(out["aux_logits"]) == NUM_AUX[name]
  for factor, aux in zip((2, 4, 8, 8), out["aux_logits"]):
    assert aux.shape == (2, 32, 100, 5) and np.isfinite(aux).all()
    # Nearest upsampling: every factor-wide block of columns repeats one low-res column.
    cols = np.asarray(aux)[:, :, :96].reshape(2, 32, 96 // factor, factor, 5)
    np.testing.assert_array_equal(cols, np.broadcast_to(cols[:, :, :, :1], cols.shape))
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != np.asarray(b))),
                                   variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_pads_bottom_right_and_crops(tiny, name):
  """Eval outputs for an odd-sized input equal the top-left crop of the zero-padded input's."""
  model, variables = tiny[name]
  x = _input((1, 20, 52, 5), seed=3)
  sh, sw = model.stride
  padded = jnp.pad(x, ((0, 0), (0, -20 % sh), (0, -52 % sw), (0, 0)))
  small, big = jax.jit(lambda v, a, b: (model.apply(v, a), model.apply(v, b)))(
      variables, x, padded)
  _check_outputs(small, (1, 20, 52), 5, 16)
  assert small["aux_logits"] == ()
  for key in ("logits", "embedding"):
    np.testing.assert_allclose(small[key], big[key][:, :20, :52], rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_sync_across_devices(tiny):
  """4 simulated devices with bn_axis_name='data' == 1 device on the same global batch."""
  if jax.device_count() < 4:
    pytest.skip("needs 4 (simulated) devices")
  model = models.create_model("salsanext", bn_axis_name="data", dropout_rate=0.0, **TINY)
  variables = tiny["salsanext"][1]
  # Very different statistics per device, so an unsynchronized BN would be far off.
  scale = jnp.arange(1.0, 5.0)[:, None, None, None]
  x = _input((4, 16, 64, 5), seed=4) * scale + scale

  def forward(v, x):
    out, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    return out["logits"], out["embedding"], upd["batch_stats"]

  results = []
  for devices in (jax.devices()[:1], jax.devices()[:4]):
    mesh = Mesh(np.asarray(devices), ("data",))
    fn = jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P("data")),
                               out_specs=(P("data"), P("data"), P())))
    results.append(fn(variables, x))
  (l1, e1, s1), (l4, e4, s4) = results
  np.testing.assert_allclose(l4, l1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(e4, e1, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(s4), jax.tree_util.tree_leaves(s1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _overfit_batch():
  """Blocky label maps (4 x 8 pixel regions) and inputs whose channels encode the class."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.repeat(rng.integers(0, 5, (2, 4, 8)), 4, 1), 8, 2)
  means = rng.normal(size=(5, 5))
  x = means[labels] + 0.5 * rng.normal(size=labels.shape + (5,))
  return jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)


@pytest.mark.parametrize("name", [
    "salsanext",
    pytest.param("rangenet21", marks=pytest.mark.slow),
    pytest.param("squeezesegv3_21", marks=pytest.mark.slow),
])
def test_tiny_model_overfits_one_batch(tiny, name):
  model = models.create_model(name, projection_head=False, dropout_rate=0.0, **TINY)
  variables = tiny[name][1]
  params = {k: v for k, v in variables["params"].items() if k not in ("proj_head", "embed_norm")}
  stats = {k: v for k, v in variables["batch_stats"].items() if k != "proj_head"}
  x, labels = _overfit_batch()
  tx = optax.adam(1e-2)

  def loss_fn(params, stats):
    out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
    ce = functools.partial(optax.softmax_cross_entropy_with_integer_labels, labels=labels)
    loss = ce(out["logits"]).mean() + sum(ce(a).mean() for a in out["aux_logits"])
    return loss, upd["batch_stats"]

  @jax.jit
  def step(params, stats, opt_state):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  opt_state, losses = tx.init(params), []
  for _ in range(30):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses
  assert np.mean(losses[-5:]) < np.mean(losses[5:10]) < np.mean(losses[:5]), losses
