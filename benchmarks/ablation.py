"""The paired ablation of COARSE3D on the synthetic streets (docs/ablation.md).

    D=ablation_data  # Data: one raw tree, one conversion per label budget and protocol.
    python -m data_prep --dataset synthetic --raw_dir $D/raw --out_dir $D/0.1 --label_ratio 0.001
    python -m data_prep --dataset synthetic --raw_dir $D/raw --out_dir $D/0.01 --label_ratio 0.0001
    python -m data_prep --dataset synthetic --raw_dir $D/raw --out_dir $D/point \\
        --label_ratio 0.001 --protocol point
    python -m data_prep --dataset synthetic --raw_dir $D/raw --out_dir $D/full --label_ratio 1
    python benchmarks/ablation.py --data-dir $D/0.1 --data-dir-0.01 $D/0.01 \\
        --point-data-dir $D/point --full-data-dir $D/full --workdir W [--steps 1200] \\
        [--parallel 2] [--dry-run]
    python benchmarks/ablation.py --table-only [--steps 1200]

Each run is `python -m coarse3d_jax.main --config configs/demo.py` with its variant's
`--config.x=y` overrides, `--config.seed=<seed>` and `--config.num_train_steps=<steps>`, in
its own workdir W/<budget>pct/<variant>_seed<seed>_<steps>steps (an interrupted run resumes
there). A finished run leaves a small record, benchmarks/results/<budget>pct_<variant>_seed<seed>
_<steps>steps.json (mIoU, per-class IoU, the final "contrast" diagnostics, the wall time of
the command that finished it, its flags, git commit and machine), and is skipped from then on;
a record made with other flags is refused.
The tables are rebuilt from the records alone (--table-only), so they fill over several
sittings. Runs go seed-major, so an interrupted sweep has its rows equally far along.

Without --variants / --seeds the plan of issue 18 runs: at 0.1% labels five seeds of weak,
coarse3d and frozen_bank, three of every other variant, one of full; at 0.01% three seeds of
weak and coarse3d. Runs of one seed share their initialization and batch order, so each
variant is compared seed by seed with its baseline (coarse3d with weak, every other variant with
coarse3d): the paired differences, their mean and standard error, and n.

Tuning street vs validation street: the reported figures are evaluated on the synthetic val
split, street 04 (training on streets 00-03). Any setting (run length, momentum, warm-up) is
chosen on a tuning street, 05, that no reported figure is evaluated on:

    python -m data_prep --dataset synthetic --raw_dir $D/raw_tune --out_dir $D/tune \\
        --label_ratio 0.001 --split train=00,01,02,03 --split val=05
    python benchmarks/ablation.py --tuning --data-dir $D/tune --workdir WT --budgets 0.1 \\
        --variants weak,coarse3d --seeds 0,1 --override=--config.contrast.momentum_epochs=2
    python benchmarks/ablation.py --tuning --table-only

(a fresh --raw_dir: the generator only runs where no street exists yet; streets 00-03 come out
identical, as a street depends only on its seed and number). --tuning records go to
benchmarks/results/tuning/, never into the reported table, and the data directory's val split
must not be street 04; without --tuning it must be street 04.
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import math
import os
import pathlib
import queue
import re
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=wrong-import-position
from benchmarks import hardware
from coarse3d_jax import files
from coarse3d_jax.data import datasets

RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
BUDGETS = {"0.1": 0.001, "0.01": 0.0001}  # Percent of points labeled -> data_prep --label_ratio.
# Where each run's data comes from: its budget's conversion, or a variant's own.
DATA_OPTIONS = {"0.1": "--data-dir", "0.01": "--data-dir-0.01", "point": "--point-data-dir",
                "full": "--full-data-dir"}
# results.json "contrast" entries (contrast/<name>) and their column headers.
DIAGNOSTICS = {"pseudo_label_precision": "pseudo-label precision",
               "anchor_precision": "anchor precision",
               "bank_update_fraction": "bank update fraction", "bank_drift": "bank drift",
               "loss": "contrast loss", "grad_ratio": "grad ratio"}
DEFAULT_SEEDS = 3  # For a (budget, variant) outside the plan.


class AblationError(Exception):
  """Bad input: a missing data directory, a foreign record; nothing was run."""


@dataclasses.dataclass(frozen=True)
class Variant:
  labels: str  # The table's label column; '' = the budget's.
  what: str
  overrides: tuple[str, ...]
  baseline: str | None  # The variant its paired difference is taken against.
  data: str = "budget"  # 'budget', 'point' or 'full': which DATA_OPTIONS entry it reads.


VARIANTS = {
    "weak": Variant("", "focal + Lovasz, no contrast", ("--config.contrast.enabled=false",),
                    None),
    "coarse3d": Variant("", "COARSE3D (the demo config)", (), "weak"),
    "frozen_bank": Variant("", "bank never updated (as the published trainer runs)",
                           ("--config.contrast.update_bank=false",), "coarse3d"),
    "uniform_anchors": Variant("", "uniform anchors, no entropy weighting",
                               ("--config.contrast.anchor_sampling=uniform",), "coarse3d"),
    # The seed's 5,000 per class at its label rate: a step here sees 1/16 of its labeled pixels
    # (4 crops of 512 columns against 16 scans of 2,048, both ~200 labeled points per scan at
    # 0.1%), so 5,000 / 16 holds as many steps of them; 5,000 would stay mostly random here.
    "pixel_memory": Variant("", "memory of 312 pixels per class (the seed's 5,000, scaled), "
                            "no prototypes", ("--config.contrast.memory=pixels",
                                              "--config.contrast.pixel_memory_size=312"),
                            "coarse3d"),
    "point_labels": Variant("0.1% points", "single-point labels, no voxel propagation", (),
                            "coarse3d", data="point"),
    "cross_entropy": Variant("", "cross-entropy instead of focal",
                             ("--config.loss.supervised=cross_entropy",), "coarse3d"),
    "no_lovasz": Variant("", "no Lovasz term", ("--config.loss.lovasz_weight=0",), "coarse3d"),
    "oracle_ignore": Variant("", "the reference's full-label ignore mask",
                             ("--config.oracle_ignore_mask=true",), "coarse3d"),
    "full": Variant("100%", "every labeled pixel of a crop (upper bound)",
                    ("--config.max_labeled_pixels=32768",), "coarse3d", data="full"),
}
# Issue 18's plan: seeds per variant and budget.
PLAN = {"0.1": {"weak": 5, "coarse3d": 5, "frozen_bank": 5, "uniform_anchors": 3,
                "pixel_memory": 3, "point_labels": 3, "cross_entropy": 3, "no_lovasz": 3,
                "oracle_ignore": 3, "full": 1},
        "0.01": {"weak": 3, "coarse3d": 3}}


@dataclasses.dataclass(frozen=True)
class Run:
  budget: str
  variant: str
  seed: int


def planned_runs(budgets: list[str], variants: list[str] | None,
                 seeds: list[int] | None) -> list[Run]:
  """The runs asked for (the plan where variants or seeds are None), seed-major."""
  runs = []
  for budget in budgets:
    for variant in variants or list(PLAN[budget]):
      if VARIANTS[variant].data != "budget" and budget != "0.1":
        raise AblationError(f"variant {variant} runs only at the 0.1% budget (--budgets 0.1)")
      count = PLAN[budget].get(variant, DEFAULT_SEEDS)
      runs += [Run(budget, variant, s) for s in (range(count) if seeds is None else seeds)]
  order = list(VARIANTS)
  return sorted(runs, key=lambda r: (r.seed, list(BUDGETS).index(r.budget),
                                     order.index(r.variant)))


def run_flags(run: Run, steps: int, extra: list[str]) -> list[str]:
  """The config flags of one run: what its record stores and its skip check compares."""
  # One evaluation, at the end: intermediate ones would only cost time. The contrast phase
  # starts after a quarter of the run, the demo config's rule for training from scratch,
  # whatever the run length (the config's 3 epochs are a quarter of its own 12).
  return [f"--config.seed={run.seed}", f"--config.num_train_steps={steps}",
          f"--config.eval_every_steps={steps}", f"--config.contrast.warmup_steps={steps // 4}",
          *VARIANTS[run.variant].overrides, *extra]


def train_command(data_dir: str, workdir: str, flags: list[str]) -> list[str]:
  return [sys.executable, "-m", "coarse3d_jax.main", "--config", "configs/demo.py",
          "--workdir", workdir, f"--config.data_dir={data_dir}", *flags]


def run_name(run: Run, steps: int) -> str:
  return f"{run.budget}pct_{run.variant}_seed{run.seed}_{steps}steps"


def data_option(run: Run) -> str:
  data = VARIANTS[run.variant].data
  return DATA_OPTIONS[run.budget if data == "budget" else data]


def load_record(path: str, flags: list[str]) -> dict | None:
  """The record of a finished run, None when there is none; refuses one with other flags."""
  if not os.path.exists(path):
    return None
  record = read_json(path)
  if record.get("flags") != flags:
    raise AblationError(f"{path}: recorded with flags {record.get('flags')}, not {flags}; "
                        "use another --results-dir or delete the record")
  return record


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise AblationError(f"{path}: cannot read ({e})") from None


def data_facts(data_dir: str) -> dict:
  """What a run's record says about its data: label ratio, protocol, the val split's street."""
  stats = read_json(os.path.join(data_dir, "stats.json"))
  fingerprint = os.path.join(data_dir, ".data_prep", "config.json")
  val = read_json(fingerprint).get("splits", {}).get("val", {}) if os.path.exists(
      fingerprint) else {}
  return {"label_ratio": stats.get("label_ratio"), "protocol": stats.get("protocol"),
          "val_scans": val.get("num_scans"), "val_scans_sha256": val.get("scan_ids_sha256"),
          "val_street": street_of(val)}


def street_of(split: dict) -> str | None:
  """The synthetic street whose frames 0..n-1 are exactly the split (data_prep's fingerprint
  of its scan ids), else None."""
  num = split.get("num_scans", 0)
  for street in (f"{n:02d}" for n in range(100)):
    ids = "\n".join(f"{street}/{frame:06d}" for frame in range(num))  # readers.ScanRef.scan_id
    if hashlib.sha256(ids.encode()).hexdigest()[:16] == split.get("scan_ids_sha256"):
      return street
  return None


def check_data(facts: dict, run: Run, data_dir: str, tuning: bool) -> None:
  """Refuses a data directory that is not what the run's row says, or the wrong street."""
  data = VARIANTS[run.variant].data
  ratio = 1.0 if data == "full" else BUDGETS[run.budget]
  protocol = "point" if data == "point" else "voxel"
  if (facts["label_ratio"], facts["protocol"]) != (ratio, protocol):
    raise AblationError(f"{data_dir}: label ratio {facts['label_ratio']} ({facts['protocol']} "
                        f"protocol), {run.variant} at {run.budget}% needs {ratio} ({protocol})")
  reported = datasets.get_info("synthetic").splits["val"][0]
  street = facts["val_street"]
  if tuning and street == reported:
    raise AblationError(f"{data_dir}: its val split is street {street}, where the reported "
                        "figures are evaluated; --tuning needs another street")
  if not tuning and street not in (None, reported):
    raise AblationError(f"{data_dir}: its val split is street {street}; reported runs are "
                        f"evaluated on street {reported} (tuning runs take --tuning)")


