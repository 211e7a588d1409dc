"""A trained model as files that run without this package: python -m coarse3d_jax.export_model

    python -m coarse3d_jax.export_model --workdir W --out_dir DIR [--checkpoint latest|best|STEP]
        [--height H --width W] [--platforms cpu,cuda] [--knn_points P] [--tflite]
        [--check --raw_dir RAW [--split val | --sequences 08] [--check_scans 2]]

DIR receives, all at once (built in a temporary directory, then renamed):
- `model.jax_export`: the inference function serialized with `jax.export` for --platforms, batch
  size symbolic: `range_image` (B, H, W, 5) float32 raw features (range, x, y, z, remission;
  -1 on empty pixels; the normalization is inside) -> {'class_id' (B, H, W) int32, learning ids
  1..C-1, 'probabilities' (B, H, W, C) float32 softmax}: what predict computes per pixel.
- `saved_model/`: the same function as a TensorFlow SavedModel (jax2tf, native serialization:
  one XlaCallModule op holding the StableHLO for each platform, the weights as tf.Variables),
  signature `serving_default` with the same input and output names.
- with --knn_points P, `points.jax_export` and the SavedModel signature `points`: the point-level
  path of predict --knn, at a static budget of P points per scan (see model.json).
- with --tflite, `model.tflite`: the TFLite converter's output for `serving_default` at batch 1.
- `model.json`: the inputs, outputs, projection geometry, classes (learning id, name, raw id),
  the checkpoint step and the versions that wrote them.

--check reloads every artifact in fresh processes that cannot import coarse3d_jax (the JAX one
cannot import TensorFlow, the TensorFlow one cannot import JAX), runs them on --check_scans
scans of --raw_dir projected exactly as predict projects them, and compares with predict's
model on the same scans: class ids at every projectable point (flips allowed only where
predict's top two probabilities are closer than the tolerance) and probabilities within
`PROB_TOL`. A failed check leaves nothing in DIR. docs/deploy.md shows how to call each file.
"""
from collections.abc import Callable, Sequence
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from coarse3d_jax import augment
from coarse3d_jax import files
from coarse3d_jax import knn as knn_lib
from coarse3d_jax import predict
from coarse3d_jax import startup
from coarse3d_jax.data import datasets
from coarse3d_jax.data import errors as data_errors
from coarse3d_jax.data import readers

MANIFEST = "model.json"
PIXELS_FILE, POINTS_FILE = "model.jax_export", "points.jax_export"
SAVED_MODEL_DIR, TFLITE_FILE = "saved_model", "model.tflite"
PROB_TOL = 1e-5  # Largest probability difference --check accepts between an artifact and predict.
CHECK_TIMEOUT_S = 1800


class ExportModelError(Exception):
  """An export that cannot be made or that fails its check (message says which file)."""


def first_argmax(values: jax.Array) -> jax.Array:
  """argmax over the last axis (ties: the lowest index) as two single-operand reductions; the
  TFLite converter cannot lower jnp.argmax's (value, index) reduction."""
  top = values.max(axis=-1, keepdims=True)
  index = jnp.arange(values.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(values == top, index, values.shape[-1]), axis=-1)


