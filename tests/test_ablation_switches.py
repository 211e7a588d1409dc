"""The seed's ablation rows as config switches, and the training diagnostics' arithmetic.

Each switch is checked to change what it names and nothing else: at the function level against
numpy float64 (cheap), and for the bank switches and the oracle mask on one compiled train step.
"""
import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from coarse3d_jax import checkpoints
from coarse3d_jax import input_pipeline
from coarse3d_jax import losses
from coarse3d_jax import programs
from coarse3d_jax import prototypes
from coarse3d_jax import reporting
from coarse3d_jax import sampling
from coarse3d_jax import train
from coarse3d_jax import train_step as ts
from configs import default
from tests import tiny_data
from tests.test_sampling import chi_square
from tests.test_sampling import chi_square_bound
from tests.tiny_data import tiny_config

AXIS = ts.AXIS


def _mesh(n: int) -> Mesh:
  return Mesh(np.asarray(jax.devices()[:n]), (AXIS,))


def _l2n(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- anchor sampling
def test_uniform_anchor_sampling_draws_every_pixel_of_the_class_alike():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(5) * 0.3, size=(2, 40)).astype(np.float32)
  np.testing.assert_array_equal(sampling.anchor_sampling_weights(probs, "uniform"),
                                np.ones((2, 40), np.float32))
  np.testing.assert_array_equal(sampling.anchor_sampling_weights(probs, "entropy"),
                                sampling.anchor_weights(probs))
  with pytest.raises(ValueError, match="contrast.anchor_sampling='random'"):
    sampling.anchor_sampling_weights(probs, "random")
  labels = np.zeros((1, 40), np.int32)
  members = np.array([3, 8, 9, 20, 31])
  labels[0, members] = 2
  weights = sampling.anchor_sampling_weights(probs[:1], "uniform")
  idx, valid = jax.jit(functools.partial(sampling.sample_anchors, num_classes=5,
                                         num_per_class=20_000))(jax.random.PRNGKey(1), labels,
                                                                weights)
  drawn = np.asarray(idx)[0, 1][np.asarray(valid)[0, 1]]
  counts = np.array([np.sum(drawn == m) for m in members], np.float64)
  assert counts.sum() == 20_000
  assert chi_square(counts, np.full(5, 0.2)) < chi_square_bound(4)


# ----------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_loss_against_numpy():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(6), size=50)
  probs[0] = np.eye(6)[1] * (1 - 5e-8) + 1e-8  # p_y below the 1e-6 clamp for label 0.
  labels = rng.integers(0, 6, 50)
  labels[0] = 0
  mask = rng.random(50) < 0.7
  p = probs[np.arange(50), labels]
  per_pixel = -np.log(np.maximum(p, 1e-6))
  ce = jax.jit(losses.cross_entropy_loss)
  np.testing.assert_allclose(ce(probs.astype(np.float32), labels, mask),
                             per_pixel[mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(ce(probs.astype(np.float32), labels, None), per_pixel.mean(),
                             rtol=1e-6)
  # Gradient: -1 / (p_y * count) at the label of each masked, unclamped pixel; 0 elsewhere.
  grad = np.asarray(jax.grad(losses.cross_entropy_loss)(probs.astype(np.float32), labels, mask))
  expected = np.zeros_like(probs)
  keep = mask & (p > 1e-6)
  expected[np.arange(50)[keep], labels[keep]] = -1 / (p[keep] * mask.sum())
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
  empty = np.zeros(50, bool)
  assert float(ce(probs.astype(np.float32), labels, empty)) == 0.0


def _supervised(loss_config, probs_logits, weak, devices):
  """ts.supervised_loss under shard_map on `devices` devices (all pixels are slots)."""
  b, h, w, _ = probs_logits.shape
  idx = np.broadcast_to(np.arange(h * w), (b, h * w)).astype(np.int32)
  valid = weak.reshape(b, -1) > 0
  alpha = tuple(np.linspace(0.2, 1.0, probs_logits.shape[-1]).tolist())
  fn = functools.partial(ts.supervised_loss, loss_config=loss_config, focal_alpha=alpha)
  return jax.jit(jax.shard_map(fn, mesh=_mesh(devices), in_specs=(P(AXIS),) * 4,
                               out_specs=P()))(probs_logits, weak, idx, valid)


def test_supervised_loss_switches_change_only_their_term():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 4, 8, 5)).astype(np.float32)
  weak = np.where(rng.random((4, 4, 8)) < 0.4, rng.integers(1, 5, (4, 4, 8)), 0).astype(np.int32)
  probs = np.exp(logits.astype(np.float64))
  probs = (probs / probs.sum(-1, keepdims=True)).reshape(-1, 5)
  labels, mask = weak.reshape(-1), weak.reshape(-1) > 0
  config = default.get_config().loss
  focal, logged = _supervised(config, logits, weak, 1)
  np.testing.assert_allclose(focal, logged["focal"] + logged["lovasz"], rtol=1e-6)
  config.supervised = "cross_entropy"
  ce_total, ce = _supervised(config, logits, weak, 4)
  assert "focal" not in ce
  want = -np.log(probs[mask, labels[mask]]).mean()
  np.testing.assert_allclose(ce["cross_entropy"], want, rtol=1e-5)
  np.testing.assert_allclose(ce["lovasz"], logged["lovasz"], rtol=1e-6)  # Unchanged.
  np.testing.assert_allclose(ce_total, want + logged["lovasz"], rtol=1e-5)
  config.supervised, config.lovasz_weight = "focal", 0.0
  no_lovasz, nl = _supervised(config, logits, weak, 1)
  assert "lovasz" not in nl and float(no_lovasz) == float(logged["focal"])
  config.supervised = "dice"
  with pytest.raises(ValueError, match="loss.supervised='dice'"):
    _supervised(config, logits, weak, 1)


