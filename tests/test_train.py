"""The training job end to end on a tiny dataset: learning, results, resume, data parallelism."""
import json
import os
import re
import shutil
import subprocess
import sys

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
import pytest

from coarse3d_jax import checkpoints
from coarse3d_jax import inference
from coarse3d_jax import input_pipeline
from coarse3d_jax import predict
from coarse3d_jax import programs
from coarse3d_jax import reporting
from coarse3d_jax import settings
from coarse3d_jax import train
from coarse3d_jax import train_step as ts
from coarse3d_jax.data import datasets
from tests import tiny_data
from tests.tiny_data import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_tiny_dataset(str(tmp_path_factory.mktemp("tiny") / "tfds"))


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
  """One uninterrupted 12-step run; returns (workdir, results, final state)."""
  workdir = str(tmp_path_factory.mktemp("full"))
  config = tiny_config(data_dir)
  results = train.train_and_evaluate(config, workdir)
  return workdir, results, _restore(config, workdir)


def _restore(config, workdir, which="latest") -> ts.TrainState:
  setup = train.make_setup(config)
  ckpt = checkpoints.Checkpoints(workdir)
  state = ckpt.restore(train.abstract_state(setup), which)
  ckpt.close()
  return state


def _tb_values(workdir: str) -> dict[str, list]:
  """Every TensorBoard tag of the workdir's event files -> its values in step order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = {}
  for name in sorted(os.listdir(workdir)):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for v in event.summary.value:
          values.setdefault(v.tag, []).append(tf.make_ndarray(v.tensor))
  return values


def _tb_scalars(workdir: str, tag: str) -> list[float]:
  return [float(v) for v in _tb_values(workdir).get(tag, [])]


def test_tiny_run_learns_and_writes_results(full_run):
  workdir, results, state = full_run
  focal = _tb_scalars(workdir, "train/focal")
  accuracy = _tb_scalars(workdir, "train/labeled_accuracy")
  contrast = _tb_scalars(workdir, "train/contrast")
  assert len(focal) == 12
  assert np.mean(focal[-3:]) < 0.9 * np.mean(focal[:3])
  assert np.mean(accuracy[-3:]) > 2 * np.mean(accuracy[:3])
  # The contrastive term starts after the 4-step warm-up and falls as the bank organizes.
  assert contrast[:4] == [0.0] * 4 and contrast[-1] < 0.5 * contrast[4]
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 12 and saved["split"] == "val"
  info = datasets.get_info("synthetic")
  assert set(saved["per_class_iou"]) == {n for n, i in zip(info.class_names, info.ignore) if not i}
  assert saved["miou"] == pytest.approx(results["miou"])
  assert 0.0 <= saved["pixel_miou"] <= 1.0
  assert int(state.step) == 12
  norms = np.linalg.norm(np.asarray(state.bank), axis=-1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)
  tags = _tb_values(workdir)
  for tag in ("train/lr", "train/grad_norm", "train/scans_per_second", "train/lovasz",
              "train/num_anchors", "eval/miou", "eval/pixel_miou", "eval_iou/road",
              "eval/scans_per_second"):
    assert tag in tags, tag
  assert _tb_scalars(workdir, "eval/miou") == pytest.approx([results["miou"]])
  image = tags["eval/scans"][0]  # Encoded PNGs of the prediction panels.
  assert image[-1].startswith(b"\x89PNG")
  # Checkpoints: the latest 3 (every 3 steps) and the best by mIoU (the one evaluation).
  ckpt = checkpoints.Checkpoints(workdir)
  assert ckpt.latest.all_steps() == [6, 9, 12] and ckpt.best.all_steps() == [12]
  ckpt.close()
  _check_diagnostics(workdir, saved, contrast)


def _check_diagnostics(workdir: str, saved: dict, contrast: list[float]) -> None:
  """The training diagnostics of the tiny run: every logging step of the contrast phase (steps
  5-12; none in the warm-up), in range, and their last values in results.json."""
  values = {name: _tb_scalars(workdir, f"contrast/{name}") for name in (
      "pseudo_label_precision", "anchor_precision", "bank_update_fraction", "bank_drift",
      "loss", "grad_ratio")}
  assert all(len(v) == 8 for v in values.values()), {k: len(v) for k, v in values.items()}
  np.testing.assert_allclose(values["loss"], contrast[4:], rtol=1e-6)  # Pix2Proto, unweighted.
  for name in ("pseudo_label_precision", "anchor_precision", "bank_update_fraction"):
    assert 0 <= min(values[name]) and max(values[name]) <= 1 and max(values[name]) > 0, name
  # The tiny run's scans are learnable: its anchors are mostly right by the end.
  assert values["anchor_precision"][-1] > 0.5
  drift = values["bank_drift"]  # Cosine to the initial bank: 1 before any update, then falls.
  assert drift[0] < 1 and drift[-1] < drift[0]
  assert all(0 < r < 10 for r in values["grad_ratio"])
  assert saved["contrast"] == pytest.approx({k: v[-1] for k, v in values.items()}, rel=1e-6)


def test_run_resumed_from_a_mid_run_checkpoint_ends_identical(full_run, data_dir, tmp_path):
  """A run killed after step 7 restarts from its step-6 checkpoint. That checkpoint is the
  uninterrupted run's own (the same save; the two-process test kills real processes), resumed
  in a fresh workdir: the same scalars from step 7 on and, bit for bit, the same final state."""
  workdir, _, reference = full_run
  config, resumed = tiny_config(data_dir), str(tmp_path / "resumed")
  step_6 = os.path.join("checkpoints", "latest", "6")
  shutil.copytree(os.path.join(workdir, step_6), os.path.join(resumed, step_6))
  train.train_and_evaluate(config, resumed)
  for tag in ("train/loss", "train/contrast", "contrast/bank_drift"):  # Logged every step.
    assert _tb_scalars(resumed, tag) == _tb_scalars(workdir, tag)[-6:], tag  # Steps 7-12.
  state = _restore(config, resumed)
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_miou_matches_numpy_confusion(full_run, data_dir):
  _, _, state = full_run
  config = tiny_config(data_dir)
  setup = train.make_setup(config)
  p_eval = train.compile_eval_step(setup)
  preds, batches = [], []
  results = train.evaluate(setup, state, p_eval,
                           picture_fn=lambda b, p: (batches.append(b), preds.append(p)))
  conf = np.zeros((setup.info.num_classes,) * 2, np.int64)
  for batch, pred in zip(batches, preds):
    for i in np.flatnonzero(batch["example_valid"]):
      n = batch["num_points"][i]
      gt = batch["point_label"][i, :n].astype(np.int64)
      pp = pred[i][batch["point_row"][i, :n], batch["point_col"][i, :n]]
      np.add.at(conf, (gt[gt > 0], pp[gt > 0]), 1)
  tp = np.diag(conf).astype(np.float64)
  union = conf.sum(0) + conf.sum(1) - tp
  iou = tp[1:] / np.maximum(union[1:], 1e-15)
  assert results["num_scans"] == 4
  info = setup.info
  included = [c for c in range(1, info.num_classes) if not info.ignore[c]]
  np.testing.assert_allclose(results["miou"], iou[np.asarray(included) - 1].mean(), rtol=1e-12)
  np.testing.assert_array_equal(np.asarray(results["confusion_matrix"]), conf)
  # The predictor that `python -m coarse3d_jax.predict` loads from the workdir agrees.
  workdir = full_run[0]
  predictor = inference.load_predictor(workdir, "latest")
  assert predictor.step == 12 and predictor.geometry["height"] == tiny_data.HEIGHT
  assert predict.geometry_of(predictor)["width"] == tiny_data.WIDTH
  probs = predictor.predict(batches[0]["range_image"])
  agree = (np.argmax(probs[..., 1:], -1) + 1) == preds[0]
  assert agree.mean() > 0.999


def _assert_trees_close(got, want, rel: float, what: str) -> None:
  """Every leaf within rel * (its largest magnitude) of the reference."""
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    b = np.asarray(b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    # The floor absorbs leaves that are pure rounding (gradients of biases right before a BN).
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=rel * scale + 1e-8, err_msg=what)


def test_evaluation_with_the_knn_switch(full_run, data_dir):
  """config.eval.knn: point labels are the RangeNet++ vote (checked against numpy) over the
  pixel predictions, not the plain pixel lookup."""
  from tests.test_knn import _numpy_knn  # pylint: disable=g-import-not-at-top
  _, plain, state = full_run
  setup = train.make_setup(tiny_config(data_dir, **{"eval.knn": True}))
  batches, preds = [], []
  results = train.evaluate(setup, state, train.compile_eval_step(setup),
                           picture_fn=lambda b, p: (batches.append(b), preds.append(p)))
  conf = np.zeros((setup.info.num_classes,) * 2, np.int64)
  for batch, pred in zip(batches, preds):
    for i in np.flatnonzero(batch["example_valid"]):
      n = batch["num_points"][i]
      points = batch["points"][i, :n]
      labels = _numpy_knn(batch["range_image"][i, ..., 0], pred[i],
                          np.linalg.norm(points[:, :3], axis=1), batch["point_row"][i, :n],
                          batch["point_col"][i, :n], setup.info.num_classes)
      gt = batch["point_label"][i, :n].astype(np.int64)
      np.add.at(conf, (gt[gt > 0], labels[gt > 0]), 1)
  np.testing.assert_array_equal(np.asarray(results["confusion_matrix"]), conf)
  assert results["confusion_matrix"] != plain["confusion_matrix"]


# Adam's first moment after one step from zero is exactly (1 - b1) * grad, so comparing
# opt_state compares the gradients. SalsaNext (act -> BN blocks) at width 1/8 has float32
# gradients whose rounding depends on the reduction order at the 1e-4 level in early layers
# (float64 agrees to 1e-7); RangeNet-21 (conv -> BN -> act) is well conditioned.
@pytest.mark.parametrize("model_name,grad_rel", [("salsanext", 1e-3), ("rangenet21", 1e-5)])
def test_data_parallel_step_equals_single_device(data_dir, model_name, grad_rel):
  config = tiny_config(data_dir, **{"model.name": model_name})
  setup = train.make_setup(config)
  batch = next(input_pipeline.train_iterator(setup.builder, config, 0, setup.steps_per_epoch))
  outputs = []
  for devices in (jax.devices()[:1], jax.devices()[:4]):
    setup.mesh = jax.sharding.Mesh(np.asarray(devices), (ts.AXIS,))
    warm = setup.derived.contrast_warmup_steps  # Start with the contrastive part on.
    state = train.initial_state(setup)
    state = state.replace(step=jax.device_put(jax.numpy.int32(warm), state.step.sharding))
    global_batch = programs.to_global(batch, setup.mesh)
    measured = train.compile_diagnostics_step(setup)(state, global_batch)
    state, metrics = train.compile_train_step(setup)(state, global_batch)
    metrics["diagnostics"].update(measured)
    outputs.append(jax.device_get((state, metrics)))
  (one, m1), (four, m4) = outputs
  assert float(m1["num_anchors"]) > 0 and float(m1["contrast"]) > 0
  # Total = focal + lovasz + 0.1 * contrast (docs/design.md).
  np.testing.assert_allclose(m1["loss"], m1["focal"] + m1["lovasz"] + 0.1 * m1["contrast"],
                             rtol=1e-6)
  for key in ("loss", "focal", "lovasz", "contrast", "num_anchors", "num_labeled"):
    np.testing.assert_allclose(m4[key], m1[key], rtol=2e-6, err_msg=key)
  # The training diagnostics are global too.
  assert set(m1["diagnostics"]) == {"loss", "pseudo_label_precision", "anchor_precision",
                                    "bank_update_fraction", "bank_drift", "grad_ratio"}
  for name, value in m1["diagnostics"].items():
    assert value[1] > 0, name
    np.testing.assert_allclose(m4["diagnostics"][name], value, err_msg=name,
                               rtol=grad_rel if name == "grad_ratio" else 1e-5)
  # RangeNet-21's projection head reads detached skips (as the reference's): the contrastive
  # term trains the head only, never the encoder.
  assert (m1["diagnostics"]["grad_ratio"][0] == 0) == (model_name == "rangenet21")
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=grad_rel, err_msg="grad_norm")
  _assert_trees_close(four.opt_state, one.opt_state, grad_rel, "gradients (Adam moments)")
  _assert_trees_close(four.batch_stats, one.batch_stats, 1e-5, "batch_stats")
  _assert_trees_close(four.bank, one.bank, 1e-5, "bank")
  _assert_trees_close(four.params, one.params, 1e-5, "params")


def test_no_contrast_and_no_bank_update_during_the_warm_up(data_dir):
  setup = train.make_setup(tiny_config(data_dir))
  batch = next(input_pipeline.train_iterator(setup.builder, setup.config, 0,
                                             setup.steps_per_epoch))
  state = train.initial_state(setup)
  bank = np.asarray(state.bank)
  state, metrics = train.compile_train_step(setup)(state, programs.to_global(batch, setup.mesh))
  assert float(metrics["contrast"]) == 0 and int(metrics["num_anchors"]) == 0
  np.testing.assert_array_equal(np.asarray(state.bank), bank)
  np.testing.assert_allclose(metrics["loss"], metrics["focal"] + metrics["lovasz"], rtol=1e-6)


def test_bfloat16_training_tracks_float32(full_run, data_dir, tmp_path):
  """model.dtype=bfloat16: float32 params, bank and losses; the run learns like float32."""
  workdir, results, state = full_run
  # Without the diagnostics' program (float32's run checks them): one compile fewer.
  config = tiny_config(data_dir, **{"model.dtype": "bfloat16", "contrast.diagnostics": False})
  bf16_results = train.train_and_evaluate(config, str(tmp_path))
  bf16 = _restore(config, str(tmp_path))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16.params))
  assert bf16.bank.dtype == np.float32
  for tag in ("train/loss", "train/focal"):
    want, got = _tb_scalars(workdir, tag), _tb_scalars(str(tmp_path), tag)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(np.mean(got[-4:]), np.mean(want[-4:]), rtol=0.1, err_msg=tag)
  # The contrastive term (0.1 of the loss) samples anchors from the predictions: bfloat16
  # changes which pixels are drawn, so it is checked to be there and falling, not equal.
  contrast = _tb_scalars(str(tmp_path), "train/contrast")
  assert contrast[4] > 0 and contrast[-1] < contrast[4]
  accuracy = _tb_scalars(str(tmp_path), "train/labeled_accuracy")
  assert np.mean(accuracy[-3:]) > 2 * np.mean(accuracy[:3])
  assert bf16_results["miou"] == pytest.approx(results["miou"], abs=0.05)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(bf16.bank), axis=-1), 1.0, atol=1e-5)


def _run_main(*args: str, config_file: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")  # conftest's XLA_FLAGS, cache.
  return subprocess.run([sys.executable, "-m", "coarse3d_jax.main", f"--config={config_file}",
                         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_main_evaluates_a_saved_checkpoint_and_reports_errors(full_run, data_dir, tmp_path):
  workdir, results, _ = full_run
  config_file = tmp_path / "tiny_config.py"
  config_file.write_text("from tests.tiny_data import tiny_config\n\n\n"
                         f"def get_config():\n  return tiny_config({data_dir!r})\n")
  os.remove(os.path.join(workdir, "results.json"))
  done = _run_main(f"--workdir={workdir}", "--mode=eval", "--checkpoint=best",
                   config_file=str(config_file))
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 12 and saved["miou"] == pytest.approx(results["miou"], abs=1e-9)
  assert "mIoU" in done.stderr  # The per-class table.
  empty = _run_main(f"--workdir={tmp_path / 'empty'}", "--mode=eval",
                    config_file=str(config_file))
  assert empty.returncode == 1 and "no latest checkpoint to evaluate" in empty.stderr
  partial = _run_main(f"--workdir={tmp_path / 'x'}", "--num_processes=2",
                      config_file=str(config_file))
  assert partial.returncode == 2 and "go together" in partial.stderr


def test_init_from_a_reference_checkpoint(data_dir, monkeypatch, tmp_path):
  """model.init_from: the tensors of a PyTorch state dict replace the matching initial ones;
  a bad file stops the run with a message naming it."""
  from coarse3d_jax.models import convert_torch  # pylint: disable=g-import-not-at-top
  setup = train.make_setup(tiny_config(data_dir, **{"model.init_from": "ref.pth"}))
  state = train.initial_state(setup)
  head = state.params["cls_head"]["kernel"]  # (1, 1, F, C)
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(head.shape[3], head.shape[2], 1, 1)).astype(np.float32)
  bias = rng.normal(size=head.shape[3]).astype(np.float32)
  monkeypatch.setattr(convert_torch, "load_torch_checkpoint", lambda path: {
      "module.cls_head.weight": weight, "module.cls_head.bias": bias, "fc.weight": bias})
  loaded = train.init_from_torch(setup, state)
  np.testing.assert_array_equal(loaded.params["cls_head"]["kernel"][0, 0], weight[:, :, 0, 0].T)
  np.testing.assert_array_equal(loaded.params["cls_head"]["bias"], bias)
  np.testing.assert_array_equal(loaded.params["downCntx"]["conv1"]["kernel"],
                                state.params["downCntx"]["conv1"]["kernel"])
  monkeypatch.setattr(convert_torch, "load_torch_checkpoint", lambda path: {
      "cls_head.weight": weight[:3]})
  with pytest.raises(train.TrainingError, match="model.init_from=ref.pth: .*cls_head"):
    train.init_from_torch(setup, state)


def test_input_order_is_a_function_of_seed_and_epoch(data_dir):
  config = tiny_config(data_dir)
  builder = input_pipeline.load_builder(data_dir)

  def ids(start, count, seed=0):
    config.seed = seed
    config.batch_size = 2
    it = input_pipeline.train_iterator(builder, config, start, 4)
    return [tuple(np.asarray(next(it)["point_label"][:, :8]).ravel()) for _ in range(count)]

  full = ids(0, 8)
  assert ids(0, 8) == full
  assert ids(5, 3) == full[5:]
  assert full[:4] != full[4:8]  # Epochs are reshuffled.
  assert ids(0, 4, seed=1) != full[:4]


def test_input_pipelines_run_without_the_autotuning_thread(data_dir):
  """Its sleeping thread made deleting each epoch's iterator wait up to ~30 s."""
  config = tiny_config(data_dir)
  builder = input_pipeline.load_builder(data_dir)
  for ds in (input_pipeline.train_epoch(builder, config, 0, 0, 2),
             input_pipeline.eval_dataset(builder, "val", 2, config.max_points)):
    assert ds.options().autotune.enabled is False
    assert len(list(ds.take(2))) == 2