def pixel_function(model, mean: np.ndarray, std: np.ndarray) -> Callable:
  """`(variables, range_image (B, H, W, 5) raw) -> {'class_id', 'probabilities'}`: predict's
  softmax (`inference.Predictor.predict`) and its pixel labels (argmax over classes 1..C-1)."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  def pixels(variables, range_image):
    x = augment.normalize(range_image, mean, std)
    probs = jax.nn.softmax(model.apply(variables, x, train=False)["logits"], axis=-1)
    predictable = jax.lax.slice_in_dim(probs, 1, probs.shape[-1], axis=-1)  # No gather.
    return {"class_id": first_argmax(predictable) + 1, "probabilities": probs}

  return pixels


def point_function(model, mean: np.ndarray, std: np.ndarray, num_classes: int) -> Callable:
  """`(variables, range_image (B, H, W, 5), point_range (B, P), point_row, point_col (B, P)
  int32, point_valid (B, P) bool) -> {'point_class_id' (B, P) int32}`: predict --knn's labels
  (RangeNet++ KNN with `knn.DEFAULTS`; 0 on padding)."""
  pixels = pixel_function(model, mean, std)

  def points(variables, range_image, point_range, point_row, point_col, point_valid):
    class_id = pixels(variables, range_image)["class_id"]
    labels = knn_lib.knn_labels(range_image[..., 0], class_id, point_range, point_row, point_col,
                                point_valid, num_classes=num_classes, **knn_lib.DEFAULTS)
    return {"point_class_id": labels}

  return points


def input_specs(height: int, width: int, knn_points: int, batch) -> dict[str, tuple]:
  """(name, shape, dtype) of every input of the pixel and the point functions."""
  image = ("range_image", (batch, height, width, 5), np.float32)
  point = lambda name, dtype: (name, (batch, knn_points), dtype)
  return {"pixels": (image,),
          "points": (image, point("point_range", np.float32), point("point_row", np.int32),
                     point("point_col", np.int32), point("point_valid", np.bool_))}


def export_jax(fn: Callable, variables: Any, specs: tuple, platforms: Sequence[str]) -> bytes:
  """`fn(variables, *inputs)` with the variables as constants, serialized by jax.export for
  `platforms`, the batch dimension symbolic."""
  batch, = jax.export.symbolic_shape("b")
  args = [jax.ShapeDtypeStruct((batch, *shape[1:]), dtype) for _, shape, dtype in specs]
  exported = jax.export.export(jax.jit(lambda *inputs: fn(variables, *inputs)),
                               platforms=tuple(platforms))(*args)
  return bytes(exported.serialize())


def _tf_module(functions: dict[str, tuple[Callable, tuple]], variables: Any,
               platforms: Sequence[str], batch: int | None):
  """A tf.Module holding the weights as tf.Variables, and one tf.function per function.

  Args:
    functions: signature name -> (fn(variables, *inputs), input specs); 'pixels' is named
      `serving_default`.
    variables: the network's variables.
    platforms: where the XlaCallModule's StableHLO may run.
    batch: a static batch size, or None for a symbolic one.
  Returns:
    (module, {signature name: tf.function}).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Only the export needs TF.
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  module = tf.Module()
  module.weights = tf.nest.map_structure(tf.Variable, jax.tree.map(np.asarray, variables))
  signatures = {}
  for name, (fn, specs) in functions.items():
    shapes = [None] + ["(b, ...)" if batch is None else None] * len(specs)
    converted = jax2tf.convert(fn, polymorphic_shapes=shapes,
                               native_serialization_platforms=tuple(platforms),
                               with_gradient=False)
    signature = [tf.TensorSpec((batch, *shape[1:]), tf.as_dtype(dtype), name=input_name)
                 for input_name, shape, dtype in specs]
    signatures["serving_default" if name == "pixels" else name] = tf.function(
        _with_weights(converted, module.weights), input_signature=signature, autograph=False)
  return module, signatures


def _with_weights(converted: Callable, weights: Any) -> Callable:
  def call(*inputs):
    return converted(weights, *inputs)
  return call


def export_saved_model(functions: dict[str, tuple[Callable, tuple]], variables: Any,
                       platforms: Sequence[str], path: pathlib.Path) -> None:
  """A SavedModel of `functions` (`_tf_module`), batch size symbolic, at `path`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module, signatures = _tf_module(functions, variables, platforms, None)
  tf.saved_model.save(module, str(path), signatures=signatures)


def tflite_model(pixels: tuple[Callable, tuple], variables: Any) -> bytes:
  """The TFLite converter's flatbuffer of `serving_default` at batch size 1.

  A static batch because under a symbolic one some layers export gathers (SqueezeSeg's
  bilinear resize) that the converter cannot read.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module, signatures = _tf_module({"pixels": pixels}, variables, ("cpu",), 1)
  concrete = signatures["serving_default"].get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
  try:
    return converter.convert()
  except Exception as e:  # pylint: disable=broad-except  # The converter raises many kinds.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ExportModelError(f"the TFLite converter refused the model: {first}") from None