# ----------------------------------------------------------------------------- pixel memory
def np_push(memory, emb, labels, valid):
  """Per class, the batch's embeddings in order in front of the old rows, cut to M."""
  new = memory.copy()
  for c in range(1, memory.shape[0]):
    rows = emb[valid & (labels == c)]
    if len(rows):
      new[c] = np.concatenate([rows, memory[c]])[:memory.shape[1]]
  return new


def test_push_memory_is_a_per_class_fifo():
  rng = np.random.default_rng(3)
  memory = _l2n(rng.normal(size=(5, 6, 4))).astype(np.float32)
  push = jax.jit(prototypes.push_memory)
  expected = memory.copy()
  for n in (3, 10, 40):  # The last batch overflows class 1 and 2.
    emb = _l2n(rng.normal(size=(n, 4))).astype(np.float32)
    labels = rng.integers(-1, 7, n).astype(np.int32)  # Class 0 and out-of-range never enter.
    valid = rng.random(n) < 0.8
    memory = np.asarray(push(memory, emb, labels, valid))
    expected = np_push(expected, emb, labels, valid)
    np.testing.assert_array_equal(memory, expected)
  assert np.all(memory[0] == expected[0])


def _labeled_table(rng, b=4, p=24, d=6, c=5):
  table = _l2n(rng.normal(size=(b, p, d))).astype(np.float32)
  weak = np.where(rng.random((b, p)) < 0.5, rng.integers(1, c, (b, p)), 0).astype(np.int32)
  idx = np.broadcast_to(np.arange(p), (b, p)).astype(np.int32)
  return table, weak, idx, weak > 0


def _take(table):
  return lambda idx: jnp.take_along_axis(table, idx[..., None], axis=1)


def test_pixel_memory_update_is_the_global_batch_in_scan_order_on_any_mesh():
  rng = np.random.default_rng(4)
  table, weak, idx, valid = _labeled_table(rng)
  memory = _l2n(rng.normal(size=(5, 7, 6))).astype(np.float32)

  def per_device(memory, table, weak, idx, valid):
    return ts.update_memory(memory, _take(table), weak, idx, valid)

  outs = [jax.jit(jax.shard_map(per_device, mesh=_mesh(n), in_specs=(P(),) + (P(AXIS),) * 4,
                                out_specs=P()))(memory, table, weak, idx, valid)
          for n in (1, 4)]
  expected = np_push(memory, table.reshape(-1, 6), weak.reshape(-1), valid.reshape(-1))
  counts = np.bincount(weak[valid], minlength=5)[1:]
  for new, fraction in outs:
    np.testing.assert_array_equal(new, expected)
    np.testing.assert_array_equal(fraction, [np.minimum(counts, 7).sum(), counts.sum()])


