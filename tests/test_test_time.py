"""Test-time augmentation, MC dropout and the per-point probability files of predict, with a
small calibrated SalsaNext (tests/model_workdir.py) on 16x64 range images."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax import augment
from coarse3d_jax import inference
from coarse3d_jax import point_outputs
from coarse3d_jax import predict
from coarse3d_jax import submission
from coarse3d_jax import test_time
from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from tests import model_workdir
from tests import test_predict
from tests import tiny_data

H, W = tiny_data.HEIGHT, tiny_data.WIDTH


@pytest.fixture(scope="module")
def images():
  info = datasets.get_info("synthetic")
  rng = np.random.default_rng(0)
  return np.stack([tiny_data.make_example(f"{i}", *tiny_data.make_scan(rng, info, 0.1),
                                          info)["range_image"] for i in range(3)])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, images):
  """SemanticKITTI classes, 16x64 images, Dropout2d 0.3 (for MC dropout)."""
  return model_workdir.write_workdir(tmp_path_factory.mktemp("workdir"), images, dropout=0.3)


@pytest.fixture(scope="module")
def predictor(workdir):
  return inference.load_predictor(str(workdir))


def mirrored(images):
  return np.stack([np.asarray(augment.mirror_y(jnp.asarray(im), ())[0]) for im in images])


def rolled(images, shift):
  return np.stack([np.asarray(augment.yaw_roll(jnp.asarray(im), (), shift)[0]) for im in images])


def test_transform_set_is_the_mirror_roll_group():
  group = test_time.transform_set(True, 4, 64)
  assert group == ((False, 0), (False, 16), (False, 32), (False, 48),
                   (True, 0), (True, 16), (True, 32), (True, 48))
  assert test_time.transform_set(False, 1, 64) == test_time.IDENTITY
  with pytest.raises(ValueError, match="3 yaw rolls must evenly divide the image width 64"):
    test_time.transform_set(True, 3, 64)


def test_inverse_transform_puts_values_back_on_their_pixels():
  """g^-1 of a per-pixel image computed on g(x) is the image of x, for every g of the group."""
  image = jnp.asarray(np.random.default_rng(1).uniform(1, 5, (4, 8, 5)), jnp.float32)
  for mirror, shift in test_time.transform_set(True, 4, 8):
    moved = test_time.apply_transform(image, jnp.asarray(mirror), jnp.asarray(shift))
    # The range channel is moved, never changed: g^-1 of it must give back x's range.
    back = test_time.invert_transform(moved[..., :1], jnp.asarray(mirror), jnp.asarray(shift))
    np.testing.assert_array_equal(back, image[..., :1])
    want_col = (np.arange(8) + shift) % 8
    want_col = 7 - want_col if mirror else want_col
    np.testing.assert_array_equal(moved[:, want_col, 0], image[..., 0])


def test_identity_set_equals_plain_prediction(predictor, images):
  plain = predictor.predict(images)
  out = predictor.distribution(images, test_time.Passes())
  renormalized = plain[..., 1:] / plain[..., 1:].sum(-1, keepdims=True)
  np.testing.assert_allclose(out["probs"], renormalized, rtol=0, atol=2e-6)
  np.testing.assert_array_equal(np.argmax(out["probs"], -1) + 1, predict.pixel_argmax(plain))
  q = out["probs"].astype(np.float64)
  np.testing.assert_allclose(out["entropy"], -(q * np.log(q)).sum(-1), rtol=1e-5, atol=1e-6)
  assert set(out) == {"probs", "entropy"}


def test_tta_of_a_transformed_scan_is_the_transformed_tta(predictor, images):
  group = test_time.Passes(test_time.transform_set(True, 4, W))
  tta = predictor.distribution(images, group)["probs"]
  np.testing.assert_allclose(predictor.distribution(mirrored(images), group)["probs"],
                             tta[:, :, ::-1], rtol=0, atol=2e-6)
  np.testing.assert_allclose(predictor.distribution(rolled(images, 16), group)["probs"],
                             np.roll(tta, 16, axis=2), rtol=0, atol=2e-6)
  # What makes it hold: the model alone is not mirror-symmetric, nor is a set that is not closed.
  plain = test_time.Passes()
  gap = np.abs(predictor.distribution(mirrored(images), plain)["probs"] -
               predictor.distribution(images, plain)["probs"][:, :, ::-1]).max()
  assert gap > 0.05
  half = test_time.Passes(((False, 0), (False, 16)))
  gap = np.abs(predictor.distribution(rolled(images, 16), half)["probs"] -
               np.roll(predictor.distribution(images, half)["probs"], 16, axis=2)).max()
  assert gap > 0.05
  # And the TTA average really is the mean of the mapped-back passes.
  passes = [np.roll(predictor.distribution(rolled(images, s), plain)["probs"], -s, axis=2)
            for s in (0, 16, 32, 48)]
  np.testing.assert_allclose(predictor.distribution(
      images, test_time.Passes(test_time.transform_set(False, 4, W)))["probs"],
                             np.mean(passes, axis=0), rtol=0, atol=2e-6)


def test_mc_dropout_statistics_match_numpy(predictor, images):
  passes = test_time.Passes(((False, 0), (True, 0)), mc_samples=4, seed=3)
  out = predictor.distribution(images, passes, batch_index=5)
  keys = jax.random.split(test_time.batch_key(3, 5), 4)
  samples = np.stack([np.asarray(test_time.averaged_distribution(
      predictor.model, predictor.variables, jnp.asarray(images), predictor.mean, predictor.std,
      passes.transforms, key)) for key in keys]).astype(np.float64)
  entropy = lambda q: -(q * np.log(q)).sum(-1)
  mean = samples.mean(0)
  np.testing.assert_allclose(out["probs"], mean, rtol=0, atol=2e-6)
  np.testing.assert_allclose(out["entropy"], entropy(mean), rtol=0, atol=2e-5)
  mutual = entropy(mean) - entropy(samples).mean(0)
  np.testing.assert_allclose(out["mutual_information"], mutual, rtol=0, atol=2e-5)
  assert np.abs(samples[0] - samples[1]).max() > 0.05 and mutual.max() > 0.02
  again = predictor.distribution(images, passes, batch_index=5)
  np.testing.assert_array_equal(again["probs"], out["probs"])  # Seeded: reproducible.
  other = predictor.distribution(images, passes, batch_index=6)
  assert np.abs(other["probs"] - out["probs"]).max() > 1e-3


def test_mc_dropout_keeps_batchnorm_in_inference_mode(predictor, images):
  """Without dropout layers, MC samples are the plain prediction: BatchNorm uses its running
  statistics (batch statistics of these images would change every output)."""
  model = predictor.model.clone(dropout_rate=0.0)
  program = test_time.distribution_program(model, predictor.mean, predictor.std,
                                           test_time.Passes(mc_samples=3))
  out = program(predictor.variables, jnp.asarray(images), jax.random.PRNGKey(0))
  plain = predictor.distribution(images, test_time.Passes())
  np.testing.assert_allclose(out["probs"], plain["probs"], rtol=0, atol=2e-6)
  assert float(jnp.max(out["mutual_information"])) < 1e-5


def test_float16_probabilities_keep_the_label_on_ties():
  probs = np.array([[0.4999999, 0.5000001], [0.7, 0.3], [np.nan, np.nan]], np.float32)
  got = point_outputs.float16_probs(probs, np.array([2, 1, 5]))
  assert got.dtype == np.float16
  assert got[0, 0] == np.float16(0.5) and got[0, 1] == np.float16(0.5 + 2.0**-11)
  np.testing.assert_array_equal(got[1], probs[1].astype(np.float16))
  assert np.isnan(got[2]).all()
  np.testing.assert_array_equal(np.argmax(got[:2], 1), [1, 0])
  plain = point_outputs.float16_probs(probs, None)
  assert plain[0, 0] == plain[0, 1]  # Without labels nothing is nudged.


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
  """Three tiny_data scans (the images the model was calibrated on) as a raw KITTI tree, each
  with a non-finite point that has no pixel."""
  info = datasets.get_info("semantickitti")
  rng = np.random.default_rng(0)
  scans = []
  for _ in range(3):
    points, labels, _ = tiny_data.make_scan(rng, datasets.get_info("synthetic"), 0.1)
    points = np.concatenate([points, [[np.nan, 1, 1, 0.5]]]).astype(np.float32)
    raw = test_predict._raw_ids(info, np.append(labels, 1), rng)  # pylint: disable=protected-access
    scans.append((points, raw))
  root = tmp_path_factory.mktemp("raw")
  test_predict.write_tree(root, {"08": scans})
  return root


def test_saved_probabilities_sum_to_one_and_argmax_is_the_label(workdir, predictor, raw_tree,
                                                                tmp_path):
  out = tmp_path / "out"
  argv = ["--workdir", str(workdir), "--raw_dir", str(raw_tree), "--out_dir", str(out),
          "--batch_size", "2", "--tta", "--tta_rolls", "2", "--mc_dropout", "2",
          "--save_probs", "--save_uncertainty"]
  assert predict.main(argv) == 0
  info = predictor.info
  passes = test_time.Passes(test_time.transform_set(True, 2, W), mc_samples=2)
  refs = readers.list_scans("semantickitti", raw_tree, "val")
  scans = [predict.prepare_scan("semantickitti", ref, predictor.geometry) for ref in refs]
  batches = [predictor.distribution(np.stack([s.image for s in scans[i:i + 2]] +
                                             [np.full((H, W, 5), -1, np.float32)] * (i == 2)),
                                    passes, i // 2) for i in (0, 2)]
  for k, (ref, scan) in enumerate(zip(refs, scans)):
    label_path = submission.kitti_prediction_path(out, ref.sequence, ref.frame)
    labels = info.learning_map[np.fromfile(label_path, "<u4") & 0xFFFF]
    probs = np.load(point_outputs.output_path(label_path, "probs"))
    entropy = np.load(point_outputs.output_path(label_path, "entropy"))
    mutual = np.load(point_outputs.output_path(label_path, "mutual_information"))
    assert probs.dtype == np.float16 and probs.shape == (len(scan.points), info.num_classes - 1)
    finite = scan.finite
    assert not finite.all() and np.isnan(probs[~finite]).all() and np.isnan(entropy[~finite])
    np.testing.assert_allclose(probs[finite].astype(np.float64).sum(1), 1, atol=5e-3)
    np.testing.assert_array_equal(np.argmax(probs[finite], 1) + 1, labels[finite])
    pixel = {key: value[k % 2] for key, value in batches[k // 2].items()}
    np.testing.assert_allclose(probs[finite], pixel["probs"][scan.row, scan.col], atol=1e-3)
    np.testing.assert_allclose(entropy[finite], pixel["entropy"][scan.row, scan.col], atol=1e-6)
    np.testing.assert_allclose(mutual[finite], pixel["mutual_information"][scan.row, scan.col],
                               atol=1e-6)
    assert len(np.unique(labels[finite])) >= 2 and entropy[finite].std() > 0.05
  description = json.loads((out / point_outputs.DESCRIPTION_FILE).read_text())
  assert [c["name"] for c in description["classes"]] == list(info.class_names[1:])
  assert description["mc_dropout_samples"] == 2 and len(description["tta"]) == 4
  assert description["labels_are_argmax"] and description["checkpoint_step"] == 7


def test_bad_tta_and_dropout_flags_are_one_line_errors(workdir, tmp_path, raw_tree, images,
                                                       capsys):
  no_dropout = model_workdir.write_workdir(tmp_path / "plain", images, dropout=0.0)
  base = ["--raw_dir", str(raw_tree), "--out_dir", str(tmp_path / "out")]
  cases = [([f"--workdir={workdir}", "--tta_rolls", "2"], "add --tta"),
           ([f"--workdir={workdir}", "--tta", "--tta_rolls", "3"],
            "3 yaw rolls must evenly divide the image width 64"),
           ([f"--workdir={no_dropout}", "--mc_dropout", "4"], "trained without dropout")]
  for argv, message in cases:
    assert predict.main(argv + base) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
  assert not (tmp_path / "out").exists()