def manifest(predictor, geometry: dict[str, Any], platforms: Sequence[str], knn_points: int,
             written: Sequence[str]) -> dict[str, Any]:
  """What model.json says: inputs, outputs, projection, classes and provenance."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info, config = predictor.info, predictor.config
  inputs = {name: {"shape": [None, *shape[1:]], "dtype": np.dtype(dtype).name}
            for name, shape, dtype in input_specs(geometry["height"], geometry["width"],
                                                  knn_points, None)["points"]}
  return {
      "dataset": info.name, "checkpoint_step": predictor.step,
      "model": {"name": config.model.name, "width": config.model.width},
      "projection": geometry,
      "input": {**inputs["range_image"], "name": "range_image",
                "channels": ["range", "x", "y", "z", "remission"], "empty_pixel": -1.0,
                "normalization": "inside: (x - mean) / std where range > 0, else 0",
                "mean": [float(v) for v in predictor.mean],
                "std": [float(v) for v in predictor.std]},
      "outputs": {"class_id": "(B, H, W) int32: learning id 1..C-1 (argmax of classes 1..)",
                  "probabilities": "(B, H, W, C) float32: softmax over learning ids 0..C-1"},
      "points": None if not knn_points else {
          "budget": knn_points, "inputs": {k: v for k, v in inputs.items() if k != "range_image"},
          "output": "point_class_id (B, P) int32: RangeNet++ KNN vote, 0 where not valid",
          "knn": knn_lib.DEFAULTS},
      "classes": [{"learning_id": j, "name": name, "raw_id": int(info.learning_map_inv[j])}
                  for j, name in enumerate(info.class_names)],
      "files": list(written), "platforms": list(platforms),
      "versions": {"jax": jax.__version__, "tensorflow": tf.__version__},
  }


def export(predictor, out_dir: pathlib.Path, geometry: dict[str, Any],
           platforms: Sequence[str], knn_points: int, tflite: bool) -> list[str]:
  """Writes every artifact into `out_dir` (an empty directory); returns their names."""
  model, variables = predictor.model, predictor.variables
  specs = input_specs(geometry["height"], geometry["width"], knn_points, None)
  functions = {"pixels": (pixel_function(model, predictor.mean, predictor.std), specs["pixels"])}
  if knn_points:
    functions["points"] = (point_function(model, predictor.mean, predictor.std,
                                          predictor.info.num_classes), specs["points"])
  written = []
  for name, (fn, fn_specs) in functions.items():
    filename = PIXELS_FILE if name == "pixels" else POINTS_FILE
    files.atomic_write(out_dir / filename, export_jax(fn, variables, fn_specs, platforms))
    written.append(filename)
  export_saved_model(functions, variables, platforms, out_dir / SAVED_MODEL_DIR)
  written.append(SAVED_MODEL_DIR)
  if tflite:
    files.atomic_write(out_dir / TFLITE_FILE, tflite_model(functions["pixels"], variables))
    written.append(TFLITE_FILE)
  files.atomic_write_json(out_dir / MANIFEST, manifest(predictor, geometry, platforms,
                                                       knn_points, written), indent=2)
  return written


# --- --check: every artifact in a fresh process that cannot import this package. ---

_BLOCKER = r'''
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} may not be imported by this check")
sys.meta_path.insert(0, _Blocked())
import os
import numpy as np
export_dir, inputs_path, outputs_path = sys.argv[1:4]
inputs = dict(np.load(inputs_path))
outputs = {}
'''

_JAX_RUNNER = 'BLOCKED = ("coarse3d_jax", "tensorflow")' + _BLOCKER + r'''
import jax
def load(name):
  with open(os.path.join(export_dir, name), "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))
for key, value in load("model.jax_export").call(inputs["range_image"]).items():
  outputs["jax_export/" + key] = np.asarray(value)
if os.path.exists(os.path.join(export_dir, "points.jax_export")):
  names = ("range_image", "point_range", "point_row", "point_col", "point_valid")
  result = load("points.jax_export").call(*[inputs[n] for n in names])
  outputs["jax_export/point_class_id"] = np.asarray(result["point_class_id"])
np.savez(outputs_path, **outputs)
'''

_TF_RUNNER = 'BLOCKED = ("coarse3d_jax", "jax", "jaxlib", "flax")' + _BLOCKER + r'''
import tensorflow as tf
model = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
result = model.signatures["serving_default"](range_image=tf.constant(inputs["range_image"]))
for key, value in result.items():
  outputs["saved_model/" + key] = value.numpy()
if "points" in model.signatures:
  names = ("range_image", "point_range", "point_row", "point_col", "point_valid")
  result = model.signatures["points"](**{n: tf.constant(inputs[n]) for n in names})
  outputs["saved_model/point_class_id"] = result["point_class_id"].numpy()
if os.path.exists(os.path.join(export_dir, "model.tflite")):
  runner = tf.lite.Interpreter(os.path.join(export_dir, "model.tflite")).get_signature_runner()
  per_scan = [runner(range_image=image[None]) for image in inputs["range_image"]]
  for key in per_scan[0]:
    outputs["tflite/" + key] = np.concatenate([r[key] for r in per_scan])
np.savez(outputs_path, **outputs)
'''


def run_artifacts(export_dir: pathlib.Path, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
  """Runs every artifact of `export_dir` on `inputs` in two fresh processes (JAX without
  TensorFlow, TensorFlow without JAX; neither may import coarse3d_jax); returns their outputs
  by 'artifact/output' name."""
  outputs = {}
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(os.path.join(tmp, "inputs.npz"), **inputs)
    for name, script in (("jax", _JAX_RUNNER), ("tensorflow", _TF_RUNNER)):
      out = os.path.join(tmp, f"{name}.npz")
      try:
        done = subprocess.run([sys.executable, "-c", script, str(export_dir),
                               os.path.join(tmp, "inputs.npz"), out], capture_output=True,
                              text=True, cwd=tmp, check=False, timeout=CHECK_TIMEOUT_S)
      except subprocess.TimeoutExpired:
        raise ExportModelError(f"{export_dir}: the {name} check process ran past "
                               f"{CHECK_TIMEOUT_S} s") from None
      if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportModelError(f"{export_dir}: the {name} check process failed: {last}")
      outputs.update(np.load(out))
  return outputs


def check_inputs(scans: Sequence[predict.PreparedScan], knn_points: int) -> dict[str, np.ndarray]:
  """The scans' range images and, with a point budget, their padded point arrays."""
  inputs = {"range_image": np.stack([s.image for s in scans])}
  if knn_points:
    too_many = [s for s in scans if len(s.depth) > knn_points]
    if too_many:
      raise ExportModelError(f"{too_many[0].ref.points_path}: {len(too_many[0].depth)} "
                             f"projectable points, more than --knn_points {knn_points}")
    depth = np.zeros((len(scans), knn_points), np.float32)
    row, col = np.zeros_like(depth, np.int32), np.zeros_like(depth, np.int32)
    valid = np.zeros_like(depth, bool)
    for i, s in enumerate(scans):
      n = len(s.depth)
      depth[i, :n], row[i, :n], col[i, :n], valid[i, :n] = s.depth, s.row, s.col, True
    inputs.update(point_range=depth, point_row=row, point_col=col, point_valid=valid)
  return inputs