def _parse_config(argv: list[str]):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_config_overrides_and_unknown_keys():
  config = _parse_config(["prog", "--config=configs/demo.py", "--config.model.width=0.5",
                          "--config.contrast.enabled=false"])
  assert config.model.width == 0.5 and not config.contrast.enabled
  assert config.dataset == "synthetic" and config.optimizer.weight_decay == 1e-5
  with pytest.raises((flags.Error, AttributeError), match='Did you mean "width"'):
    _parse_config(["prog", "--config=configs/demo.py", "--config.model.widht=0.5"])


def test_incompatible_workdir_is_refused(tmp_path, data_dir):
  config = tiny_config(data_dir)
  checkpoints.check_or_save_config(str(tmp_path), config)
  config.model.name = "rangenet21"
  with pytest.raises(checkpoints.CheckpointError, match="model.name"):
    checkpoints.check_or_save_config(str(tmp_path), config)


def test_nonfinite_loss_stops_with_step_and_checkpoint():
  class Writer:
    def write_scalars(self, step, scalars):
      self.last = (step, scalars)

  writer = Writer()
  progress = reporting.Progress(0, 10, 4)
  pending = [{"loss": np.float32(1.0)}, {"loss": np.float32(0.5)}]
  reporting.flush_metrics(pending, 2, writer, progress, last_saved=None)
  assert writer.last[1]["train/loss"] == pytest.approx(0.75) and not pending
  pending = [{"loss": np.float32(1.0)}, {"loss": np.float32(np.nan)}, {"loss": np.float32(2)}]
  with pytest.raises(train.TrainingError, match=r"nan at step 4.*step 2\) is kept"):
    reporting.flush_metrics(pending, 5, writer, progress, last_saved=2)


