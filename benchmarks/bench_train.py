"""Train-step and evaluation throughput: plain SalsaNext step vs the full COARSE3D step.

Times the jitted data-parallel steps of coarse3d_jax on random range images with 0.1%-style
weak labels (no dataset needed), after compilation, as medians over repeated steps:

  python benchmarks/bench_train.py --batch 2 --height 64 --width 512 --steps 10

Rows: plain (focal + Lovasz, no projection head), COARSE3D (projection head, pseudo-labels,
anchors, Pix2Proto, bank update), and evaluation (forward + point confusion matrix).
`--devices N` splits the global batch over N simulated CPU devices (set before jax starts), which
shows the data-parallel overhead on one machine, not a speed-up.
"""
import argparse
import os
import statistics
import sys


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--model", default="salsanext")
  parser.add_argument("--model-width", type=float, default=1.0)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--label-fraction", type=float, default=0.002)
  parser.add_argument("--rows", default="plain,coarse3d,eval")
  return parser.parse_args()


def main():
  args = parse_args()
  if args.devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  rows = []
  for row in args.rows.split(","):
    fn, state, batch, scans = common.build(row, args)
    times = common.time_steps(fn, state, batch, args.steps)
    med = statistics.median(times)
    rows.append((row, med, scans / med))
  print(f"# {common.machine()} | jax {jax.__version__} | {jax.device_count()} device(s) | "
        f"{args.model} width {args.model_width} {args.dtype} | batch {args.batch} x "
        f"{args.height}x{args.width}")
  print("| step | median s/step | scans/s |\n|---|---|---|")
  for name, med, rate in rows:
    print(f"| {name} | {med:.3f} | {rate:.2f} |")
  plain = dict((r[0], r[1]) for r in rows)
  if "plain" in plain and "coarse3d" in plain:
    print(f"\nCOARSE3D overhead over the plain step: "
          f"{100 * (plain['coarse3d'] / plain['plain'] - 1):.1f}%")


if __name__ == "__main__":
  main()