def git_commit() -> str:
  """HEAD, with '-dirty' when tracked files differ from it."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
  commit = git("rev-parse", "HEAD").strip() or "unknown"
  return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def pinned_to(cpus: set[int] | None):
  """A subprocess preexec_fn that keeps the run on `cpus` (None: wherever the OS puts it)."""
  if cpus is None:
    return None
  return lambda: os.sched_setaffinity(0, cpus)


def run_once(run: Run, steps: int, flags: list[str], data_dir: str, workdir: str,
             record_path: str, facts: dict, cpus: set[int] | None = None) -> dict:
  """Trains and evaluates one run (on `cpus` only, when given), writes its record (atomically)
  and returns it."""
  start = time.time()
  subprocess.run(train_command(data_dir, workdir, flags), cwd=ROOT, check=True,
                 preexec_fn=pinned_to(cpus))
  results = read_json(os.path.join(workdir, "results.json"))
  record = {**dataclasses.asdict(run), "steps": steps, "step": results["step"],
            "miou": results["miou"], "per_class_iou": results["per_class_iou"],
            "accuracy": results.get("accuracy"), "contrast": results.get("contrast", {}),
            "seconds": round(time.time() - start, 1),
            "cpus": len(cpus) if cpus else len(os.sched_getaffinity(0)),
            "flags": flags, "data": facts,
            "commit": git_commit(), "machine": hardware.describe(),
            "date": datetime.date.today().isoformat()}
  files.atomic_write_json(record_path, record, indent=1)
  return record


def load_records(results_dir: str, steps: int) -> list[dict]:
  """Every record of `steps`-step runs in results_dir (not its subfolders)."""
  records = []
  for path in sorted(pathlib.Path(results_dir).glob("*.json")):
    record = read_json(str(path))
    if not {"budget", "variant", "seed", "steps", "miou"} <= set(record):
      raise AblationError(f"{path}: not an ablation record")
    if record["variant"] not in VARIANTS or record["budget"] not in BUDGETS:
      raise AblationError(f"{path}: unknown variant or budget "
                          f"{record['variant']!r} at {record['budget']!r}%")
    if record["steps"] == steps:
      records.append(record)
  return records


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1); the deviation is nan for a single value."""
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired(records: list[dict], budget: str, variant: str, baseline: str) -> dict:
  """variant minus baseline, mIoU points, seed by seed over the seeds both have: the
  differences, their mean, sample std, standard error (std / sqrt(n)) and n."""
  miou = {(r["variant"], r["seed"]): 100 * r["miou"] for r in records if r["budget"] == budget}
  seeds = sorted(s for v, s in miou if v == variant and (baseline, s) in miou)
  diffs = [miou[variant, s] - miou[baseline, s] for s in seeds]
  if not diffs:
    return {"baseline": baseline, "n": 0, "seeds": [], "diffs": []}
  mean, std = mean_std(diffs)
  return {"baseline": baseline, "n": len(diffs), "seeds": seeds, "diffs": diffs, "mean": mean,
          "std": std, "se": std / math.sqrt(len(diffs))}


