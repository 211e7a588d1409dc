"""The README's ablation on the synthetic data over several seeds: mean and spread per variant.

    python -m data_prep --dataset synthetic --raw_dir D/raw --out_dir D/tfds --label_ratio 0.001
    python -m data_prep --dataset synthetic --raw_dir D/raw --out_dir D/full --label_ratio 1
    python benchmarks/ablation.py --data-dir D/tfds [--full-data-dir D/full] --workdir W \\
        [--seeds 0,1,2] [--variants weak,coarse3d,full] [--override=--config.num_epochs=30]

Each (variant, seed) is one `python -m coarse3d_jax.main --config configs/demo.py` run in its
own workdir W/<variant>_seed<n>, and its final results.json is read. A run this script finished
is read back from W/<variant>_seed<n>/ablation_run.json instead of run again, whatever the flags:
give each set of --override flags its own W. Variants: the demo config with `contrast.enabled=false` (weak), the
demo itself (coarse3d) and, with --full-data-dir, every labeled pixel of each crop in the losses
(full). A single 480-step run moves by several points of mIoU with the seed, so one run per
variant cannot rank them; this prints the mean, the sample standard deviation and every run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=wrong-import-position
from coarse3d_jax import files

VARIANTS = {
    "weak": ("0.1%", "focal + Lovasz (`contrast.enabled=false`)",
             ["--config.contrast.enabled=false"]),
    "coarse3d": ("0.1%", "COARSE3D (the demo)", []),
    "full": ("100% (full supervision)", "focal + Lovasz + COARSE3D",
             ["--config.max_labeled_pixels=32768"]),
}


def run_once(variant: str, seed: int, data_dir: str, workdir: str,
             overrides: tuple[str, ...] = ()) -> dict:
  """Trains and evaluates one run; its final results and wall time.

  A run this script finished before is read back from its record, not re-evaluated.
  """
  record = os.path.join(workdir, "ablation_run.json")
  if os.path.exists(record):
    with open(record) as f:
      return json.load(f)
  command = [sys.executable, "-m", "coarse3d_jax.main", "--config", "configs/demo.py",
             "--workdir", workdir, f"--config.data_dir={data_dir}", f"--config.seed={seed}",
             *VARIANTS[variant][2], *overrides]
  start = time.time()
  subprocess.run(command, cwd=ROOT, check=True)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  run = {"variant": variant, "seed": seed, "step": results["step"], "miou": results["miou"],
         "accuracy": results["accuracy"], "seconds": time.time() - start}
  files.atomic_write_json(record, run)
  return run


def summarize(runs: list[dict]) -> list[dict]:
  """Per variant, in first-seen order: n, mean and sample std of mIoU and accuracy (percent)."""
  rows = []
  for variant in dict.fromkeys(r["variant"] for r in runs):
    mine = [r for r in runs if r["variant"] == variant]
    row = {"variant": variant, "n": len(mine), "seeds": [r["seed"] for r in mine]}
    for key in ("miou", "accuracy"):
      values = [100 * r[key] for r in mine]
      row[key] = values
      row[f"{key}_mean"] = statistics.fmean(values)
      row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
    rows.append(row)
  return rows


def markdown_table(rows: list[dict]) -> str:
  lines = ["| labels | method | runs | val mIoU % (mean +- std) | each run | "
           "point accuracy % (mean +- std) |", "|---|---|---|---|---|---|"]
  for row in rows:
    labels, method, _ = VARIANTS[row["variant"]]
    each = ", ".join(f"{v:.1f}" for v in row["miou"])
    lines.append(f"| {labels} | {method} | {row['n']} | {row['miou_mean']:.1f} +- "
                 f"{row['miou_std']:.1f} | {each} | {row['accuracy_mean']:.1f} +- "
                 f"{row['accuracy_std']:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data-dir", required=True, help="the 0.1%% conversion")
  parser.add_argument("--full-data-dir", help="a --label_ratio 1 conversion (variant 'full')")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--variants", default="weak,coarse3d,full")
  parser.add_argument("--override", action="append", default=[],
                      help="one more flag for every run, e.g. --override=--config.num_epochs=30")
  args = parser.parse_args(argv)
  variants = args.variants.split(",")
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
  if "full" in variants and not args.full_data_dir:
    variants.remove("full")
    print("no --full-data-dir: leaving out the 'full' variant", flush=True)
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = []
  for seed in seeds:  # Seed-major, so that an interrupted sweep has every variant equally.
    for variant in variants:
      data = args.full_data_dir if variant == "full" else args.data_dir
      runs.append(run_once(variant, seed, os.path.abspath(data),
                           os.path.abspath(os.path.join(args.workdir, f"{variant}_seed{seed}")),
                           tuple(args.override)))
      print(json.dumps(runs[-1]), flush=True)
  print(markdown_table(summarize(runs)))


if __name__ == "__main__":
  main()