def test_frozen_bank_never_moves_and_reports_no_update():
  rng = np.random.default_rng(5)
  table, weak, idx, valid = _labeled_table(rng)
  bank = jnp.asarray(_l2n(rng.normal(size=(5, 3, 6))), jnp.float32)
  contrast = default.get_config().contrast
  state = types.SimpleNamespace(bank=bank)

  def per_device(table, weak, idx, valid, on):
    # pylint: disable-next=protected-access
    return ts._bank_update(state, _take(table), weak, (idx, valid), on, contrast, 0.5)

  def run(update_bank, on):
    contrast.update_bank = update_bank
    fn = jax.jit(jax.shard_map(per_device, mesh=_mesh(4), in_specs=(P(AXIS),) * 4 + (P(),),
                               out_specs=P()))
    return fn(table, weak, idx, valid, jnp.asarray(on))

  new, fraction = run(False, True)
  np.testing.assert_array_equal(new, bank)
  np.testing.assert_array_equal(fraction, [0, valid.sum()])
  np.testing.assert_array_equal(run(False, False)[1], [0, 0])  # Warm-up: nothing to report.
  moved, fraction = run(True, True)
  assert not np.array_equal(moved, bank) and 0 < fraction[0] <= fraction[1] == valid.sum()
  moved, fraction = run(True, False)
  np.testing.assert_array_equal(moved, bank)
  np.testing.assert_array_equal(fraction, [0, 0])


# ----------------------------------------------------------------------------- diagnostics
def test_label_precision_counts_only_pixels_with_a_full_label():
  chosen = np.array([[1, 1, 1, 0, 1, 1, 0, 1]], bool).repeat(4, 0)
  predicted = np.array([[2, 3, 1, 1, 4, 2, 2, 5]]).repeat(4, 0)
  full = np.array([[2, 3, 2, 1, 0, 2, 0, 0]]).repeat(4, 0)  # 0: unknown, not counted.
  fn = jax.jit(jax.shard_map(ts.label_precision, mesh=_mesh(4), in_specs=(P(AXIS),) * 3,
                             out_specs=P()))
  np.testing.assert_array_equal(fn(chosen, predicted, full), [4 * 3, 4 * 4])


def _contrast_inputs(seed, b=4, p=48, c=5, d=8):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(c) * 0.4, size=(b, p)).astype(np.float32)
  full = rng.integers(0, c, (b, p)).astype(np.int32)
  weak = np.where(rng.random((b, p)) < 0.15, np.maximum(full, 1), 0).astype(np.int32)
  valid = rng.random((b, p)) < 0.9
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 * b).reshape(2, b, -1)
  table = _l2n(rng.normal(size=(b, p, d))).astype(np.float32)
  bank = _l2n(rng.normal(size=(c, 3, d))).astype(np.float32)
  return probs, weak, full, valid, keys, table, bank


def _contrast(inputs, devices=1, **overrides):
  contrast = default.get_config().contrast
  contrast.update(num_anchors=16, **overrides)
  derived = types.SimpleNamespace(num_classes=inputs[0].shape[-1], num_epochs=4)

  def per_device(probs, weak, full, valid, keys, table, bank):
    return ts.contrast_loss(probs, _take(table), weak, full, valid, keys, bank, jnp.int32(2),
                            contrast, derived)

  in_specs = (P(AXIS),) * 4 + (P(None, AXIS), P(AXIS), P())
  return jax.jit(jax.shard_map(per_device, mesh=_mesh(devices), in_specs=in_specs,
                               out_specs=P()))(*inputs)


