"""CPU time per scan of the exported model against predict's own model program.

    python benchmarks/bench_export.py [--model salsanext] [--width 1.0] [--size 64x2048]
        [--repeats 5] [--no-tflite]

A randomly initialized network (the time does not depend on the weights), exported with
`coarse3d_jax.export_model.export` exactly as `python -m coarse3d_jax.export_model` does, then
timed on one random 64x2048 range image, batch 1:
- predict: `inference.Predictor.predict`'s program (jit of normalize + network + softmax);
- jax.export: `model.jax_export` deserialized and called (its own jit, compiled by this JAX);
- SavedModel: `serving_default` of `saved_model/` in TensorFlow (the XlaCallModule compiled by
  TensorFlow's XLA);
- TFLite: `model.tflite` in the TFLite interpreter (XNNPACK).
Median and fastest of --repeats rounds (each round runs every row once) after one warm-up run
(which compiles), and the export time.
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from coarse3d_jax import startup  # pylint: disable=unused-import,g-bad-import-order  # TF log level.
# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hardware
from coarse3d_jax import augment
from coarse3d_jax import export_model
from coarse3d_jax import models
from coarse3d_jax.data import datasets


def interleaved_seconds(rows: dict, repeats: int) -> dict[str, list[float]]:
  """Wall times of every row, one run of each row per round (so that a shared machine's load
  falls on all rows alike), after one warm-up run each."""
  for fn in rows.values():
    fn()
  times = {name: [] for name in rows}
  for _ in range(repeats):
    for name, fn in rows.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def random_predictor(name: str, width: float, height: int, cols: int):
  """What export needs of a Predictor, for a randomly initialized network."""
  info = datasets.get_info("semantickitti")
  model = models.create_model(name, num_classes=info.num_classes, width=width,
                              projection_head=False)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, height, cols, 5)), train=False)
  config = types.SimpleNamespace(model=types.SimpleNamespace(name=name, width=width))
  return types.SimpleNamespace(model=model, variables=variables, info=info, config=config,
                               mean=np.zeros(5, np.float32), std=np.ones(5, np.float32),
                               step=0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="salsanext")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--size", default="64x2048")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-tflite", dest="tflite", action="store_false")
  args = parser.parse_args()
  height, cols = (int(v) for v in args.size.split("x"))
  print(hardware.describe(jax))
  predictor = random_predictor(args.model, args.width, height, cols)
  image = np.random.default_rng(0).uniform(1, 30, (1, height, cols, 5)).astype(np.float32)
  model = predictor.model
  apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(
      v, augment.normalize(x, predictor.mean, predictor.std), train=False)["logits"], -1))
  rows = {"predict (Predictor.predict)": lambda: np.asarray(apply(predictor.variables, image))}
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp)
    geometry = {**predictor.info.geometry, "height": height, "width": cols}
    tic = time.perf_counter()
    export_model.export(predictor, out, geometry, ("cpu", "cuda"), 0, args.tflite)
    print(f"export (jax.export + SavedModel{' + TFLite' * args.tflite}): "
          f"{time.perf_counter() - tic:.1f} s")
    exported = jax.export.deserialize(bytearray((out / "model.jax_export").read_bytes()))
    call = jax.jit(exported.call)
    rows["jax.export artifact"] = lambda: np.asarray(call(image)["probabilities"])
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    rows["SavedModel (TensorFlow)"] = lambda: serve(range_image=tf.constant(image))[
        "probabilities"].numpy()
    if args.tflite:
      runner = tf.lite.Interpreter(str(out / "model.tflite")).get_signature_runner()
      rows["TFLite interpreter"] = lambda: runner(range_image=image)["probabilities"]
    times = interleaved_seconds(rows, args.repeats)
    print(f"| {args.model} x{args.width:g}, {height}x{cols}, batch 1 | median s per scan | "
          "fastest |")
    print("|---|---|---|")
    for row, values in times.items():
      print(f"| {row} | {statistics.median(values):.3f} | {min(values):.3f} |")


if __name__ == "__main__":
  main()
