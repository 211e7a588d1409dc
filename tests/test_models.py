"""Backbones: shapes at full size (eval_shape only), parameter counts, tiny real forwards,
padding, cross-device BatchNorm and a tiny overfit per backbone.

Compiled programs are shared through module-scoped fixtures; full-size models are never
compiled. Model init uses 'rbg' PRNG keys, whose programs compile ~4x faster than threefry's.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from coarse3d_jax import models
from coarse3d_jax.models import layers
from coarse3d_jax.models import network
from coarse3d_jax.models import projection_head

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
  assert layers.param_count(seg) == SEG_PARAMS[name]
  assert layers.param_count(params["proj_head"]) == PROJ_PARAMS[name]
  assert layers.param_count(params["embed_norm"]) == 2 * 256
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(variables))
  plain, _, _ = _abstract(name, (1, 64, 2048, 5), projection_head=False)
  assert layers.param_count(plain["params"]) == SEG_PARAMS[name]


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
    sparse = projection_head.embedding_at(
        coarse["embedding_coarse"], v["params"]["embed_norm"], pixels,
        network.padded_size(32, 100, model.stride), (32, 100))
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
