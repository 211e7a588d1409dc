"""The ablation sweep's summary: what the README's multi-seed table is computed from."""
import json
import math

import pytest

from benchmarks import ablation


def _run(variant, seed, miou, accuracy):
  return {"variant": variant, "seed": seed, "miou": miou, "accuracy": accuracy}


def test_ablation_summary_is_mean_and_sample_std_per_variant_in_first_seen_order():
  runs = [_run("weak", 0, 0.20, 0.70), _run("coarse3d", 0, 0.30, 0.75),
          _run("weak", 1, 0.24, 0.72), _run("coarse3d", 1, 0.26, 0.73),
          _run("coarse3d", 2, 0.31, 0.77)]
  weak, coarse = ablation.summarize(runs)
  assert (weak["variant"], weak["n"], weak["seeds"]) == ("weak", 2, [0, 1])
  assert weak["miou_mean"] == pytest.approx(22.0)
  assert weak["miou_std"] == pytest.approx(math.sqrt(8.0))  # (2^2 + 2^2) / (2 - 1)
  assert coarse["seeds"] == [0, 1, 2]
  assert coarse["miou_mean"] == pytest.approx(29.0)
  assert coarse["miou_std"] == pytest.approx(math.sqrt(7.0))  # (1 + 9 + 4) / 2
  assert coarse["accuracy_mean"] == pytest.approx(75.0)
  table = ablation.markdown_table([weak, coarse])
  assert "| 0.1% | COARSE3D (the demo) | 3 | 29.0 +- 2.6 | 30.0, 26.0, 31.0 | 75.0 +- 2.0 |" \
      in table


def test_ablation_single_run_has_no_spread():
  (row,) = ablation.summarize([_run("full", 0, 0.35, 0.78)])
  assert row["miou_mean"] == pytest.approx(35.0) and math.isnan(row["miou_std"])


def test_ablation_refuses_unknown_variants_before_running_anything(capsys):
  with pytest.raises(SystemExit):
    ablation.main(["--data-dir", "x", "--workdir", "y", "--variants", "weak,bogus"])
  assert "unknown variants ['bogus']" in capsys.readouterr().err


def test_ablation_reads_back_a_finished_run_instead_of_training_again(tmp_path, monkeypatch):
  record = _run("weak", 3, 0.25, 0.74)
  (tmp_path / "ablation_run.json").write_text(json.dumps(record))
  monkeypatch.setattr(ablation.subprocess, "run", lambda *a, **k: pytest.fail("trained again"))
  assert ablation.run_once("weak", 3, "unused", str(tmp_path)) == record
