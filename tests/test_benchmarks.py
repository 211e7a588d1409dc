"""benchmarks/ablation.py: paired statistics, the record of finished runs, its tables, commands."""
import json
import math
import os
import re
import threading

import pytest

from benchmarks import ablation
from coarse3d_jax import files
from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from configs import default
from configs import demo

STEPS = 1200


def _record(variant, seed, miou, budget="0.1", steps=STEPS, **extra):
  return {"budget": budget, "variant": variant, "seed": seed, "steps": steps, "miou": miou,
          **extra}


def _write_records(results_dir, records):
  for r in records:
    name = ablation.run_name(ablation.Run(r["budget"], r["variant"], r["seed"]), r["steps"])
    files.atomic_write_json(os.path.join(results_dir, name + ".json"), r)


# weak 20, 24, 22; coarse3d 23, 25, 27 and an unpaired seed 3 (29); frozen_bank 22, 26.
RECORDS = [_record("weak", 0, 0.20), _record("weak", 1, 0.24), _record("weak", 2, 0.22),
           _record("coarse3d", 0, 0.23), _record("coarse3d", 1, 0.25),
           _record("coarse3d", 2, 0.27), _record("coarse3d", 3, 0.29),
           _record("frozen_bank", 0, 0.22), _record("frozen_bank", 1, 0.26),
           _record("weak", 0, 0.10, budget="0.01"), _record("coarse3d", 0, 0.12, budget="0.01")]


def test_mean_and_sample_std_per_row_and_paired_differences_against_the_baseline():
  rows = {(r["budget"], r["variant"]): r for r in ablation.summarize(RECORDS)}
  assert list(rows) == [("0.1", "weak"), ("0.1", "coarse3d"), ("0.1", "frozen_bank"),
                        ("0.01", "weak"), ("0.01", "coarse3d")]
  weak, coarse = rows["0.1", "weak"], rows["0.1", "coarse3d"]
  assert weak["miou_mean"] == pytest.approx(22.0)
  assert weak["miou_std"] == pytest.approx(2.0)  # (4 + 4 + 0) / (3 - 1) = 4.
  assert weak["paired"] is None
  assert coarse["miou_mean"] == pytest.approx(26.0)
  assert coarse["miou_std"] == pytest.approx(math.sqrt(20 / 3))  # (9 + 1 + 1 + 9) / 3.
  pair = coarse["paired"]  # Seed 3 has no weak run: three pairs, +3, +1, +5.
  assert (pair["baseline"], pair["n"], pair["seeds"]) == ("weak", 3, [0, 1, 2])
  assert pair["diffs"] == pytest.approx([3.0, 1.0, 5.0])
  assert pair["mean"] == pytest.approx(3.0)
  assert pair["std"] == pytest.approx(2.0)  # (0 + 4 + 4) / 2 = 4.
  assert pair["se"] == pytest.approx(2.0 / math.sqrt(3))
  frozen = rows["0.1", "frozen_bank"]["paired"]  # Against coarse3d: -1, +1.
  assert (frozen["baseline"], frozen["n"]) == ("coarse3d", 2)
  assert frozen["mean"] == pytest.approx(0.0) and frozen["se"] == pytest.approx(1.0)
  low = rows["0.01", "coarse3d"]["paired"]  # Budgets never pair with each other.
  assert low["n"] == 1 and low["mean"] == pytest.approx(2.0) and math.isnan(low["se"])


def test_markdown_table_rows():
  table = ablation.markdown_table(ablation.summarize(RECORDS))
  assert ("| 0.1% | coarse3d | COARSE3D (the demo config) | 4 | 26.0 +- 2.6 | "
          "0: 23.0, 1: 25.0, 2: 27.0, 3: 29.0 | weak | +3.0 +- 1.2 (n=3) | +3.0, +1.0, +5.0 |"
          ) in table
  assert "| 0.1% | weak | focal + Lovasz, no contrast | 3 | 22.0 +- 2.0 |" in table
  assert "| 0.01% | coarse3d | COARSE3D (the demo config) | 1 | 12.0 | 0: 12.0 | weak | " \
      "+2.0 (n=1) | +2.0 |" in table