def test_contrast_diagnostics_are_global_and_uniform_sampling_changes_only_the_anchors():
  inputs = _contrast_inputs(6)
  loss, n_anchors, diag = _contrast(inputs, 1)
  loss4, n_anchors4, diag4 = _contrast(inputs, 4)
  np.testing.assert_allclose(loss4, loss, rtol=1e-6)
  assert int(n_anchors4) == int(n_anchors) > 0
  for name in ts.CONTRAST_DIAGNOSTICS:
    np.testing.assert_allclose(diag4[name], diag[name], rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(diag["loss"], [loss, 1], rtol=1e-6)
  assert 0 < diag["pseudo_label_precision"][1] and 0 < diag["anchor_precision"][1]
  uniform_loss, uniform_anchors, uniform = _contrast(inputs, 1, anchor_sampling="uniform")
  # Same pseudo-labels (same keys, same probabilities) and classes; other anchors.
  np.testing.assert_array_equal(uniform["pseudo_label_precision"],
                                diag["pseudo_label_precision"])
  assert int(uniform_anchors) == int(n_anchors) and float(uniform_loss) != float(loss)
  _, _, none = _contrast(inputs, 1, diagnostics=False)
  assert none == {}


def test_pixel_memory_takes_the_place_of_the_prototypes_in_pix2proto():
  probs, weak, full, valid, keys, table, bank = _contrast_inputs(7)
  memory = _l2n(np.random.default_rng(8).normal(size=(5, 64, 8))).astype(np.float32)
  loss, _, _ = _contrast((probs, weak, full, valid, keys, table, memory), 1, memory="pixels")
  with_bank, _, _ = _contrast((probs, weak, full, valid, keys, table, bank), 1)
  assert np.isfinite(loss) and float(loss) != float(with_bank)


def test_bank_drift_and_encoder_norm():
  rng = np.random.default_rng(9)
  initial = _l2n(rng.normal(size=(4, 3, 5)))
  bank = initial.copy()
  bank[2] = _l2n(initial[2] + 0.5 * rng.normal(size=(3, 5)))
  bank[3] = -initial[3]  # Never weakly labeled: left out.
  drift = ts.bank_drift(jnp.asarray(bank, jnp.float32), jnp.asarray(initial, jnp.float32),
                        (1, 2))
  want = np.sum(bank[1:3] * initial[1:3], -1)
  np.testing.assert_allclose(drift, [want.sum(), 6], rtol=1e-6)
  model = types.SimpleNamespace(encoder_modules=("a", "c"))
  grads = {"a": {"k": jnp.full((2,), 3.0)}, "b": jnp.full((3,), 100.0), "c": jnp.full((1,), 4.0)}
  np.testing.assert_allclose(ts.encoder_norm(grads, model), np.sqrt(9 + 9 + 16), rtol=1e-6)


def test_gradient_diagnostics_only_on_logging_steps_of_the_contrast_phase(data_dir):
  setup = train.make_setup(tiny_config(data_dir, log_every_steps=5))
  warm = setup.derived.contrast_warmup_steps
  assert warm == 4
  due = [s for s in range(1, 21) if train.gradient_diagnostics_due(setup, s)]
  assert due == [5, 10, 15, 20]
  setup.config.log_every_steps = 0
  assert not any(train.gradient_diagnostics_due(setup, s) for s in range(1, 21))
  assert train.compile_diagnostics_step(
      train.make_setup(tiny_config(data_dir, **{"contrast.diagnostics": False}))) is None


def test_diagnostic_values_of_a_window_and_the_written_scalars():
  host = [{"loss": 1.0, "diagnostics": {"a": [1.0, 4.0], "b": [0.0, 0.0], "c": [2.0, 1.0]}},
          {"loss": 3.0, "diagnostics": {"a": [3.0, 4.0], "b": [0.0, 0.0], "c": [0.0, 0.0]}}]
  assert reporting.diagnostic_values(host) == {"a": 0.5, "c": 2.0}  # b: nothing measured.

  class Writer:
    def write_scalars(self, step, scalars):
      self.scalars = scalars

  writer = Writer()
  out = reporting.flush_metrics(list(host), 2, writer, reporting.Progress(0, 10, 4), None)
  assert out == {"a": 0.5, "c": 2.0}
  assert writer.scalars["contrast/a"] == 0.5 and "contrast/b" not in writer.scalars
  assert writer.scalars["train/loss"] == 2.0 and "train/diagnostics" not in writer.scalars


# ----------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("key,value", [("loss.supervised", "dice"),
                                       ("contrast.memory", "queue"),
                                       ("contrast.anchor_sampling", "random"),
                                       ("augment.mode", "voxels")])