def test_progress_rate_leaves_out_paused_time(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(train.time, "time", lambda: clock[0])
  progress = reporting.Progress(0, 100, 4)
  clock[0] += 10.0  # 5 steps of 4 scans: 2 scans/s.
  with progress.paused():
    clock[0] += 30.0  # An evaluation.
  clock[0] += 10.0  # 5 more steps.
  assert progress(10, 1.0) == pytest.approx(40 / 20)
  clock[0] += 4.0  # The next window starts from the last log, with nothing left out.
  assert progress(12, 1.0) == pytest.approx(8 / 4)


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(data_dir, tmp_path):
  # NaN remission in one training scan; the stats (hence the compiled program) are unchanged.
  # Scan 6 is in the second batch of the (seed 0) order, so step 1 completes and is saved.
  nan_dir = tiny_data.write_tiny_dataset(str(tmp_path / "nan"), nan_train_scan=6,
                                         stats_from=data_dir)
  config = tiny_config(nan_dir, checkpoint_every_steps=1)
  with pytest.raises(train.TrainingError, match=r"loss is nan at step (\d+).*is kept") as err:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  bad_step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
  saved = checkpoints.Checkpoints(str(tmp_path / "work")).latest.latest_step()
  assert bad_step == 2 and saved == 1
  assert f"(step {saved})" in str(err.value)
  state = _restore(config, str(tmp_path / "work"))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_empty_train_split_is_refused(tmp_path):
  data_dir = tiny_data.write_tiny_dataset(str(tmp_path / "tfds"), num_train=2, num_val=1)
  with pytest.raises(train.TrainingError, match="fewer than one global batch"):
    train.make_setup(tiny_config(data_dir))


def test_labeled_pixel_cap_auto_and_explicit():
  """Auto: 4x the mean weakly labeled points of a cropped scan, in multiples of 256, <= H x W'."""
  config = tiny_config("unused")
  config.train_crop_width = 512
  stats = lambda weak: {"height": 64, "width": 2048, "splits": {config.train_split: {
      "num_scans": 10, "num_weak_points": weak}}}
  config.max_labeled_pixels = 0
  assert settings.labeled_pixel_cap(config, stats(1_000)) == 256  # 25 per crop -> 100 -> 256.
  assert settings.labeled_pixel_cap(config, stats(40_000)) == 4096  # 1000 per crop -> 4000.
  assert settings.labeled_pixel_cap(config, stats(64 * 2048 * 10)) == 64 * 512  # Full labels.
  config.train_crop_width = 0
  assert settings.labeled_pixel_cap(config, stats(40_000)) == 16_128  # 4000 per scan -> 16000.
  config.max_labeled_pixels = 300
  assert settings.labeled_pixel_cap(config, stats(64 * 2048 * 10)) == 300