def summarize(records: list[dict]) -> list[dict]:
  """One row per (budget, variant) present, in table order: n, seeds, mIoU % per seed, mean,
  sample std, and the paired difference to the variant's baseline."""
  rows = []
  for budget in BUDGETS:
    for variant, spec in VARIANTS.items():
      mine = sorted((r for r in records if (r["budget"], r["variant"]) == (budget, variant)),
                    key=lambda r: r["seed"])
      if not mine:
        continue
      values = [100 * r["miou"] for r in mine]
      mean, std = mean_std(values)
      rows.append({"budget": budget, "variant": variant, "n": len(mine),
                   "seeds": [r["seed"] for r in mine], "miou": values, "miou_mean": mean,
                   "miou_std": std, "paired": spec.baseline and paired(
                       records, budget, variant, spec.baseline)})
  return rows


def _pm(mean: float, spread: float, sign: str = "") -> str:
  """'mean +- spread', or the mean alone when the spread is undefined (a single value)."""
  return f"{mean:{sign}.1f}" + ("" if math.isnan(spread) else f" +- {spread:.1f}")


def _paired_cells(pair: dict | None) -> tuple[str, str, str]:
  if not pair:
    return "-", "-", "-"
  if not pair["n"]:
    return pair["baseline"], "no common seed", "-"
  each = ", ".join(f"{d:+.1f}" for d in pair["diffs"])
  return pair["baseline"], f"{_pm(pair['mean'], pair['se'], '+')} (n={pair['n']})", each