def test_unknown_choices_are_refused_naming_the_key(key, value):
  config = default.get_config()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(train.TrainingError, match=rf"{key}={value!r}: use one of"):
    train.check_choices(config)


def test_pixel_memory_is_a_structural_key_and_older_workdirs_still_resume(tmp_path):
  config = default.get_config()
  checkpoints.check_or_save_config(str(tmp_path), config)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["contrast"]["memory"], saved["contrast"]["pixel_memory_size"]  # An older run.
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config.contrast.pixel_memory_size = 100  # Unused by the prototype bank: not structural.
  checkpoints.check_or_save_config(str(tmp_path), config)
  config.contrast.memory = "pixels"
  with pytest.raises(checkpoints.CheckpointError,
                     match="contrast.memory: saved 'prototypes' != now 'pixels'"):
    checkpoints.check_or_save_config(str(tmp_path), config)
  checkpoints.check_or_save_config(str(tmp_path / "pixels"), config)
  config.contrast.pixel_memory_size = 50
  with pytest.raises(checkpoints.CheckpointError, match="pixel_memory_size: saved 100"):
    checkpoints.check_or_save_config(str(tmp_path / "pixels"), config)


# ----------------------------------------------------------------------------- train steps
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_tiny_dataset(str(tmp_path_factory.mktemp("tiny") / "tfds"))


def _one_contrast_step(config, batch=None):
  """(initial state, state after one step of the contrast phase, its scalars) on the first
  training batch (or `batch`)."""
  setup = train.make_setup(config)
  if batch is None:
    batch = next(input_pipeline.train_iterator(setup.builder, config, 0, setup.steps_per_epoch))
  state = train.initial_state(setup)
  warm = jax.device_put(jnp.int32(setup.derived.contrast_warmup_steps), state.step.sharding)
  state = state.replace(step=warm)
  before = jax.device_get(state)
  after, logged = train.compile_train_step(setup)(state, programs.to_global(batch, setup.mesh))
  return before, jax.device_get(after), jax.device_get(logged)


def test_frozen_bank_changes_the_bank_and_nothing_else(data_dir):
  before, moved, logged = _one_contrast_step(tiny_config(data_dir))
  _, frozen, frozen_logged = _one_contrast_step(
      tiny_config(data_dir, **{"contrast.update_bank": False}))
  np.testing.assert_array_equal(frozen.bank, before.bank)
  assert not np.array_equal(moved.bank, before.bank)
  for what in ("params", "batch_stats", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(frozen, what)), jax.tree.leaves(getattr(moved, what))):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=what)
  for key in ("loss", "focal", "lovasz", "contrast", "num_anchors"):
    np.testing.assert_allclose(frozen_logged[key], logged[key], rtol=1e-6, err_msg=key)
  assert frozen_logged["diagnostics"]["bank_update_fraction"][0] == 0
  assert logged["diagnostics"]["bank_update_fraction"][0] > 0


def _range_batch(data_dir, config):
  """The first batch in range-image form, a quarter of its valid pixels' full labels set to 0
  (points that are in the scan but carry no annotation)."""
  setup = train.make_setup(config)
  batch = dict(next(input_pipeline.train_iterator(setup.builder, config, 0,
                                                  setup.steps_per_epoch)))
  rng = np.random.default_rng(0)
  unknown = (batch["range_image"][..., 0] > 0) & (rng.random(batch["label"].shape) < 0.25)
  batch["label"] = np.where(unknown, 0, batch["label"]).astype(batch["label"].dtype)
  batch["weak_label"] = np.where(unknown, 0, batch["weak_label"]).astype(np.uint8)
  return batch, unknown


def test_pixel_memory_step_fills_each_class_with_its_labeled_embeddings(data_dir):
  config = tiny_config(data_dir, **{"contrast.memory": "pixels", "contrast.pixel_memory_size": 8,
                                    "augment.mode": "none"})
  batch, _ = _range_batch(data_dir, config)
  before, after, logged = _one_contrast_step(config, batch)
  assert before.bank.shape == (20, 8, config.model.embed_dim)
  counts = np.bincount(batch["weak_label"].ravel(), minlength=20)
  counts[0] = 0
  changed = np.any(after.bank != before.bank, axis=-1).sum(-1)
  np.testing.assert_array_equal(changed, np.minimum(counts, 8))
  np.testing.assert_allclose(np.linalg.norm(after.bank, axis=-1), 1, rtol=1e-5)
  np.testing.assert_array_equal(logged["diagnostics"]["bank_update_fraction"],
                                [np.minimum(counts, 8).sum(), counts.sum()])


