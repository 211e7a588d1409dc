"""export_model: artifacts that run without this package give predict's labels and probabilities;
bad input is one line and leaves nothing behind."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax import export_model
from coarse3d_jax import files
from coarse3d_jax import inference
from coarse3d_jax import point_outputs
from coarse3d_jax import predict
from coarse3d_jax import submission
from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from tests import model_workdir
from tests import tiny_data

KNN_POINTS = 131_072


def test_first_argmax_is_argmax_with_ties():
  values = jnp.asarray([[0.2, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3], [0.0, 0.1, 0.2, 0.7]])
  np.testing.assert_array_equal(export_model.first_argmax(values), [1, 0, 3])
  noise = jax.random.uniform(jax.random.PRNGKey(0), (50, 7))
  np.testing.assert_array_equal(export_model.first_argmax(noise), jnp.argmax(noise, -1))


@pytest.fixture(scope="module")
def sample_scans(sample_dir):
  geometry = datasets.get_info("semantickitti").geometry
  refs = readers.list_scans("semantickitti", sample_dir, sequences=["00"])
  return [predict.prepare_scan("semantickitti", ref, geometry) for ref in refs]


def _labels_agree(ids: np.ndarray, want: np.ndarray, margin: np.ndarray) -> None:
  """Equal, except where predict's top two probabilities tie within float tolerance."""
  differ = ids != want
  assert not (differ & (margin > 2 * export_model.PROB_TOL)).any()
  assert differ.mean() < 1e-4


def test_exported_artifacts_give_predicts_labels_on_the_sample_scans(
    sample_dir, sample_scans, tmp_path, monkeypatch, capsys):
  images = np.stack([s.image for s in sample_scans])
  workdir = model_workdir.write_workdir(tmp_path / "w", images, calibration_columns=512)
  recorded = {}
  run_artifacts = export_model.run_artifacts

  def recording(export_dir, inputs):
    recorded.update(run_artifacts(export_dir, inputs))
    return recorded

  monkeypatch.setattr(export_model, "run_artifacts", recording)
  out = tmp_path / "export"
  assert export_model.main(["--workdir", str(workdir), "--out_dir", str(out), "--check",
                            "--raw_dir", str(sample_dir), "--sequences", "00", "--knn_points",
                            str(KNN_POINTS), "--tflite"]) == 0
  checked = [l for l in capsys.readouterr().out.splitlines() if l.startswith("checked")]
  assert [l.split(":")[0] for l in checked] == [
      "checked jax_export", "checked saved_model", "checked tflite"]
  assert sorted(p.name for p in out.iterdir()) == [
      "model.jax_export", "model.json", "model.tflite", "points.jax_export", "saved_model"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "w"]  # No temporary left.
  manifest = json.loads((out / "model.json").read_text())
  assert manifest["input"]["shape"] == [None, 64, 2048, 5] and manifest["checkpoint_step"] == 7
  exported = jax.export.deserialize(bytearray((out / "model.jax_export").read_bytes()))
  assert exported.platforms == ("cpu", "cuda")
  # predict's own files for the same scans, plain and with KNN.
  argv = ["--workdir", str(workdir), "--raw_dir", str(sample_dir), "--sequences", "00"]
  assert predict.main(argv + ["--out_dir", str(tmp_path / "plain"), "--save_probs"]) == 0
  assert predict.main(argv + ["--out_dir", str(tmp_path / "knn"), "--knn"]) == 0
  info = datasets.get_info("semantickitti")
  want = inference.load_predictor(str(workdir)).predict(images)
  for i, scan in enumerate(sample_scans):
    paths = {kind: submission.kitti_prediction_path(tmp_path / kind, "00", scan.ref.frame)
             for kind in ("plain", "knn")}
    labels = {kind: info.learning_map[np.fromfile(path, "<u4") & 0xFFFF][scan.finite]
              for kind, path in paths.items()}
    saved = np.load(point_outputs.output_path(paths["plain"], "probs"))[scan.finite]
    margin = export_model.top_two_margin(want[i])[scan.row, scan.col]
    for artifact in ("jax_export", "saved_model", "tflite"):
      probs = recorded[f"{artifact}/probabilities"][i]
      np.testing.assert_allclose(probs, want[i], rtol=0, atol=export_model.PROB_TOL)
      _labels_agree(recorded[f"{artifact}/class_id"][i][scan.row, scan.col], labels["plain"],
                    margin)
      at_points = probs[scan.row, scan.col, 1:]
      np.testing.assert_allclose(saved, at_points / at_points.sum(1, keepdims=True), atol=1e-3)
    for artifact in ("jax_export", "saved_model"):
      voted = recorded[f"{artifact}/point_class_id"][i]
      np.testing.assert_array_equal(voted[:len(scan.row)], labels["knn"])
      assert not voted[len(scan.row):].any()  # Padding.
    assert len(np.unique(labels["plain"])) > 3