def markdown_table(rows: list[dict]) -> str:
  """The ablation table: mean +- sample std per row, the paired difference +- standard error."""
  lines = ["| labels | variant | what it changes | runs | val mIoU % (mean +- std) | each run "
           "(seed: mIoU) | vs | paired difference (mean +- SE) | each pair |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    spec = VARIANTS[row["variant"]]
    each = ", ".join(f"{s}: {v:.1f}" for s, v in zip(row["seeds"], row["miou"]))
    lines.append(f"| {spec.labels or row['budget'] + '%'} | {row['variant']} | {spec.what} | "
                 f"{row['n']} | {_pm(row['miou_mean'], row['miou_std'])} | {each} | "
                 + " | ".join(_paired_cells(row["paired"])) + " |")
  return "\n".join(lines)


def diagnostic(record: dict, name: str) -> float | None:
  # results.json's "contrast" dict may name its entries with or without the "contrast/" prefix.
  contrast = record.get("contrast") or {}
  return contrast.get(f"contrast/{name}", contrast.get(name))


def diagnostics_table(records: list[dict]) -> str:
  """Each run's final contrast diagnostics (results.json "contrast"), '-' where absent."""
  lines = ["| labels | variant | seed | val mIoU % | " + " | ".join(DIAGNOSTICS.values())
           + " | minutes |", "|---" * (len(DIAGNOSTICS) + 5) + "|"]
  order = list(VARIANTS)
  for r in sorted(records, key=lambda r: (list(BUDGETS).index(r["budget"]),
                                          order.index(r["variant"]), r["seed"])):
    values = [diagnostic(r, name) for name in DIAGNOSTICS]
    cells = ["-" if v is None else f"{v:.3g}" for v in values]
    minutes = f"{r['seconds'] / 60:.1f}" if r.get("seconds") is not None else "-"
    lines.append(f"| {r['budget']}% | {r['variant']} | {r['seed']} | {100 * r['miou']:.1f} | "
                 + " | ".join(cells) + f" | {minutes} |")
  return "\n".join(lines)


def check_one_street(records: list[dict]) -> None:
  """Refuses to tabulate runs evaluated on different val scans together."""
  streets = {(r.get("data") or {}).get("val_scans_sha256") for r in records} - {None}
  if len(streets) > 1:
    raise AblationError(f"records evaluated on {len(streets)} different val splits; "
                        "keep each street's records in its own --results-dir")


def tables(records: list[dict]) -> str:
  check_one_street(records)
  return markdown_table(summarize(records)) + "\n\n" + diagnostics_table(records)


def _dest(option: str) -> str:
  """The argparse attribute of a DATA_OPTIONS option: --data-dir-0.01 -> data_dir_0_01."""
  return option[2:].replace("-", "_").replace(".", "_")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  for option, what in (("--data-dir", "the 0.1%% conversion (or the tuning one)"),
                       ("--data-dir-0.01", "the 0.01%% conversion"),
                       ("--point-data-dir", "the 0.1%% --protocol point conversion"),
                       ("--full-data-dir", "a --label_ratio 1 conversion")):
    parser.add_argument(option, "--" + option[2:].replace("-", "_"), dest=_dest(option),
                        help=what)
  parser.add_argument("--workdir", help="where the runs' workdirs go")
  parser.add_argument("--results-dir", help="the records (default benchmarks/results, with "
                      "--tuning benchmarks/results/tuning)")
  parser.add_argument("--budgets", default=",".join(BUDGETS), help="percent labeled")
  parser.add_argument("--variants", help=f"default: the plan; of {', '.join(VARIANTS)}")
  parser.add_argument("--seeds", help="default: the plan's, e.g. 0,1,2")
  parser.add_argument("--steps", type=int, default=1200, help="training steps of each run")
  parser.add_argument("--override", action="append", default=[],
                      help="one more flag for every run, e.g. --override=--config.x=y")
  parser.add_argument("--parallel", type=int, default=1,
                      help="runs at a time, each pinned to its share of the CPUs")
  parser.add_argument("--tuning", action="store_true", help="runs on the tuning street")
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  parser.add_argument("--table-only", action="store_true", help="tables from the records")
  args = parser.parse_args(argv)
  for name, known in (("variants", VARIANTS), ("budgets", BUDGETS)):
    unknown = sorted(set((getattr(args, name) or "").split(",")) - set(known) - {""})
    if unknown:
      parser.error(f"unknown {name} {unknown}; choose from {sorted(known)}")
  if args.seeds is not None and not re.fullmatch(r"\d+(,\d+)*", args.seeds):
    parser.error(f"--seeds {args.seeds!r}: expected integers like 0,1,2")
  if not args.table_only and not args.workdir:
    parser.error("--workdir is needed to run (or print) the runs")
  if not args.results_dir:
    args.results_dir = os.path.join(RESULTS_DIR, "tuning") if args.tuning else RESULTS_DIR
  return args


def resolve(args, runs: list[Run]) -> list[dict]:
  """Per run: its flags, record path, workdir and data directory; raises before any runs."""
  jobs = []
  for run in runs:
    option = data_option(run)
    data_dir = getattr(args, _dest(option))
    if not data_dir:
      raise AblationError(f"{run.variant} at {run.budget}% needs {option}")
    name = run_name(run, args.steps)
    jobs.append({"run": run, "flags": run_flags(run, args.steps, args.override),
                 "data_dir": os.path.abspath(data_dir),
                 "workdir": os.path.abspath(os.path.join(
                     args.workdir, f"{run.budget}pct", name.split("_", 1)[1])),
                 "record": os.path.join(args.results_dir, name + ".json")})
  return jobs


def sweep(args, jobs: list[dict]) -> None:
  """Runs (or with --dry-run prints) every job without a record, after checking all data."""
  pending = []
  for job in jobs:
    if load_record(job["record"], job["flags"]) is None:
      pending.append(job)
    else:
      print(f"# recorded: {job['record']}", flush=True)
  if args.dry_run:
    print(f"cd {shlex.quote(ROOT)}")
    for job in pending:
      print(shlex.join(train_command(job["data_dir"], job["workdir"], job["flags"])))
    return
  facts = {d: data_facts(d) for d in {j["data_dir"] for j in pending}}
  for job in pending:
    check_data(facts[job["data_dir"]], job["run"], job["data_dir"], args.tuning)
  groups = cpu_groups(args.parallel)
  free = queue.Queue()
  for group in groups:
    free.put(group)

  def run_job(job):
    # Another sweep may have finished this run since this one started; running it again would
    # only re-evaluate its last checkpoint and replace the record's diagnostics and time.
    if load_record(job["record"], job["flags"]) is not None:
      print(f"# recorded meanwhile: {job['record']}", flush=True)
      return
    cpus = free.get()
    try:
      record = run_once(job["run"], args.steps, job["flags"], job["data_dir"], job["workdir"],
                        job["record"], facts[job["data_dir"]], cpus)
    finally:
      free.put(cpus)
    print(json.dumps({k: record[k] for k in ("budget", "variant", "seed", "miou", "seconds")}),
          flush=True)

  # In plan order, `parallel` at a time: a seed's paired runs train side by side.
  with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
    for future in [pool.submit(run_job, job) for job in pending]:
      future.result()


def cpu_groups(parallel: int) -> list[set[int] | None]:
  """The CPUs of each of `parallel` concurrent runs: this process's CPUs dealt out evenly
  (one run: no pinning). On 2 cores two pinned one-core runs of the demo did ~10% more work
  than one run on both (docs/ablation.md), and a seed's pair finishes together."""
  if parallel == 1:
    return [None]
  cpus = sorted(os.sched_getaffinity(0))
  if parallel > len(cpus):
    raise AblationError(f"--parallel {parallel}: this process may use {len(cpus)} CPUs")
  return [set(cpus[i::parallel]) for i in range(parallel)]


def main(argv=None) -> None:
  args = parse_args(argv)
  try:
    if not args.table_only:
      seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
      variants = args.variants.split(",") if args.variants else None
      runs = planned_runs(args.budgets.split(","), variants, seeds)
      sweep(args, resolve(args, runs))
      if args.dry_run:
        return
    print(tables(load_records(args.results_dir, args.steps)))
  except (AblationError, subprocess.CalledProcessError) as e:
    print(f"ablation.py: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