def top_two_margin(probs: np.ndarray) -> np.ndarray:
  """(..., C) -> (...) gap between the two largest probabilities of classes 1..C-1."""
  top = np.sort(probs[..., 1:], axis=-1)
  return top[..., -1] - top[..., -2]


def near_flips(flipped: np.ndarray, search: int) -> np.ndarray:
  """(B, H, W) bool -> the pixels within the KNN window of a flipped pixel (zero-padded)."""
  pad = search // 2
  padded = np.pad(flipped, ((0, 0), (pad, pad), (pad, pad)))
  h, w = flipped.shape[1:]
  return np.any([padded[:, dy:dy + h, dx:dx + w] for dy in range(search)
                 for dx in range(search)], axis=0)


def compare(artifact: str, got: dict[str, np.ndarray], want_probs: np.ndarray,
            want_points: np.ndarray | None, scans: Sequence[predict.PreparedScan]) -> str:
  """One artifact's outputs against predict's; a one-line summary, or ExportModelError.

  Args:
    artifact: its name; `got` holds its outputs as '<artifact>/<output>'.
    want_probs: (B, H, W, C) predict's probabilities of the scans' images.
    want_points: (B, P) predict's KNN labels (0 on padding), or None.
    scans: the B scans (their projectable points' pixels).
  """
  want_ids = predict.pixel_argmax(want_probs)
  where = [(np.full(len(s.row), i), s.row, s.col) for i, s in enumerate(scans)]
  index = tuple(np.concatenate(parts) for parts in zip(*where))
  diff = float(np.abs(got[f"{artifact}/probabilities"] - want_probs).max())
  flips = got[f"{artifact}/class_id"] != want_ids
  excused = top_two_margin(want_probs) <= 2 * PROB_TOL
  bad = int((flips & ~excused)[index].sum())
  line = (f"{artifact}: class ids equal predict's at {int((~flips[index]).sum())} of "
          f"{len(index[0])} points, probabilities within {diff:.1e}")
  if want_points is not None and f"{artifact}/point_class_id" in got:
    near = near_flips(flips, knn_lib.DEFAULTS["search"])[index]
    valid = np.arange(want_points.shape[1]) < np.array([[len(s.row)] for s in scans])
    point_flips = (got[f"{artifact}/point_class_id"] != want_points)[valid]
    bad += int((point_flips & ~near).sum())
    line += f"; KNN labels equal at {int((~point_flips).sum())} of {int(valid.sum())}"
  if diff > PROB_TOL or bad:
    raise ExportModelError(f"--check: {line} ({bad} differences beyond float tolerance)")
  return line