def test_diagnostics_table_shows_each_runs_final_contrast_dict():
  records = [_record("coarse3d", 0, 0.3, seconds=600.0, contrast={
      "contrast/pseudo_label_precision": 0.8125, "contrast/anchor_precision": 0.75,
      "contrast/bank_update_fraction": 0.5, "contrast/bank_drift": 0.25, "contrast/loss": 4.5,
      "contrast/grad_ratio": 0.0123}), _record("weak", 0, 0.2)]
  lines = ablation.diagnostics_table(records).splitlines()
  assert lines[2] == "| 0.1% | weak | 0 | 20.0 | - | - | - | - | - | - | - |"
  assert lines[3] == ("| 0.1% | coarse3d | 0 | 30.0 | 0.812 | 0.75 | 0.5 | 0.25 | 4.5 | "
                      "0.0123 | 10.0 |")


def _data_dir(tmp_path, name, label_ratio=0.001, protocol="voxel", street="04"):
  """A data directory as data_prep leaves it, as far as the ablation reads it: stats.json and
  the fingerprint of its splits, made by data_prep's own function from scan references."""
  from data_prep import convert  # pylint: disable=g-import-not-at-top
  raw = tmp_path / f"raw_{street}" / "sequences" / street / "velodyne"
  raw.mkdir(parents=True, exist_ok=True)
  for frame in range(3):
    (raw / f"{frame:06d}.bin").write_bytes(b"")
  refs = readers.list_scans("synthetic", tmp_path / f"raw_{street}", sequences=[street])
  settings = convert.Settings(dataset="synthetic", label_ratio=label_ratio, protocol=protocol)
  out = tmp_path / name
  files.atomic_write_json(out / ".data_prep" / "config.json",
                          convert.fingerprint(settings, 64, {"val": refs}))
  files.atomic_write_json(out / "stats.json", {"label_ratio": label_ratio, "protocol": protocol})
  return str(out)


def test_data_facts_tell_the_val_street_from_data_preps_fingerprint(tmp_path):
  facts = ablation.data_facts(_data_dir(tmp_path, "tune", street="05"))
  assert (facts["val_street"], facts["val_scans"]) == ("05", 3)
  assert (facts["label_ratio"], facts["protocol"]) == (0.001, "voxel")


@pytest.mark.parametrize("street,tuning,ratio,protocol,message", [
    ("05", False, 0.001, "voxel", "its val split is street 05"),
    ("04", True, 0.001, "voxel", "--tuning needs another street"),
    ("04", False, 0.0001, "voxel", "coarse3d at 0.1% needs 0.001 (voxel)"),
    ("04", False, 0.001, "point", "coarse3d at 0.1% needs 0.001 (voxel)")])
def test_check_data_refuses_the_wrong_street_budget_or_protocol(
    tmp_path, street, tuning, ratio, protocol, message):
  data = _data_dir(tmp_path, "d", ratio, protocol, street)
  with pytest.raises(ablation.AblationError, match=re.escape(message)):
    ablation.check_data(ablation.data_facts(data), ablation.Run("0.1", "coarse3d", 0), data,
                        tuning)


@pytest.mark.parametrize("street,tuning", [("04", False), ("05", True)])
def test_check_data_accepts_the_val_street_and_a_tuning_street(tmp_path, street, tuning):
  data = _data_dir(tmp_path, "d", 0.0001, "voxel", street)
  ablation.check_data(ablation.data_facts(data), ablation.Run("0.01", "weak", 0), data, tuning)
  data = _data_dir(tmp_path, "p", 0.001, "point", street)
  ablation.check_data(ablation.data_facts(data), ablation.Run("0.1", "point_labels", 0), data,
                      tuning)