def test_check_refuses_an_artifact_that_differs(sample_scans):
  """compare() accepts flips only at float ties and probabilities within PROB_TOL."""
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(20), (2, 64, 2048)).astype(np.float32)
  probs[0, 0, 0] = 0.1 / 19 * np.ones(20)
  probs[0, 0, 0, [3, 5]] = 0.45  # A tie between classes 3 and 5 at pixel (0, 0).
  ids = predict.pixel_argmax(probs)
  scans = [predict.PreparedScan(None, None, None, np.array([0, 1]), np.array([0, 1]), None,
                                None, None)] * 2
  same = {"a/probabilities": probs, "a/class_id": ids}
  assert "equal predict's at 4 of 4 points" in export_model.compare("a", same, probs, None, scans)
  tie = ids.copy()
  tie[0, 0, 0] = 5  # Class 5 instead of 3: equally likely.
  export_model.compare("a", dict(same, **{"a/class_id": tie}), probs, None, scans)
  flipped = ids.copy()
  flipped[1, 1, 1] = 1 + ids[1, 1, 1] % 19
  with pytest.raises(export_model.ExportModelError, match=r"1 differences beyond"):
    export_model.compare("a", dict(same, **{"a/class_id": flipped}), probs, None, scans)
  with pytest.raises(export_model.ExportModelError, match=r"probabilities within 1\.0e-03"):
    export_model.compare("a", dict(same, **{"a/probabilities": probs + 1e-3}), probs, None,
                         scans)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  info = datasets.get_info("synthetic")
  rng = np.random.default_rng(0)
  images = np.stack([tiny_data.make_example("x", *tiny_data.make_scan(rng, info, 0.1),
                                            info)["range_image"] for _ in range(2)])
  return model_workdir.write_workdir(tmp_path_factory.mktemp("tiny"), images)


def _one_line_error(capsys, *fragments):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and all(f in err[0] for f in fragments), err


def test_bad_inputs_are_one_line_errors_and_write_nothing(tiny_workdir, tmp_path, capsys):
  a_file = tmp_path / "taken"
  a_file.write_text("mine")
  base = ["--workdir", str(tiny_workdir), "--platforms", "cpu"]
  assert export_model.main(base + ["--out_dir", str(a_file)]) == 1
  _one_line_error(capsys, str(a_file), "not a directory")
  assert a_file.read_text() == "mine"
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("x")
  assert export_model.main(base + ["--out_dir", str(busy)]) == 1
  _one_line_error(capsys, str(busy), "non-empty directory")
  assert export_model.main(base + ["--out_dir", str(tmp_path / "e"), "--height", "0"]) == 1
  _one_line_error(capsys, "--height 0", "stride (16, 16)")
  assert export_model.main(base + ["--out_dir", str(tmp_path / "e"), "--check"]) == 2
  _one_line_error(capsys, "--raw_dir")
  assert export_model.main(base + ["--out_dir", str(tmp_path / "e"), "--platforms", "gpu"]) == 2
  _one_line_error(capsys, "gpu")
  for key, value, fragment in (("model", {"name": "rangenet21"}, "RangeNet21"),
                               ("dataset", "semanticposs", "14 classes")):
    other = tmp_path / f"other_{key}"
    shutil.copytree(tiny_workdir, other)
    config = json.loads((other / "config.json").read_text())
    config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (other / "config.json").write_text(json.dumps(config))
    assert export_model.main(["--workdir", str(other), "--out_dir", str(tmp_path / "e")]) == 1
    _one_line_error(capsys, str(other), "does not fit", fragment)
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    assert predict.main(["--workdir", str(other), "--raw_dir", str(raw), "--out_dir",
                         str(tmp_path / "e")]) == 1
    _one_line_error(capsys, "does not fit", fragment)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "busy", "other_dataset", "other_model", "raw", "taken"]


def test_export_replaces_an_earlier_export_whole(tiny_workdir, tmp_path, capsys):
  out = tmp_path / "export"
  argv = ["--workdir", str(tiny_workdir), "--out_dir", str(out), "--platforms", "cpu"]
  assert export_model.main(argv + ["--width", "48"]) == 0
  (out / "stray.txt").write_text("from before")
  assert export_model.main(argv) == 0
  assert "16x64, cpu" in capsys.readouterr().out
  assert sorted(p.name for p in out.iterdir()) == ["model.jax_export", "model.json",
                                                   "saved_model"]
  assert json.loads((out / "model.json").read_text())["input"]["shape"] == [None, 16, 64, 5]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_failed_check_or_export_writes_nothing(tiny_workdir, tmp_path, monkeypatch, capsys):
  def failing_check(export_dir, *args):
    assert (export_dir / "model.json").is_file()  # Checked before it is put in place.
    raise export_model.ExportModelError("--check: saved_model: class ids differ")

  monkeypatch.setattr(export_model, "check", failing_check)
  monkeypatch.setattr(export_model, "_check_scans", lambda *args: [])
  out = tmp_path / "export"
  assert export_model.main(["--workdir", str(tiny_workdir), "--out_dir", str(out),
                            "--platforms", "cpu", "--check"]) == 1
  _one_line_error(capsys, "class ids differ")
  assert list(tmp_path.iterdir()) == []


def test_atomic_directory_is_all_or_nothing(tmp_path):
  target = tmp_path / "d"
  with pytest.raises(RuntimeError):
    with files.atomic_directory(target) as tmp:
      (tmp / "a").write_text("1")
      raise RuntimeError("stop")
  assert list(tmp_path.iterdir()) == []
  for name in ("a", "b"):
    with files.atomic_directory(target) as tmp:
      (tmp / name).write_text(name)
  assert [p.name for p in target.iterdir()] == ["b"]
  assert list(tmp_path.iterdir()) == [target]
