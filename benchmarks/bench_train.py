"""Train-step and evaluation throughput: plain SalsaNext step vs the full COARSE3D step.

Times the jitted data-parallel steps of coarse3d_jax on random range images with 0.1%-style
weak labels (no dataset needed), after compilation, as medians over repeated steps, all rows
(and the reference's) interleaved round-robin so that a shared machine's drift hits each alike:

  python benchmarks/bench_train.py --batch 2 --height 64 --width 512 --steps 10

Rows: plain (focal + Lovasz, no projection head), head (plain + the projection head, as in the
contrast warm-up), COARSE3D (head + pseudo-labels, anchors, Pix2Proto, bank update), and
evaluation (forward + point confusion matrix). The split of the COARSE3D addition is
head - plain (projection head) and COARSE3D - head (sampling, Pix2Proto, bank update). More
rows (`common.bench_config`): coarse3d_no_diagnostics, coarse3d_log_step (a logging step: the
gradient-diagnostics program, then the step) and coarse3d_pixel_memory (`contrast.memory=pixels`).

With torch and the reference code on PYTHONPATH (see benchmarks/torch_reference.py) the
public PyTorch reference's steps are timed in the same run on the same batch size (in a
separate process taking turns with ours, see torch_reference.serve): 'plain',
'coarse3d' (what its trainer runs after the warm-up) and 'coarse3d_proto' (plus the prototype
update its trainer never enables). `--devices N` splits the global batch over N simulated CPU
devices (set before jax starts), which shows the data-parallel overhead on one machine, not a
speed-up.
"""
import argparse
import json
import os
import statistics
import subprocess
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
  parser.add_argument("--rows", default="plain,head,coarse3d,eval")
  parser.add_argument("--no-reference", action="store_true")
  return parser.parse_args()


def reference_round(args):
  """A `rounds.timed_round`-like callable timing the PyTorch reference's steps in a separate
  process (torch_reference.serve), or None when it is unavailable there."""
  if args.no_reference or args.model != "salsanext":
    print("(PyTorch reference skipped: not requested / not SalsaNext)")
    return None
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
  proc = subprocess.Popen(
      [sys.executable, script, "--serve", str(args.batch), str(args.height), str(args.width),
       str(args.label_fraction)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  hello = _next_json(proc)
  if "ready" not in hello:
    print(f"(PyTorch reference skipped: {hello.get('unavailable')})")
    proc.stdin.close()
    return None

  def run() -> dict[str, float]:
    proc.stdin.write("round\n")
    proc.stdin.flush()
    out = _next_json(proc)
    if "unavailable" in out:
      raise RuntimeError(f"PyTorch reference: {out['unavailable']}")
    return {f"PyTorch reference {k}": v for k, v in out.items()}
  return run


def _next_json(proc) -> dict:
  """The next JSON line of the reference process (the reference prints notes of its own)."""
  for line in proc.stdout:
    if line.startswith("{"):
      return json.loads(line)
    print(f"(reference says: {line.strip()})")
  return {"unavailable": f"the reference process ended (exit {proc.wait()})"}


def print_split(times: dict[str, float]) -> None:
  if not {"plain", "head", "coarse3d"} <= set(times):
    return
  plain = times["plain"]
  print(f"\nCOARSE3D addition over the plain step: "
        f"{100 * (times['coarse3d'] / plain - 1):.1f}% = projection head "
        f"{100 * (times['head'] / plain - 1):.1f}% + sampling, Pix2Proto and bank update "
        f"{100 * (times['coarse3d'] - times['head']) / plain:.1f}%")
  if "PyTorch reference plain" in times:
    ours = times["coarse3d"]
    print(f"full COARSE3D step vs the reference's: "
          f"{times['PyTorch reference coarse3d'] / ours:.2f}x faster than its trainer as "
          f"published, {times['PyTorch reference coarse3d_proto'] / ours:.2f}x than with its "
          f"prototype update; plain steps: reference / ours = "
          f"{times['PyTorch reference plain'] / plain:.2f}")


def main():
  args = parse_args()
  if args.devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks import rounds  # pylint: disable=g-import-not-at-top
  steps = {}
  for row in args.rows.split(","):
    fn, state, batch, _ = common.build(row, args)
    steps[row] = common.stepper(fn, state, batch)
  reference = reference_round(args)
  times = rounds.time_interleaved(
      [rounds.timed_round(steps)] + ([reference] if reference else []), args.steps)
  rows = [(name, statistics.median(t), args.batch / statistics.median(t))
          for name, t in times.items()]
  print(f"# {common.hardware.describe(jax)} | jax {jax.__version__} | "
        f"{jax.device_count()} device(s) | {args.model} width {args.model_width} {args.dtype} | "
        f"batch {args.batch} x {args.height}x{args.width}")
  print("| step | median s/step | scans/s |\n|---|---|---|")
  for name, med, rate in rows:
    print(f"| {name} | {med:.3f} | {rate:.2f} |")
  print_split({name: med for name, med, _ in rows})


if __name__ == "__main__":
  main()