class FakeTrainer:
  """Stands in for `python -m coarse3d_jax.main`: writes the results.json a run would."""

  def __init__(self):
    self.commands = []

  def __call__(self, command, **kwargs):
    assert kwargs["cwd"] == ablation.ROOT and kwargs["check"]
    self.commands.append(command)
    if kwargs["preexec_fn"] is not None:
      kwargs["preexec_fn"]()  # os.sched_setaffinity is patched: this records the pinning.
    workdir = command[command.index("--workdir") + 1]
    seed = int(next(a for a in command if a.startswith("--config.seed=")).split("=")[1])
    files.atomic_write_json(os.path.join(workdir, "results.json"), {
        "step": STEPS, "miou": 0.25 + seed / 100, "accuracy": 0.7,
        "per_class_iou": {"car": 0.5, "road": 0.75}, "contrast": {"contrast/bank_drift": 0.9}})


@pytest.fixture
def trainer(monkeypatch):
  fake = FakeTrainer()
  monkeypatch.setattr(ablation.subprocess, "run", fake)
  monkeypatch.setattr(ablation, "git_commit", lambda: "abc123")
  return fake


def _args(tmp_path, data, *more):
  return ["--data-dir", data, "--budgets", "0.1", "--workdir", str(tmp_path / "W"),
          "--results-dir", str(tmp_path / "results"), *more]


def test_record_round_trip_and_a_recorded_run_is_not_run_again(tmp_path, trainer, capsys):
  data = _data_dir(tmp_path, "d")
  ablation.main(_args(tmp_path, data, "--variants", "weak,coarse3d", "--seeds", "0,1"))
  assert len(trainer.commands) == 4
  path = tmp_path / "results" / "0.1pct_weak_seed1_1200steps.json"
  record = json.loads(path.read_text())
  assert record["flags"] == ["--config.seed=1", "--config.num_train_steps=1200",
                             "--config.eval_every_steps=1200", "--config.contrast.warmup_steps=300",
                             "--config.contrast.enabled=false"]
  assert (record["miou"], record["per_class_iou"]) == (0.26, {"car": 0.5, "road": 0.75})
  assert record["contrast"] == {"contrast/bank_drift": 0.9}
  assert (record["commit"], record["data"]["val_street"]) == ("abc123", "04")
  assert record["seconds"] >= 0 and record["machine"]
  assert ablation.load_records(str(tmp_path / "results"), STEPS)[3] == record  # Sorted names.
  capsys.readouterr()
  ablation.main(_args(tmp_path, data, "--variants", "weak,coarse3d", "--seeds", "0,1,2"))
  assert len(trainer.commands) == 6  # Only seed 2 ran.
  out = capsys.readouterr().out
  assert out.count("# recorded:") == 4 and "| 0.1% | weak |" in out


def test_a_record_made_with_other_flags_is_refused(tmp_path, trainer, capsys):
  data = _data_dir(tmp_path, "d")
  ablation.main(_args(tmp_path, data, "--variants", "weak", "--seeds", "0"))
  with pytest.raises(SystemExit):
    ablation.main(_args(tmp_path, data, "--variants", "weak", "--seeds", "0",
                        "--override=--config.contrast.weight=0.2"))
  assert "recorded with flags" in capsys.readouterr().err and len(trainer.commands) == 1


def test_wrong_data_is_refused_before_any_run(tmp_path, trainer, capsys):
  good, tune = _data_dir(tmp_path, "d"), _data_dir(tmp_path, "t", protocol="point", street="05")
  with pytest.raises(SystemExit):
    ablation.main(_args(tmp_path, good, "--variants", "weak,point_labels", "--seeds", "0",
                        "--point-data-dir", tune))
  assert "street 05" in capsys.readouterr().err and not trainer.commands
  assert not (tmp_path / "results").exists()