def test_oracle_mask_is_the_input_and_candidates_of_full_label_pixels_only(data_dir):
  """oracle_ignore_mask=True on a batch equals the plain step on the batch with every pixel of
  full label 0 emptied; so does evaluation."""
  config = tiny_config(data_dir, **{"augment.mode": "none"})
  batch, unknown = _range_batch(data_dir, config)
  emptied = dict(batch, range_image=np.where(unknown[..., None], -1.0, batch["range_image"]))
  _, plain, plain_logged = _one_contrast_step(config, emptied)
  config.oracle_ignore_mask = True
  _, oracle, oracle_logged = _one_contrast_step(config, batch)
  for a, b in zip(jax.tree.leaves(oracle), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  for key in ("loss", "contrast", "num_anchors"):
    np.testing.assert_allclose(oracle_logged[key], plain_logged[key], rtol=1e-6, err_msg=key)
  setup = train.make_setup(config)
  state = train.initial_state(setup)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  eval_batch = lambda b: programs.to_global(dict(b, **_eval_keys(b)), setup.mesh)
  masked = train.compile_eval_step(setup)(variables, eval_batch(batch))["pred"]
  config.oracle_ignore_mask = False
  setup = train.make_setup(config)
  plain_pred = train.compile_eval_step(setup)(variables, eval_batch(emptied))["pred"]
  unmasked = train.compile_eval_step(setup)(variables, eval_batch(batch))["pred"]
  np.testing.assert_array_equal(masked, plain_pred)
  assert not np.array_equal(masked, unmasked)


def _eval_keys(batch):
  """The per-point keys an evaluation batch carries besides the range image (one point per
  pixel here)."""
  b, h, w = batch["label"].shape
  rows, cols = np.divmod(np.tile(np.arange(h * w), (b, 1)), w)
  return {"point_label": batch["label"].reshape(b, -1), "point_row": rows.astype(np.int32),
          "point_col": cols.astype(np.int32), "num_points": np.full((b,), h * w, np.int32),
          "example_valid": np.ones((b,), bool)}


def test_pix2proto_by_class_equals_the_whole_product():
  """The pixel memory's class-at-a-time Pix2Proto: value and anchor gradient of the seed
  formula (a 4-device mean included)."""
  rng = np.random.default_rng(10)
  bank = _l2n(rng.normal(size=(5, 40, 8))).astype(np.float32)
  anchors = _l2n(rng.normal(size=(32, 8))).astype(np.float32)
  labels = rng.integers(0, 6, 32).astype(np.int32)  # 0 and 5: invalid.
  valid = rng.random(32) < 0.8

  def loss(by_class, x):
    return losses.pix2proto_loss(x, labels, valid, bank, temperature=0.1, by_class=by_class)

  whole = jax.value_and_grad(functools.partial(loss, False))(anchors)
  parts = jax.jit(jax.value_and_grad(functools.partial(loss, True)))(anchors)
  np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6)
  # Entries that are sums of cancelling terms differ by float32 rounding (~1e-7).
  np.testing.assert_allclose(parts[1], whole[1], rtol=1e-5, atol=1e-6)

  def per_device(x, y, v):
    f = lambda x: losses.pix2proto_loss(x, y, v, bank, temperature=0.1, axis_name=AXIS,
                                        by_class=True)
    return jax.value_and_grad(f)(x)

  value4, grad4 = jax.jit(jax.shard_map(per_device, mesh=_mesh(4), in_specs=(P(AXIS),) * 3,
                                        out_specs=(P(), P(AXIS))))(anchors, labels, valid)
  np.testing.assert_allclose(value4, whole[0], rtol=1e-6)
  np.testing.assert_allclose(grad4, whole[1], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="by_class computes the 'seed' variant"):
    losses.pix2proto_loss(anchors, labels, valid, bank, variant="supcon", by_class=True)
