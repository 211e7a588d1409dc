"""Backbone speed: forward and forward+backward time per scan, and the achieved FLOP rate.

    python benchmarks/bench_models.py [--models salsanext,rangenet21,squeezesegv3_21]
        [--sizes 64x2048,64x512] [--repeats 5] [--dtype float32|bfloat16] [--batch 1]
        [--output table.md]

- forward: inference, `model.apply(variables, x)['logits']` in eval mode (the projection head
  is not needed for predictions and XLA drops it);
- forward+backward: `jax.grad` of mean(logits) + mean(embedding) (+ auxiliary heads) in train
  mode (batch statistics, dropout), as in a COARSE3D training step without the losses.
Times are medians over --repeats runs after compilation and one warm-up run, divided by the
batch size. FLOPs come from XLA's cost analysis of the compiled program.

A PyTorch column is added only when torch AND the reference implementation (the COARSE3D
repository's `pc_processor` package, on PYTHONPATH) are importable; it times the reference
modules themselves on the same machine and thread count.
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import hardware
from coarse3d_jax import models

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NUM_CLASSES = 20
TORCH_CLASSES = {"salsanext": "SalsaNextProto", "rangenet21": "RangeNetProto",
                 "squeezesegv3_21": "SqueezeSegV3Proto"}


def _time(fn, *args, repeats: int) -> float:
  """Median wall time (s) of fn(*args) over `repeats` runs after one warm-up run."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def bench_jax(name: str, height: int, width: int, args) -> dict[str, float]:
  """Seconds per scan and GFLOP per scan of forward and forward+backward."""
  model = models.create_model(name, num_classes=NUM_CLASSES, dtype=DTYPES[args.dtype])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, height, width, 5)),
                  jnp.float32)
  variables = jax.jit(lambda x: model.init({"params": jax.random.key(0, impl="rbg")}, x))(x)

  def loss(params, stats, x, rng):
    out, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                         rngs={"dropout": rng}, mutable=["batch_stats"])
    return (out["logits"].mean() + out["embedding"].mean()
            + sum(a.mean() for a in out["aux_logits"]))

  forward = jax.jit(lambda v, x: model.apply(v, x)["logits"]).lower(variables, x).compile()
  rng = jax.random.key(1, impl="rbg")
  grad_args = (variables["params"], variables["batch_stats"], x, rng)
  backward = jax.jit(jax.grad(loss)).lower(*grad_args).compile()
  return {
      "fwd_s": _time(forward, variables, x, repeats=args.repeats) / args.batch,
      "fwd_gflop": _flops(forward) / 1e9 / args.batch,
      "bwd_s": _time(backward, *grad_args, repeats=args.repeats) / args.batch,
      "bwd_gflop": _flops(backward) / 1e9 / args.batch,
  }


def bench_torch(name: str, height: int, width: int, args) -> dict[str, float] | None:
  """The reference PyTorch module's times per scan, or None when it cannot be imported."""
  try:
    import pc_processor.models as reference  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  net = getattr(reference, TORCH_CLASSES[name])(nclasses=NUM_CLASSES)
  x = torch.randn(args.batch, 5, height, width)

  def forward():
    net.eval()
    with torch.no_grad():
      return net(x)["pred_2d"]

  def forward_backward():
    net.train()
    net.zero_grad()
    out = net(x, return_feat=True)
    (out["pred_2d"].mean() + out["feat_2d"].mean()).backward()

  def timed(fn):
    fn()
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return statistics.median(times) / args.batch

  return {"fwd_s": timed(forward), "bwd_s": timed(forward_backward)}


def format_table(rows: list[tuple[str, str, dict, dict | None]], args) -> str:
  with_torch = any(r[3] is not None for r in rows)
  head = ["model", "input", "fwd ms/scan", "fwd GFLOP", "fwd GFLOP/s", "fwd+bwd ms/scan",
          "fwd+bwd GFLOP", "fwd+bwd GFLOP/s"]
  if with_torch:
    head += ["torch fwd ms", "torch fwd+bwd ms"]
  lines = [f"Machine: {hardware.describe(jax)}; jax {jax.__version__}; dtype {args.dtype}; batch "
           f"{args.batch}; median of {args.repeats} runs.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, size, r, t in rows:
    cells = [name, size, f"{1e3 * r['fwd_s']:.0f}", f"{r['fwd_gflop']:.1f}",
             f"{r['fwd_gflop'] / r['fwd_s']:.1f}", f"{1e3 * r['bwd_s']:.0f}",
             f"{r['bwd_gflop']:.1f}", f"{r['bwd_gflop'] / r['bwd_s']:.1f}"]
    if with_torch:
      cells += ["n/a", "n/a"] if t is None else [f"{1e3 * t['fwd_s']:.0f}",
                                                 f"{1e3 * t['bwd_s']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  if not with_torch:
    lines += ["", "(PyTorch column skipped: torch or the reference `pc_processor` package is "
              "not importable.)"]
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--models", default=",".join(models.MODELS))
  parser.add_argument("--sizes", default="64x2048,64x512")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--output", default=None, help="also write the markdown table here")
  args = parser.parse_args(argv)
  names = args.models.split(",")
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    parser.error(f"--models: unknown {unknown}; choose from {sorted(models.MODELS)}")
  try:
    args.size_list = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
  except ValueError:
    parser.error(f"--sizes: expected HxW[,HxW...], got {args.sizes!r}")
  if any(len(s) != 2 or min(s) < 1 for s in args.size_list) or args.repeats < 1:
    parser.error("--sizes needs positive HxW pairs and --repeats >= 1")
  args.model_list = names
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  rows = []
  for name in args.model_list:
    for height, width in args.size_list:
      size = f"{height}x{width}"
      print(f"benchmarking {name} at {size} ...", file=sys.stderr, flush=True)
      rows.append((name, size, bench_jax(name, height, width, args),
                   bench_torch(name, height, width, args)))
  table = format_table(rows, args)
  print(table)
  if args.output:
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
      f.write(table + "\n")
    os.replace(tmp, args.output)


if __name__ == "__main__":
  main()