def test_table_only_is_rebuilt_from_the_records_alone(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(ablation.subprocess, "run", lambda *a, **k: pytest.fail("ran something"))
  results = tmp_path / "results"
  _write_records(str(results), RECORDS + [_record("weak", 0, 0.9, steps=480)])
  _write_records(str(results / "tuning"), [_record("weak", 5, 0.9)])
  ablation.main(["--table-only", "--results-dir", str(results)])
  out = capsys.readouterr().out
  assert out.split("\n\n")[0] == ablation.markdown_table(ablation.summarize(RECORDS))
  assert "90.0" not in out  # Neither the 480-step run nor the tuning street's.
  assert out.count("| 0.1% | coarse3d | ") == 1 + 4  # One table row, four diagnostics rows.


def test_tables_refuse_records_of_different_val_streets(tmp_path):
  records = [_record("weak", 0, 0.2, data={"val_scans_sha256": "a"}),
             _record("coarse3d", 0, 0.2, data={"val_scans_sha256": "b"})]
  with pytest.raises(ablation.AblationError, match="2 different val splits"):
    ablation.tables(records)


def test_unknown_variants_and_budgets_are_refused_before_running_anything(capsys):
  with pytest.raises(SystemExit):
    ablation.main(["--data-dir", "x", "--workdir", "y", "--variants", "weak,bogus"])
  assert "unknown variants ['bogus']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    ablation.main(["--data-dir", "x", "--workdir", "y", "--budgets", "1"])
  assert "unknown budgets ['1']" in capsys.readouterr().err


def _dry_run(tmp_path, capsys, *more):
  ablation.main(["--data-dir", "d01", "--data-dir-0.01", "d001", "--point_data_dir", "pt",
                 "--full-data-dir", "full", "--workdir", str(tmp_path / "W"), "--results-dir",
                 str(tmp_path / "results"), "--dry-run", *more])
  return capsys.readouterr().out.splitlines()


def _line(lines, workdir_tail):
  (line,) = [l for l in lines if f"/{workdir_tail} " in l]
  return line


def test_dry_run_prints_the_plans_commands_with_their_overrides_and_data(
    tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(ablation.subprocess, "run", lambda *a, **k: pytest.fail("ran something"))
  lines = _dry_run(tmp_path, capsys)
  assert lines[0] == f"cd {ablation.ROOT}" and len(lines) == 1 + 34 + 6
  frozen = _line(lines, "0.1pct/frozen_bank_seed4_1200steps")
  assert f"--config.data_dir={tmp_path / 'd01'} " in frozen
  assert "--config.contrast.update_bank=false" in frozen
  assert "--config.seed=4 --config.num_train_steps=1200" in frozen
  assert f"--config.data_dir={tmp_path / 'pt'} " in _line(lines, "point_labels_seed2_1200steps")
  low = _line(lines, "0.01pct/coarse3d_seed2_1200steps")
  assert f"--config.data_dir={tmp_path / 'd001'} " in low
  assert f"--config.data_dir={tmp_path / 'full'} " in _line(lines, "full_seed0_1200steps")
  for variant, spec in ablation.VARIANTS.items():
    assert all(o in _line(lines, f"0.1pct/{variant}_seed0_1200steps") for o in spec.overrides)
  seeds = [int(l.split("--config.seed=")[1].split()[0]) for l in lines[1:]]
  assert seeds == sorted(seeds)  # Seed-major: an interrupted sweep has every row equally far.


def test_pixel_memory_holds_as_many_steps_of_labels_as_the_seeds():
  """The variant's memory is the seed's 5,000 per class scaled by labeled pixels per step: the
  demo's crops and batch against the reference recipe's full SemanticKITTI scans."""
  run, recipe = demo.get_config(), default.get_config()
  ratio = (run.batch_size * run.train_crop_width) / (
      recipe.batch_size * datasets.get_info(recipe.dataset).width)
  assert ratio == 1 / 16 and recipe.contrast.pixel_memory_size == 5000
  sizes = [o for o in ablation.VARIANTS["pixel_memory"].overrides if "pixel_memory_size" in o]
  assert sizes == [f"--config.contrast.pixel_memory_size="
                   f"{int(recipe.contrast.pixel_memory_size * ratio)}"]


def test_dry_run_steps_and_extra_overrides(tmp_path, capsys):
  lines = _dry_run(tmp_path, capsys, "--steps", "600", "--variants", "oracle_ignore",
                   "--budgets", "0.1", "--seeds", "7", "--override=--config.contrast.weight=0.2")
  assert len(lines) == 2 and lines[1].endswith(
      "--config.seed=7 --config.num_train_steps=600 --config.eval_every_steps=600 "
      "--config.contrast.warmup_steps=150 --config.oracle_ignore_mask=true --config.contrast.weight=0.2")


def test_a_variant_without_its_data_dir_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit):
    ablation.main(["--data-dir", "d", "--workdir", str(tmp_path), "--budgets", "0.1",
                   "--variants", "point_labels", "--dry-run"])
  assert "point_labels at 0.1% needs --point-data-dir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    ablation.main(["--data-dir", "d", "--workdir", str(tmp_path), "--variants", "full"])
  assert "full runs only at the 0.1% budget" in capsys.readouterr().err


def test_cpu_groups_deal_the_cpus_out_and_refuse_more_runs_than_cpus(monkeypatch):
  monkeypatch.setattr(ablation.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
  assert ablation.cpu_groups(1) == [None]
  assert ablation.cpu_groups(2) == [{0, 2}, {1, 3}]
  assert ablation.cpu_groups(4) == [{0}, {1}, {2}, {3}]
  with pytest.raises(ablation.AblationError, match="may use 4 CPUs"):
    ablation.cpu_groups(5)


def test_parallel_runs_are_pinned_apart_and_all_recorded(tmp_path, trainer, monkeypatch):
  pinned = []
  both_running = threading.Barrier(2, timeout=30)

  def pin(pid, cpus):
    pinned.append(cpus)
    if len(pinned) <= 2:  # The first two runs wait for each other: they must overlap.
      both_running.wait()

  monkeypatch.setattr(ablation.os, "sched_getaffinity", lambda pid: {0, 1})
  monkeypatch.setattr(ablation.os, "sched_setaffinity", pin)
  data = _data_dir(tmp_path, "d")
  ablation.main(_args(tmp_path, data, "--variants", "weak,coarse3d", "--seeds", "0,1",
                      "--parallel", "2"))
  assert len(pinned) == 4 and all(cpus in ({0}, {1}) for cpus in pinned)
  assert sorted(map(sorted, pinned[:2])) == [[0], [1]]  # Runs side by side never share a CPU.
  names = sorted(os.listdir(tmp_path / "results"))
  assert names == [f"0.1pct_{v}_seed{s}_1200steps.json" for v in ("coarse3d", "weak")
                   for s in (0, 1)]
  for name in names:
    record = json.loads((tmp_path / "results" / name).read_text())
    assert record["cpus"] == 1 and record["miou"] == 0.25 + record["seed"] / 100


def test_a_run_recorded_meanwhile_by_another_sweep_is_not_run_again(tmp_path, trainer):
  data = _data_dir(tmp_path, "d")
  other = tmp_path / "results" / "0.1pct_coarse3d_seed0_1200steps.json"
  original = trainer.__call__

  def first_run_and_another_sweep(command, **kwargs):
    original(command, **kwargs)
    if not other.exists():  # Meanwhile another sweep records the next run.
      files.atomic_write_json(str(other), {
          "budget": "0.1", "variant": "coarse3d", "seed": 0, "steps": STEPS, "miou": 0.5,
          "flags": ablation.run_flags(ablation.Run("0.1", "coarse3d", 0), STEPS, [])})

  ablation.subprocess.run = first_run_and_another_sweep  # The fixture's monkeypatch undoes it.
  ablation.main(_args(tmp_path, data, "--variants", "weak,coarse3d", "--seeds", "0"))
  assert len(trainer.commands) == 1 and "--config.contrast.enabled=false" in trainer.commands[0]
  assert json.loads(other.read_text())["miou"] == 0.5