def check(export_dir: pathlib.Path, predictor, scans: Sequence[predict.PreparedScan],
          knn_points: int) -> list[str]:
  """Runs every artifact of `export_dir` on `scans` in fresh processes against predict's model
  (its pixel labels, and with a point budget its KNN labels); one summary line per artifact."""
  inputs = check_inputs(scans, knn_points)
  want_probs = predictor.predict(inputs["range_image"])
  want_points = None
  if knn_points:
    voted = knn_lib.knn_labels(
        inputs["range_image"][..., 0], predict.pixel_argmax(want_probs), inputs["point_range"],
        inputs["point_row"], inputs["point_col"], inputs["point_valid"],
        num_classes=predictor.info.num_classes, **knn_lib.DEFAULTS)
    want_points = np.asarray(voted)
  got = run_artifacts(export_dir, inputs)
  artifacts = sorted({key.split("/")[0] for key in got})
  return [compare(a, got, want_probs, want_points, scans) for a in artifacts]


# --- The command line. ---

def define_flags(fv: flags.FlagValues, argv) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Directory to write (replaced as a whole if it holds an "
                      "earlier export).", flag_values=fv)
  flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.", flag_values=fv)
  flags.DEFINE_integer("height", None, "Range image height (default: the run's).",
                       flag_values=fv)
  flags.DEFINE_integer("width", None, "Range image width (default: the run's).", flag_values=fv)
  flags.DEFINE_list("platforms", ["cpu", "cuda"], "jax.export / SavedModel platforms (cpu, "
                    "cuda, rocm, tpu).", flag_values=fv)
  flags.DEFINE_integer("knn_points", 0, "Also export the point-level path with RangeNet++ KNN "
                       "at this static budget of points per scan (0: not exported).",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_bool("tflite", False, "Also convert the SavedModel to model.tflite.",
                    flag_values=fv)
  flags.DEFINE_bool("check", False, "Reload every artifact in fresh processes and compare it "
                    "with predict on --check_scans scans of --raw_dir.", flag_values=fv)
  flags.DEFINE_string("raw_dir", None, "Raw dataset root for --check.", flag_values=fv)
  flags.DEFINE_string("split", "val", "Split whose first scans --check uses.", flag_values=fv)
  flags.DEFINE_list("sequences", None, "Sequences for --check; overrides --split.",
                    flag_values=fv)
  flags.DEFINE_integer("check_scans", 2, "Scans --check compares.", lower_bound=1,
                       flag_values=fv)
  flags.mark_flags_as_required(["workdir", "out_dir"], flag_values=fv)


def _out_dir(path: str) -> pathlib.Path:
  """--out_dir, if it may be written: new, empty, or an earlier export (replaced)."""
  out = pathlib.Path(path)
  if out.exists() and not out.is_dir():
    raise ExportModelError(f"{out}: exists and is not a directory; --out_dir must be one")
  if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
    raise ExportModelError(f"{out}: a non-empty directory without {MANIFEST}; choose a new or "
                           "empty --out_dir (an earlier export there is replaced)")
  return out


def _geometry(args: flags.FlagValues, predictor) -> dict[str, Any]:
  """The run's projection at the --height / --width asked for."""
  geometry = predict.geometry_of(predictor)
  for key in ("height", "width"):
    value = getattr(args, key)
    if value is not None and value < 1:
      raise ExportModelError(f"--{key} {value}: the range image needs at least one pixel; "
                             f"{type(predictor.model).__name__} pads any positive size to "
                             f"multiples of its stride {predictor.model.stride}")
    geometry[key] = geometry[key] if value is None else value
  return geometry


def _check_scans(args: flags.FlagValues, predictor, geometry: dict[str, Any]):
  if not args.raw_dir:
    raise startup.UsageError("--check compares with predict on real scans: give --raw_dir")
  name = predictor.info.name
  dataset = name if name in datasets.NAMES else predictor.info  # A custom dataset: its info.
  refs = readers.list_scans(dataset, args.raw_dir, None if args.sequences else args.split,
                            args.sequences or None)[:args.check_scans]
  if not refs:
    raise ExportModelError(f"{args.raw_dir}: no scans to check")
  return [predict.prepare_scan(dataset, ref, geometry) for ref in refs]


def run(args: flags.FlagValues) -> dict[str, Any]:
  """The CLI body (raises the project's error classes on bad input)."""
  from coarse3d_jax import inference  # pylint: disable=g-import-not-at-top  # Heavy; CLI only.
  out = _out_dir(args.out_dir)
  unknown = sorted(set(args.platforms) - {"cpu", "cuda", "rocm", "tpu"})
  if unknown or not args.platforms:
    raise startup.UsageError(f"--platforms: {unknown or 'none'}; choose among cpu, cuda, rocm, "
                             "tpu")
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  predictor = inference.load_predictor(args.workdir, checkpoint)
  geometry = _geometry(args, predictor)
  scans = _check_scans(args, predictor, geometry) if args.check else []
  with files.atomic_directory(out) as tmp:
    written = export(predictor, tmp, geometry, args.platforms, args.knn_points, args.tflite)
    lines = check(tmp, predictor, scans, args.knn_points) if args.check else []
  print(f"{out}: {', '.join(written)} and {MANIFEST} (step {predictor.step}, "
        f"{geometry['height']}x{geometry['width']}, {', '.join(args.platforms)})")
  for line in lines:
    print(f"checked {line}")
  return {"out_dir": out, "files": written, "checks": lines}


def _errors() -> tuple[type[BaseException], ...]:
  from coarse3d_jax import checkpoints  # pylint: disable=g-import-not-at-top  # Heavy; CLI only.
  return (ExportModelError, predict.PredictError, data_errors.DataError,
          checkpoints.CheckpointError)


def program() -> startup.Program:
  return startup.Program("coarse3d_jax.export_model", __doc__, define_flags, run, _errors())


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI on argv (without the program name; default sys.argv[1:])."""
  argv = sys.argv[1:] if argv is None else argv
  return startup.run(program(), ["export_model", *argv])


if __name__ == "__main__":
  sys.exit(main())
