"""Point mIoU with and without RangeNet++ KNN post-processing (k=5, window 5, sigma 1, cutoff 1).

    python benchmarks/knn_gain.py [--sample-dir DIR] [--workdir DIR --raw_dir RAW --split val]

- oracle (needs --sample-dir, default $COARSE3D_SAMPLE_DIR): the ground-truth label of every
  pixel's winning point is the "prediction", so every error is a point that lost its pixel to a
  closer point; this isolates what KNN recovers from the un-projection itself.
- model (with --workdir): a trained run predicts the raw scans of --split, as
  `python -m coarse3d_jax.predict` does, once with and once without --knn.
Both are scored by the official evaluation (coarse3d_jax.evaluate) over all points.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from coarse3d_jax import evaluate
from coarse3d_jax import predict
# pylint: disable=wrong-import-position
from coarse3d_jax.data import datasets
from coarse3d_jax.data import pixels
from coarse3d_jax.data import projection
from coarse3d_jax.data import readers


class PixelOracle:
  """Predicts, for a scan's range image, the ground truth of each pixel's winning point."""

  def __init__(self, info: datasets.DatasetInfo, dataset: str, refs):
    self.info, self.table = info, {}
    geo = info.geometry
    for ref in refs:
      points = readers.read_points(dataset, ref)
      labels = datasets.map_labels(info, readers.read_labels(dataset, ref, len(points)))
      finite = pixels.projectable(points)
      kept = points[finite]
      row, col, depth = projection.project_np(kept[:, :3], **geo)
      image, winner = projection.range_image_np(kept, row, col, depth, geo["height"],
                                                geo["width"])
      self.table[image.tobytes()] = np.where(winner >= 0, labels[finite][np.maximum(winner, 0)],
                                             0)

  def predict(self, images: np.ndarray) -> np.ndarray:
    eye = np.eye(self.info.num_classes, dtype=np.float32)
    default = np.ones(images.shape[1:3], int)
    return np.stack([eye[self.table.get(im.tobytes(), default)] for im in images])


def score(dataset: str, raw_dir, refs, predictor, split: str, knn: bool) -> dict:
  with tempfile.TemporaryDirectory() as out:
    predict.predict_scans(refs, dataset, predictor, out, knn=knn, split=split,
                          log=lambda s: None)
    return evaluate.evaluate_predictions(dataset, raw_dir, out, split,
                                         sequences=sorted({r.sequence for r in refs}))


def report(name: str, plain: dict, knn: dict) -> None:
  """mIoU over the classes present in ground truth or predictions (a two-scan sample lacks most
  classes; the official mean would count those as 0), and point accuracy."""
  a, b = plain["miou_present_classes"], knn["miou_present_classes"]
  print(f"| {name} | {100 * a:.2f} | {100 * b:.2f} | {100 * (b - a):+.2f} | "
        f"{100 * plain['accuracy']:.2f} | {100 * knn['accuracy']:.2f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sample-dir", default=os.environ.get("COARSE3D_SAMPLE_DIR"))
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--raw_dir", default=None)
  parser.add_argument("--dataset", default="synthetic")
  parser.add_argument("--split", default="val")
  args = parser.parse_args()
  print("| predictions | mIoU % (present classes) | with KNN | KNN adds | accuracy % | "
        "with KNN |")
  print("|---|---|---|---|---|---|")
  if args.sample_dir:
    info = datasets.get_info("semantickitti")
    refs = readers.list_scans("semantickitti", args.sample_dir, sequences=["00"])
    oracle = PixelOracle(info, "semantickitti", refs)
    results = [score("semantickitti", args.sample_dir, refs, oracle, "train", k)
               for k in (False, True)]
    report(f"pixel oracle, real SemanticKITTI sample ({len(refs)} scans)", *results)
  if args.workdir:
    from coarse3d_jax import inference  # pylint: disable=g-import-not-at-top
    predictor = inference.load_predictor(args.workdir, "latest")
    refs = readers.list_scans(args.dataset, args.raw_dir, args.split)
    results = [score(args.dataset, args.raw_dir, refs, predictor, args.split, k)
               for k in (False, True)]
    report(f"{args.workdir} (step {predictor.step}), {args.dataset} {args.split} "
           f"({len(refs)} scans)", *results)


if __name__ == "__main__":
  main()
