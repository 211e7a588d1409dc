"""Point mIoU and model time per scan with and without test-time augmentation (and with KNN).

    python benchmarks/tta_gain.py --workdir W --raw_dir RAW [--dataset synthetic] [--split val]
        [--rolls 4] [--max_scans N]

A trained run predicts the raw scans of --split as `python -m coarse3d_jax.predict` does
(`predict.predict_scans`, batch 1), scored by the official evaluation (coarse3d_jax.evaluate):
- plain: one pass;
- TTA mirror: {identity, y-mirror}, 2 passes (`--tta`);
- TTA mirror x rolls: the mirror with --rolls yaw rolls, 2 x rolls passes (`--tta --tta_rolls`);
each without and with RangeNet++ KNN. Time: predict's model (+KNN) seconds per scan, after a
warm-up scan that compiles the programs.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from coarse3d_jax import startup  # pylint: disable=unused-import,g-bad-import-order  # TF log level.
# pylint: disable=wrong-import-position
import jax

from benchmarks import hardware
from coarse3d_jax import evaluate
from coarse3d_jax import inference
from coarse3d_jax import predict
from coarse3d_jax import test_time
from coarse3d_jax.data import readers


def score(args, refs, predictor, passes, knn: bool) -> dict:
  """Official results of one setting, plus its model seconds per scan."""
  with tempfile.TemporaryDirectory() as out:
    predict.predict_scans(refs[:1], args.dataset, predictor, out, knn=knn, passes=passes,
                          split=args.split, log=lambda s: None)  # Compiles.
    summary = predict.predict_scans(refs, args.dataset, predictor, out, knn=knn, passes=passes,
                                    split=args.split, log=lambda s: None)
    results = evaluate.evaluate_predictions(args.dataset, args.raw_dir, out, args.split,
                                            sequences=sorted({r.sequence for r in refs}))
  return {**results, "seconds_per_scan": summary["model_seconds"] / len(refs)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--raw_dir", required=True)
  parser.add_argument("--dataset", default="synthetic")
  parser.add_argument("--split", default="val")
  parser.add_argument("--rolls", type=int, default=4)
  parser.add_argument("--max_scans", type=int, default=0)
  args = parser.parse_args()
  print(hardware.describe(jax))
  predictor = inference.load_predictor(args.workdir, "latest")
  refs = readers.list_scans(args.dataset, args.raw_dir, args.split)
  refs = refs[:args.max_scans] if args.max_scans else refs
  width = predict.geometry_of(predictor)["width"]
  settings = {"plain": None,
              "TTA mirror (2 passes)": test_time.Passes(test_time.transform_set(True, 1, width)),
              f"TTA mirror x {args.rolls} rolls ({2 * args.rolls} passes)": test_time.Passes(
                  test_time.transform_set(True, args.rolls, width))}
  print(f"{args.workdir} (step {predictor.step}), {args.dataset} {args.split}, {len(refs)} scans")
  print("| predictions | mIoU % | accuracy % | s per scan | with KNN: mIoU % | accuracy % | "
        "s per scan |")
  print("|---|---|---|---|---|---|---|")
  for name, passes in settings.items():
    row = [score(args, refs, predictor, passes, knn) for knn in (False, True)]
    cells = [f"{100 * r['miou']:.2f} | {100 * r['accuracy']:.2f} | {r['seconds_per_scan']:.2f}"
             for r in row]
    print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
  main()
