"""Times the COARSE3D core functions alone (jitted, after compilation; median, min) at step sizes.

  python benchmarks/bench_core.py --batch 2 --height 64 --width 512 --labeled 1536

Sizes as the benchmark train step: B scans of H x W pixels, C classes, M sub-prototypes, D dims,
`--labeled` weakly labeled pixels in the global batch (bank update, focal, Lovasz) and
B * C * K anchors (Pix2Proto forward + gradient w.r.t. the anchors).
"""
import argparse
import os
import statistics
import sys
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--classes", type=int, default=20)
  parser.add_argument("--sub", type=int, default=20)
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--labeled", type=int, default=1536)
  parser.add_argument("--anchors", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=20)
  return parser.parse_args()


def timings(fn, args, repeats: int) -> tuple[float, float]:
  """(median, min) seconds per call after compilation."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))  # Compile.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), min(times)


def build_cases(a):
  """name -> (jitted function, arguments) at the requested sizes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from coarse3d_jax import losses  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import prototypes
  from coarse3d_jax import sampling
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  n = a.height * a.width
  c = a.classes
  probs = jax.nn.softmax(3 * jax.random.normal(keys[0], (a.batch, n, c)), -1)
  weak = jnp.where(jax.random.uniform(keys[1], (a.batch, n)) < a.labeled / (a.batch * n),
                   jax.random.randint(keys[2], (a.batch, n), 1, c), 0)
  valid = jax.random.uniform(keys[3], (a.batch, n)) < 0.9
  bank = prototypes.init_bank(keys[4], c, a.sub, a.dim)
  emb = prototypes.l2_normalize(jax.random.normal(keys[5], (a.labeled, a.dim)))
  lab = jax.random.randint(keys[6], (a.labeled,), 1, c)
  # As the train step: K anchors per scan for each class 1..C-1 (class 0 never has any).
  num_anchors = a.batch * (c - 1) * a.anchors
  anchors = prototypes.l2_normalize(jax.random.normal(keys[7], (num_anchors, a.dim)))
  anchor_labels = jnp.repeat(jnp.tile(jnp.arange(1, c), a.batch), a.anchors)
  alpha = losses.focal_alpha(jnp.arange(c) + 1.0)
  labeled_probs = probs[0, :a.labeled]
  sup = lambda p: losses.focal_loss(p, lab, alpha, mask=lab > 0) + losses.lovasz_softmax(p, lab)
  return {
      "select_pseudo_labels": (jax.jit(sampling.select_pseudo_labels),
                               (keys[0], probs, weak, valid, 0.3)),
      "anchor_weights + sample_anchors": (
          jax.jit(lambda k, l, p: sampling.sample_anchors(k, l, sampling.anchor_weights(p), c,
                                                          a.anchors)),
          (keys[1], weak, probs)),
      "pix2proto_loss (value + grad)": (
          jax.jit(jax.value_and_grad(lambda x, b: losses.pix2proto_loss(
              x, anchor_labels, anchor_labels > 0, b))), (anchors, bank)),
      "update_bank": (jax.jit(prototypes.update_bank), (bank, emb, lab, lab > 0)),
      "focal + lovasz (value + grad)": (jax.jit(jax.value_and_grad(sup)), (labeled_probs,)),
  }


def main():
  args = parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks import hardware  # pylint: disable=g-import-not-at-top
  rows = [(name, *timings(fn, fn_args, args.repeats))
          for name, (fn, fn_args) in build_cases(args).items()]
  print(f"# {hardware.describe(jax)} | jax {jax.__version__} | batch {args.batch} x "
        f"{args.height}x{args.width}, C={args.classes}, M={args.sub}, D={args.dim}, "
        f"{args.labeled} labeled pixels, {args.batch * (args.classes - 1) * args.anchors} anchors")
  print("| function | median ms | min ms |\n|---|---|---|")
  for name, median, best in rows:
    print(f"| {name} | {1e3 * median:.1f} | {1e3 * best:.1f} |")
  print(f"| total | {1e3 * sum(r[1] for r in rows):.1f} | {1e3 * sum(r[2] for r in rows):.1f} |")


if __name__ == "__main__":
  main()
