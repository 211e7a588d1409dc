"""One run that measures what a GPU (or TPU) user asks, and checks the device against the CPU.

    python benchmarks/gpu_check.py --output gpu.json      # the full grid, a 7-minute budget
    python benchmarks/gpu_check.py --quick                # one size and batch, 2.5 minutes

Prints one markdown table and writes it, with the device and settings, as JSON (`--output`,
written atomically). Rows, per device (global batch = per-device batch x devices):

- SalsaNext at 64x2048 and 64x512 (crop-sized inputs), batch 4/8/16, float32 and bfloat16:
  the plain step (focal + Lovasz, no projection head), +head (the projection head runs, as in
  the contrast warm-up) and the full COARSE3D train step (`benchmarks/common.bench_config`);
  the evaluation step (forward + point and pixel confusion matrices) and inference (what
  `inference.Predictor` computes: normalize, forward, softmax; inputs already on the device)
  at batch 1 and 16. RangeNet-21 and SqueezeSegV3-21: the same five rows at batch 4.
- ms/step (mean over N back-to-back steps after 2 warm-up steps, N chosen so that a row takes
  about --row-seconds), scans/s, achieved TFLOP/s = XLA's cost analysis of the compiled step
  (`compiled.cost_analysis()["flops"]`, per device) / time, and that as a fraction of the chip's
  dense peak for the row's dtype (`PEAKS`; empty for an unknown device).
- The PyTorch reference's plain and full step (benchmarks/torch_reference.py, in a separate
  process, run before any of ours so that nothing else uses the GPU meanwhile) when torch and
  the reference checkout are present (--reference-dir, default ./reference, git-ignored; or
  PYTHONPATH), at the first size and batch, float32; else "n/a".
- The check: --check-steps full COARSE3D steps (SalsaNext, float32, the last size, the first
  batch) on fixed synthetic tensors (`common.random_batch`) on the first device, and the same
  steps on the CPU backend of the same machine (`jax.devices("cpu")`; one device each, so that
  dropout draws the same masks), each CPU step from a copy of the device's state before that
  step: free-running trajectories diverge chaotically (discrete pseudo-label and anchor
  choices, Adam's sign-like first updates), so rounding differences would compound. Under
  `jax.default_matmul_precision("highest")`, so that GPUs do not use TF32 (TPUs: full float32
  passes). Pass when every step's loss agrees within LOSS_ATOL + LOSS_RTOL x |CPU loss| and its
  gradient norm within GRAD_NORM_RTOL, and the device's prototype bank stays unit-norm
  (max |norm - 1| < BANK_NORM_TOL).

Time: everything counts against --budget-s (default 420 s, 150 with --quick): the reference
first, then all programs are compiled (--compile-threads at once, in the order above: the
first size's batch 4, serving rows, larger batches, 64x512, the other backbones), starting no
compilation that would leave too little time to time what is compiled, then timed one at a
time in the same order (XLA autotunes GPU kernels while compiling, so nothing is timed while
anything compiles). Rows left out by the budget, by --quick or by the platform are listed
with "—" and say why.

Runs with only jax, flax, optax, orbax, numpy and absl, plus ml_collections (which
configs/default.py needs; pure Python, it travels as its wheel:
`PYTHONPATH=wheels/ml_collections-1.1.0-py3-none-any.whl`): the steps come from
`benchmarks/common.py` and `coarse3d_jax.programs`, never from the training loop or its input
pipeline, so no TensorFlow. On a TPU VM it runs unchanged, bfloat16 rows first. On a CPU it is a
smoke test: a reduced model width (--model-width, default 0.125, printed), float32 only with
--quick, and on a one-device CPU the check's device run stands for the CPU run.
"""
import argparse
import concurrent.futures
import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import types
from typing import Any, Callable

# The PyTorch reference shares the GPU with this process: JAX takes memory as it needs it
# instead of 75% of the GPU up front. Read when JAX first touches the GPU, after this import.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import hardware  # pylint: disable=g-import-not-at-top,wrong-import-position
from coarse3d_jax import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from coarse3d_jax import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from coarse3d_jax import programs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coarse3d_jax import settings  # pylint: disable=g-import-not-at-top,wrong-import-position
from coarse3d_jax.data import datasets  # pylint: disable=g-import-not-at-top,wrong-import-position

AXIS = programs.AXIS
DASH = "—"
MODELS = {"salsanext": "SalsaNext", "rangenet21": "RangeNet-21",
          "squeezesegv3_21": "SqueezeSegV3-21"}
TRAIN_ROWS = ("plain", "head", "coarse3d")
SERVE_ROWS = ("inference", "eval")
ROW_NAMES = {"plain": "plain step", "head": "+head step (contrast warm-up)",
             "coarse3d": "full COARSE3D step", "eval": "evaluation step",
             "inference": "inference"}
# The grid every table lists, whatever this run measures.
SIZES = ((64, 2048), (64, 512))
BATCHES = (4, 8, 16)
SERVE_BATCHES = (1, 16)
OTHER_BATCH = 4
DTYPES = ("float32", "bfloat16")

# Dense peak TFLOP/s per chip (no structured sparsity; datasheets quote "with sparsity" figures
# at twice these). (pattern in the lowercase device kind, bfloat16, float32 without tensor
# cores). NVIDIA H100 Tensor Core GPU datasheet: SXM 989.4 / 66.9, PCIe 756.5 / 51.2, NVL
# 835.5 / 60; H200 datasheet: as the H100 SXM (GH200 likewise); A100 datasheet: 312 / 19.5; L4
# datasheet: 121 / 30.3. Google Cloud TPU system architecture pages, bf16 per chip: v4 275,
# v5e 197, v5p 459, v6e (Trillium) 918; no float32 peak is published (the MXU runs float32 as
# several bf16 passes).
FP32_BASIS = ("float32 peak: CUDA cores without tensor cores (XLA may run float32 convolutions "
              "as TF32 on tensor cores, up to ~7x more)")
PEAKS = (
    ("h100 pcie", 756.5, 51.2), ("h100 nvl", 835.5, 60.0), ("h100", 989.4, 66.9),
    ("h200", 989.4, 66.9), ("a100", 312.0, 19.5), ("nvidia l4", 121.0, 30.3),
    ("tpu v4", 275.0, None), ("tpu v5 lite", 197.0, None), ("tpu v5e", 197.0, None),
    ("tpu v5p", 459.0, None), ("tpu v5", 459.0, None), ("tpu v6 lite", 918.0, None),
    ("tpu v6e", 918.0, None),
)
# The check's tolerances (why these values: benchmarks/README.md#gpu--tpu). A step's loss is
# continuous in the parameters; its gradient jumps where Lovasz's sort order, a pseudo-label or
# an anchor changes, which rounding alone can cause, hence the looser gradient-norm bound.
LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-6
GRAD_NORM_RTOL = 1e-2
BANK_NORM_TOL = 1e-5


def peak_tflops(device_kind: str) -> dict[str, float | None] | None:
  """{'bfloat16': TFLOP/s, 'float32': TFLOP/s or None} of a device kind; None when unknown."""
  kind = device_kind.lower()
  for pattern, bf16, fp32 in PEAKS:
    if pattern in kind and not (pattern == "nvidia l4" and kind.startswith("nvidia l40")):
      return {"bfloat16": bf16, "float32": fp32}
  return None


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the table: what runs (model, input, per-device batch, dtype, step)."""
  model: str
  height: int
  width: int
  batch: int
  dtype: str
  step: str

  @property
  def key(self) -> str:
    return f"{self.model} {self.height}x{self.width} b{self.batch} {self.dtype} {self.step}"


def grid() -> list[Row]:
  """Every row the table lists, in table order."""
  rows = [Row("salsanext", h, w, b, d, s) for h, w in SIZES for b in BATCHES for d in DTYPES
          for s in TRAIN_ROWS]
  rows += [Row("salsanext", h, w, b, d, s) for h, w in SIZES for d in DTYPES
           for b in SERVE_BATCHES for s in SERVE_ROWS]
  rows += [Row(m, h, w, OTHER_BATCH, d, s) for m in ("rangenet21", "squeezesegv3_21")
           for h, w in SIZES for d in DTYPES for s in TRAIN_ROWS + SERVE_ROWS]
  return rows


def plan(args) -> list[Row]:
  """The rows this run measures, in the order of their value: the first size's batch 4, its
  serving rows, its larger batches, the next size, then the other backbones."""
  rows = []
  for h, w in args.sizes:
    train = [Row("salsanext", h, w, b, d, s) for b in args.batches for d in args.dtypes
             for s in TRAIN_ROWS]
    first = len(args.dtypes) * len(TRAIN_ROWS)
    serve = [Row("salsanext", h, w, b, d, s) for d in args.dtypes for b in args.serve_batches
             for s in SERVE_ROWS]
    rows += train[:first] + serve + train[first:]
  rows += [Row(m, h, w, args.other_batch, d, s) for m in ("rangenet21", "squeezesegv3_21")
           for h, w in args.sizes for d in args.dtypes for s in TRAIN_ROWS + SERVE_ROWS]
  return [r for r in rows if r.model in args.models and r.step in args.rows]


def check_row(args) -> Row:
  h, w = args.sizes[-1]
  return Row("salsanext", h, w, args.batches[0], "float32", "coarse3d")


@dataclasses.dataclass
class Program:
  """A compiled step of one row on one mesh, with what it needs to run."""
  fn: Any  # The compiled executable.
  init: Any  # Compiled `key -> TrainState`.
  inputs: dict[str, np.ndarray]  # The global batch, host arrays.
  flops: float  # Per device and step, from XLA's cost analysis.
  kind: str  # 'train', 'eval' or 'inference'.
  mesh: Any
  global_batch: int


class Once:
  """Thread-safe memo: `get(key, make)` calls `make` once per key, even from many threads."""

  def __init__(self):
    self._lock = threading.Lock()
    self._entries = {}

  def get(self, key, make: Callable[[], Any]):
    with self._lock:
      entry = self._entries.setdefault(key, [threading.Lock(), None])
    with entry[0]:
      if entry[1] is None:
        entry[1] = make()
      return entry[1]


def flops_of(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _abstract(arrays: dict[str, np.ndarray], sharding) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in arrays.items()}


def _setup(row: Row, width: float, mesh, label_fraction: float):
  """(config, derived, model, tx, schedule, global batch of host arrays) of a row."""
  ns = types.SimpleNamespace(model=row.model, model_width=width, dtype=row.dtype,
                             batch=row.batch * mesh.size, height=row.height, width=row.width,
                             label_fraction=label_fraction)
  config = common.bench_config(row.step, ns)
  info = datasets.get_info("semantickitti")
  stats = common.fake_stats(info.num_classes, row.height, row.width, label_fraction)
  derived = settings.derive(config, info, stats, steps_per_epoch=100, total_steps=10_000)
  tx, schedule = programs.make_optimizer(config, 100, 10_000)
  model = programs.build_model(config, info.num_classes)
  batch = common.random_batch(ns, info.num_classes, np.random.default_rng(0))
  return config, derived, model, tx, schedule, batch


def _compile_init(init_fn, mesh):
  key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=NamedSharding(mesh, P()))
  lowered = jax.jit(init_fn, out_shardings=NamedSharding(mesh, P())).lower(key)
  # As programs.initial_state: ~120 threefry draws that run once compile far faster unoptimized.
  cpu = _platform(mesh) == "cpu"
  return lowered.compile({"xla_backend_optimization_level": 0} if cpu else None)


def _platform(mesh) -> str:
  return mesh.devices.flat[0].platform


def compile_row(row: Row, width: float, mesh, label_fraction: float, inits: Once) -> Program:
  """Compiles a row's step (and its state's initialization, shared between rows) on `mesh`."""
  config, derived, model, tx, schedule, batch = _setup(row, width, mesh, label_fraction)
  init_fn = programs.state_init_fn(config, model, tx, derived)
  mesh_key = tuple(d.id for d in mesh.devices.flat) + (mesh.devices.flat[0].platform,)
  init = inits.get((row.model, width, config.contrast.enabled, row.height, row.width, mesh_key),
                   lambda: _compile_init(init_fn, mesh))
  state = programs.abstract_state(init_fn, config.seed, mesh)
  data = NamedSharding(mesh, P(AXIS))
  if row.step in TRAIN_ROWS:
    inputs = {k: batch[k] for k in ("range_image", "label", "weak_label")}
    step = programs.compile_train_step(model, tx, schedule,
                                       ml_collections.FrozenConfigDict(config), derived, mesh)
    compiled = step.lower(state, _abstract(inputs, data)).compile()
    kind = "train"
  else:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if row.step == "eval":
      inputs = {k: batch[k] for k in ("range_image", "label", "point_label", "point_row",
                                      "point_col", "num_points", "example_valid")}
      step = programs.compile_eval_step(model, derived, mesh)
      compiled = step.lower(variables, _abstract(inputs, data)).compile()
    else:
      inputs = {"range_image": batch["range_image"]}
      compiled = inference_fn(config, derived, mesh).lower(
          variables, _abstract(inputs, data)["range_image"]).compile()
    kind = row.step
  return Program(fn=compiled, init=init, inputs=inputs, flops=flops_of(compiled), kind=kind,
                 mesh=mesh, global_batch=row.batch * mesh.size)


def inference_fn(config, derived, mesh):
  """What `inference.Predictor` computes (normalize, forward, softmax), batch-sharded."""
  model = programs.build_model(config, derived.num_classes, projection_head=False)
  mean, std = np.asarray(derived.mean, np.float32), np.asarray(derived.std, np.float32)

  def apply(variables, images):
    x = augment.normalize(images, mean, std)
    return jax.nn.softmax(model.apply(variables, x, train=False)["logits"], axis=-1)
  return jax.jit(apply, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))),
                 out_shardings=NamedSharding(mesh, P(AXIS)))


def start(program: Program, seed: int = 0) -> Callable[[], Any]:
  """A no-argument callable dispatching one step (carrying a train state); returns its output."""
  key = jax.device_put(jax.random.PRNGKey(seed), NamedSharding(program.mesh, P()))
  state = program.init(key)
  batch = programs.to_global(program.inputs, program.mesh)
  if program.kind == "train":
    box = [state]

    def train():
      box[0], logged = program.fn(box[0], batch)
      return logged
    return train
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if program.kind == "inference":
    return lambda: program.fn(variables, batch["range_image"])
  return lambda: program.fn(variables, batch)


def measure(step: Callable[[], Any], target_s: float, deadline: float, warmup: int = 2,
            min_steps: int = 3, max_steps: int = 1000) -> tuple[float, int]:
  """(seconds per step, steps timed): N back-to-back steps after `warmup`, N ~ target_s / probe,
  fewer when `deadline` (time.monotonic()) is near."""
  for _ in range(warmup):
    jax.block_until_ready(step())
  tic = time.perf_counter()
  jax.block_until_ready(step())
  probe = max(time.perf_counter() - tic, 1e-6)
  room = max(deadline - time.monotonic(), probe)
  n = int(min(max_steps, max(min_steps, target_s / probe), max(1, room / probe)))
  tic = time.perf_counter()
  out = None
  for _ in range(n):
    out = step()
  jax.block_until_ready(out)
  return (time.perf_counter() - tic) / n, n


def timing_row(program: Program, seconds: float, steps: int, peak: float | None) -> dict:
  tflops = program.flops / seconds / 1e12 if np.isfinite(program.flops) else None
  return {"ms": 1e3 * seconds, "scans_per_s": program.global_batch / seconds,
          "tflops": tflops, "peak_fraction": tflops / peak if tflops and peak else None,
          "gflop_per_step": program.flops / 1e9 if np.isfinite(program.flops) else None,
          "steps_timed": steps}


# ---------------------------------------------------------------------------- the check


def compare(device: np.ndarray, cpu: np.ndarray, rtol: float, atol: float = 0.0) -> dict:
  """Whether every device value is within atol + rtol * |cpu value| of the CPU's."""
  device, cpu = np.asarray(device, np.float64), np.asarray(cpu, np.float64)
  if device.shape != cpu.shape or not device.size:
    return {"pass": False, "max_abs_diff": None, "max_rel_diff": None}
  if not (np.isfinite(device).all() and np.isfinite(cpu).all()):
    return {"pass": False, "max_abs_diff": None, "max_rel_diff": None}
  diff = np.abs(device - cpu)
  return {"pass": bool((diff <= atol + rtol * np.abs(cpu)).all()),
          "max_abs_diff": float(diff.max()),
          "max_rel_diff": float((diff / np.maximum(np.abs(cpu), 1e-30)).max())}


def bank_norm_error(bank: np.ndarray) -> float:
  """max |L2 norm - 1| over the (C, M, D) bank's prototypes, in float64."""
  return float(np.abs(np.linalg.norm(np.asarray(bank, np.float64), axis=-1) - 1.0).max())


def check_steps(device: Program, cpu: Program | None, steps: int) -> dict[str, np.ndarray]:
  """Loss and gradient norm of `steps` train steps on the device, and of the same steps on
  the CPU, each CPU step taken from a copy of the device's state before that step (so that
  differences do not compound); the device's final bank. `cpu` None: the device is the CPU."""
  state = device.init(jax.device_put(jax.random.PRNGKey(0), NamedSharding(device.mesh, P())))
  batch = programs.to_global(device.inputs, device.mesh)
  cpu_batch = programs.to_global(cpu.inputs, cpu.mesh) if cpu else None
  out = {k: [] for k in ("device_losses", "cpu_losses", "device_grad_norms", "cpu_grad_norms")}
  for _ in range(steps):
    cpu_state = None
    if cpu:  # Copied before the device step, which donates its state.
      cpu_state = jax.block_until_ready(jax.device_put(state, NamedSharding(cpu.mesh, P())))
    state, logged = device.fn(state, batch)
    cpu_logged = cpu.fn(cpu_state, cpu_batch)[1] if cpu else logged
    for side, values in (("device", logged), ("cpu", cpu_logged)):
      out[f"{side}_losses"].append(float(values["loss"]))
      out[f"{side}_grad_norms"].append(float(values["grad_norm"]))
  out = {k: np.asarray(v) for k, v in out.items()}
  out["bank"] = np.asarray(state.bank)
  out["same_device"] = cpu is None
  return out


def check_verdicts(run: dict[str, np.ndarray]) -> tuple[dict, dict]:
  """The two check rows' figures: device-vs-CPU losses and gradient norms; the bank's norms."""
  losses = compare(run["device_losses"], run["cpu_losses"], LOSS_RTOL, LOSS_ATOL)
  grads = compare(run["device_grad_norms"], run["cpu_grad_norms"], GRAD_NORM_RTOL)
  ok = losses["pass"] and grads["pass"]
  steps = len(run["device_losses"])
  loss_row = {"pass": ok, "max_abs_diff": losses["max_abs_diff"],
              "max_rel_diff": losses["max_rel_diff"],
              "grad_norm_max_rel_diff": grads["max_rel_diff"],
              **{k: run[k].tolist() for k in ("device_losses", "cpu_losses",
                                              "device_grad_norms", "cpu_grad_norms")},
              "note": f"{'PASS' if ok else 'FAIL'}: {steps} steps, max |loss diff| "
                      f"{_sci(losses['max_abs_diff'])} (rel {_sci(losses['max_rel_diff'])}), "
                      f"gradient norm rel {_sci(grads['max_rel_diff'])}; tolerances "
                      f"{LOSS_ATOL:g} + {LOSS_RTOL:g} x |loss|, {GRAD_NORM_RTOL:g} x |norm|"
                      + (" (the device is the CPU: its run stands for both)"
                         if run.get("same_device") else "")}
  error = bank_norm_error(run["bank"])
  ok = bool(error < BANK_NORM_TOL)
  bank_row = {"pass": ok, "max_abs_diff": error,
              "note": f"{'PASS' if ok else 'FAIL'}: max |norm - 1| {error:.2e} after {steps} "
                      f"steps (< {BANK_NORM_TOL:g})"}
  return loss_row, bank_row


def _sci(value) -> str:
  return "nan" if value is None else f"{value:.1e}"


# ---------------------------------------------------------------------------- the reference

REFERENCE_ROWS = {"plain": "plain step",
                  "coarse3d": "full COARSE3D step (as its trainer runs it)",
                  "coarse3d_proto": "full + prototype update (its trainer never enables it)"}
NOT_FOUND = "n/a (torch/reference not found)"


def reference_unavailable(args, platform: str) -> str | None:
  """Why the PyTorch reference rows are not run here, or None."""
  if args.no_reference:
    return "not run (--no-reference)"
  path = [args.reference_dir] + os.environ.get("PYTHONPATH", "").split(os.pathsep) + sys.path
  if (importlib.util.find_spec("torch") is None or
      importlib.machinery.PathFinder.find_spec("pc_processor", [p for p in path if p]) is None):
    return NOT_FOUND
  if platform == "tpu":
    return "n/a (no PyTorch on a TPU)"
  if platform == "cpu" and args.model_width != 1.0:
    return "n/a (CPU smoke test: our rows are at a reduced width)"
  return None


def _next_json(proc) -> dict:
  """The reference process's next JSON line (it prints notes of its own; they pass through)."""
  for line in proc.stdout:
    if line.startswith("{"):
      return json.loads(line)
    print(f"(reference says: {line.strip()})", file=sys.stderr)
  return {"unavailable": f"the reference process ended (exit {proc.wait()})"}


def _reference_rounds(proc, target_s: float, deadline: float) -> dict[str, list[float]]:
  """Seconds per step of each kind over rounds after 2 warm-up rounds: at least 3, more up to
  ~target_s of stepping or 20 rounds, fewer when `deadline` is near."""
  times: dict[str, list[float]] = {}
  for i in range(22):
    proc.stdin.write("round\n")
    proc.stdin.flush()
    out = _next_json(proc)
    if "unavailable" in out:
      raise RuntimeError(out["unavailable"])
    if i >= 2:
      for kind, seconds in out.items():
        times.setdefault(kind, []).append(seconds)
    timed = max(i - 1, 0)
    stepped = sum(sum(v) for v in times.values())
    if (timed >= 3 and stepped >= target_s) or (timed >= 1 and time.monotonic() > deadline):
      break
  return times


def run_reference(args, device: str, deadline: float) -> dict:
  """{'hello': the process's first line, 'seconds': {kind: median}, 'rounds': n} or
  {'unavailable': why}, from torch_reference.serve in a separate process."""
  h, w = args.sizes[0]
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (args.reference_dir, ROOT,
                                                   env.get("PYTHONPATH")) if p)
  script = os.path.join(ROOT, "benchmarks", "torch_reference.py")
  proc = subprocess.Popen(
      [sys.executable, script, "--serve", str(args.batches[0]), str(h), str(w),
       str(args.label_fraction), "--device", device],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
  watchdog = threading.Timer(max(deadline - time.monotonic(), 1.0) + 30.0, proc.kill)
  watchdog.start()
  try:
    hello = _next_json(proc)
    if "ready" not in hello:
      return {"unavailable": hello.get("unavailable", "no answer")}
    times = _reference_rounds(proc, 3 * args.row_seconds, deadline)
    return {"hello": hello, "rounds": len(next(iter(times.values()))),
            "seconds": {k: statistics.median(v) for k, v in times.items()}}
  except (OSError, RuntimeError, ValueError) as e:
    return {"unavailable": _one_line(e)}
  finally:
    watchdog.cancel()
    try:
      proc.stdin.close()
      proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      proc.kill()


def reference_rows(args, platform: str, deadline: float) -> list[dict]:
  """The reference's rows (SalsaNext at the first size and batch, float32)."""
  (h, w), batch = args.sizes[0], args.batches[0]
  why = reference_unavailable(args, platform)
  result = {}
  if why is None:
    result = run_reference(args, "cuda" if platform == "gpu" else "cpu", deadline)
    if "unavailable" in result:
      why = f"n/a (reference failed: {result['unavailable']})"
  rows = []
  for kind, name in REFERENCE_ROWS.items():
    row = {"key": f"reference {kind}", "model": "SalsaNext, PyTorch reference",
           "input": f"{h}x{w}", "batch": batch, "dtype": "float32", "step": name, "note": why}
    if why is None:
      seconds = result["seconds"][kind]
      hello = result["hello"]
      stubbed = ", ".join(hello.get("stubbed") or ()) or "none"
      row.update(ms=1e3 * seconds, scans_per_s=batch / seconds, steps_timed=result["rounds"],
                 note=f"torch {hello.get('torch')} on {hello.get('device')}; median of "
                      f"{result['rounds']} rounds; stubbed imports: {stubbed}")
    rows.append(row)
  return rows


# ---------------------------------------------------------------------------- compiling


@dataclasses.dataclass
class Job:
  key: str
  make: Callable[[], Program]
  reserve_s: float  # Time its timing (or the check) will take once compiled.
  kind: str = "train"  # Jobs of one kind (step kind and platform) take about as long to compile.


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _timed(make: Callable[[], Program]) -> tuple[Program, float]:
  tic = time.monotonic()
  return make(), time.monotonic() - tic


def compile_all(jobs: list[Job], threads: int, end: float,
                log: Callable[[str], None]) -> dict[str, Program | str]:
  """Each job's Program (or why there is none), compiled `threads` at a time in order.

  A job is skipped when the time left before `end` would not cover its compilation (the
  median of its kind's so far) plus the reserves of every job compiled or compiling, so that
  what is compiled can also be timed; later, quicker kinds may still fit.
  """
  out: dict[str, Program | str] = {}
  queue, running, durations, reserved = list(jobs), {}, {}, 0.0
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    while queue or running:
      while queue and len(running) < threads:
        job = queue.pop(0)
        expected = statistics.median(durations.get(job.kind, [0.0]))
        if time.monotonic() + expected + reserved + job.reserve_s > end:
          out[job.key] = "skipped: time budget (not compiled)"
          continue
        reserved += job.reserve_s
        running[pool.submit(_timed, job.make)] = job
      if not running:
        break
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        job = running.pop(future)
        try:
          out[job.key], seconds = future.result()
          durations.setdefault(job.kind, []).append(seconds)
          log(f"compiled {job.key} in {seconds:.1f} s")
        except Exception as e:  # pylint: disable=broad-except
          reserved -= job.reserve_s
          out[job.key] = f"failed to compile: {_one_line(e)}"
          log(f"{job.key}: {out[job.key]}")
  return out


def program_key(row: Row, mesh, precision: str | None = None) -> str:
  """A compiled program's identity: row, devices and (off the CPU, where it changes nothing)
  the matmul precision."""
  devices = list(mesh.devices.flat)
  platform = devices[0].platform
  text = f"{row.key} on {platform}:{','.join(str(d.id) for d in devices)}"
  return text if precision is None or platform == "cpu" else f"{text} at {precision} precision"


def check_meshes() -> tuple[Any, Any]:
  """One-device meshes of the check: the first device and a CPU device, or None for the CPU
  when it is that same device. The device counts match so that dropout draws match."""
  device = jax.devices()[0]
  cpu = jax.devices("cpu")[-1]  # RuntimeError when JAX_PLATFORMS leaves the CPU out.
  one = lambda d: jax.sharding.Mesh(np.asarray([d]), (AXIS,))
  return one(device), (None if cpu == device else one(cpu))


def make_jobs(args, rows: list[Row], mesh, platform: str, meshes) -> list[Job]:
  """Compilation jobs: the check's programs first (`meshes` from check_meshes, or None), then
  the rows in plan order; a program two of them share is compiled once."""
  inits = Once()
  accelerator = platform != "cpu"
  row_reserve = args.row_seconds + (2.0 if accelerator else 8.0)
  jobs: dict[str, Job] = {}

  def add(row, on_mesh, precision=None, reserve=row_reserve):
    def make():
      with jax.default_matmul_precision(precision):
        return compile_row(row, args.model_width, on_mesh, args.label_fraction, inits)
    key = program_key(row, on_mesh, precision)
    kind = ("train" if row.step in TRAIN_ROWS else row.step) + " on " + _platform(on_mesh)
    jobs.setdefault(key, Job(key, make, reserve, kind))

  if meshes is not None:
    # 10 steps: ~3 s on a GPU (plus the CPU's), ~25 s for the CPU smoke test's width.
    for check_mesh in filter(None, meshes):
      add(check_row(args), check_mesh, "highest", 20.0 if accelerator else 40.0)
  for row in rows:
    add(row, mesh)
  return list(jobs.values())


# ---------------------------------------------------------------------------- the run


def check_results(args, meshes, compiled: dict) -> list[dict]:
  """The two check rows, run now (first, before any timing); `meshes` as for make_jobs."""
  row = check_row(args)
  base = {"model": "SalsaNext", "input": f"{row.height}x{row.width}", "batch": row.batch,
          "dtype": "float32"}
  names = ("check: device vs CPU, loss and gradient norm", "check: bank unit norm")
  why = None
  if args.no_check:
    why = "not run (--no-check)"
  elif meshes is None:
    why = "not run: no CPU backend (JAX_PLATFORMS leaves it out)"
  else:
    found = [compiled.get(program_key(row, m, "highest")) if m else None for m in meshes]
    why = next((p for p in found if isinstance(p, str)), None)
  if why is not None:
    return [dict(base, key=n, step=n, note=why) for n in names]
  try:
    loss_row, bank_row = check_verdicts(check_steps(found[0], found[1], args.check_steps))
  except Exception as e:  # pylint: disable=broad-except
    return [dict(base, key=n, step=n, note=f"FAIL: {_one_line(e)}", **{"pass": False})
            for n in names]
  return [dict(base, key=names[0], step=names[0], **loss_row),
          dict(base, key=names[1], step=names[1], **bank_row)]


def time_rows(args, rows: list[Row], mesh, compiled: dict, peak: dict | None, end: float,
              log: Callable[[str], None]) -> dict[str, dict]:
  """Timing figures (or why none) of each planned row, one row at a time."""
  out = {}
  for row in rows:
    program = compiled.get(program_key(row, mesh), "skipped: time budget (not compiled)")
    if isinstance(program, str):
      out[row.key] = {"note": program}
      continue
    if time.monotonic() + 1.0 > end:
      out[row.key] = {"note": "skipped: time budget (compiled, not timed)"}
      continue
    try:
      seconds, n = measure(start(program), args.row_seconds, end)
      out[row.key] = timing_row(program, seconds, n, (peak or {}).get(row.dtype))
      log(f"timed {row.key}: {1e3 * seconds:.1f} ms/step over {n} steps")
    except Exception as e:  # pylint: disable=broad-except
      out[row.key] = {"note": f"failed: {_one_line(e)}"}
      log(f"{row.key}: {out[row.key]['note']}")
  return out


def why_not_run(row: Row, args, platform: str) -> str:
  if row.model not in args.models or row.step not in args.rows:
    return "not selected (--models / --rows)"
  if row.dtype == "bfloat16" and platform == "cpu" and args.quick:
    return "not run: bfloat16 only on accelerators in --quick"
  if args.quick:
    return "not in --quick"
  return "not in this run's --sizes / --batches / --dtypes"


def row_dict(row: Row, figures: dict | None, args, platform: str) -> dict:
  out = {"key": row.key, "model": MODELS[row.model], "input": f"{row.height}x{row.width}",
         "batch": row.batch, "dtype": row.dtype, "step": ROW_NAMES[row.step]}
  if figures is None:
    out["note"] = why_not_run(row, args, platform)
  else:
    out.update(figures)
    if "ms" in figures and args.model_width != 1.0:
      out["note"] = f"model width {args.model_width:g}"
  return out


def device_info() -> dict:
  dev = jax.devices()[0]
  info = {"kind": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
          "count": jax.device_count(), "processes": jax.process_count(),
          "peak_tflops": peak_tflops(dev.device_kind), "float32_peak_basis": FP32_BASIS,
          "described": hardware.describe(jax)}
  if dev.platform == "cpu":
    info.update(cpu=hardware.cpu_name(), cores=os.cpu_count())
  return info


def format_table(report: dict) -> str:
  """The markdown table (with two caption lines) of a report; the same from its JSON."""
  d, s = report["device"], report["settings"]
  peak = d.get("peak_tflops")
  peak_text = (f"peak {peak['bfloat16']} bf16 / {peak['float32'] or DASH} fp32 TFLOP/s "
               f"(dense; fp32 = without tensor cores)" if peak else "peak unknown")
  lines = [
      f"Device: {d['described']} ({d['kind']}, platform {d['platform']}, {d['count']} "
      f"device(s)); jax {d['jax']}; {peak_text}.",
      f"Model width {s['model_width']:g}; per-device batches; {s['mode']}; "
      f"{report['elapsed_s']:.0f} s of a {s['budget_s']:.0f} s budget.", "",
      "| model | input | batch/device | dtype | step | ms/step | scans/s | TFLOP/s | % of peak "
      "| note |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["rows"]:
    cells = [r["model"], r["input"], str(r["batch"]), r["dtype"], r["step"],
             _fmt(r.get("ms"), ".1f"), _fmt(r.get("scans_per_s"), ".1f"),
             _fmt(r.get("tflops"), ".3g"), _fmt(_times(r.get("peak_fraction"), 100), ".1f"),
             r.get("note") or ""]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines)


def _fmt(value, spec: str) -> str:
  return DASH if value is None else format(value, spec)


def _times(value, factor):
  return None if value is None else value * factor


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", help="also write the report (every row, as JSON) here")
  parser.add_argument("--quick", action="store_true",
                      help="one size (64x512), one batch (4): a ~3-minute check")
  parser.add_argument("--budget-s", "--budget_s", type=float, default=None,
                      help="wall-time budget in seconds (default 420; 150 with --quick)")
  parser.add_argument("--sizes", default=None, help="HxW,... (default 64x2048,64x512)")
  parser.add_argument("--batches", default=None, help="per-device train batches (4,8,16)")
  parser.add_argument("--serve-batches", default="1,16",
                      help="per-device batches of SalsaNext's evaluation and inference rows")
  parser.add_argument("--other-batch", type=int, default=OTHER_BATCH,
                      help="per-device batch of the RangeNet-21 and SqueezeSegV3-21 rows")
  parser.add_argument("--dtypes", default=None, help="default float32,bfloat16 (TPU: bfloat16 "
                      "first; CPU --quick: float32)")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--rows", default=",".join(TRAIN_ROWS + SERVE_ROWS))
  parser.add_argument("--model-width", type=float, default=None,
                      help="channel multiplier (default 1; 0.125 on a CPU)")
  parser.add_argument("--row-seconds", type=float, default=2.0, help="timed stepping per row")
  parser.add_argument("--check-steps", type=int, default=10)
  parser.add_argument("--no-check", action="store_true")
  parser.add_argument("--compile-threads", type=int, default=None,
                      help="compilations at once (default: 1 on a CPU, else min(8, cores / 2))")
  parser.add_argument("--label-fraction", type=float, default=0.002)
  parser.add_argument("--reference-dir",
                      default=os.environ.get("COARSE3D_REFERENCE", os.path.join(ROOT, "reference")),
                      help="checkout of astra-vision/COARSE3D (at 41de2207)")
  parser.add_argument("--no-reference", action="store_true")
  args = parser.parse_args(argv)
  try:
    args.sizes = _pairs(args.sizes) if args.sizes else None
    args.batches = _ints(args.batches) if args.batches else None
    args.serve_batches = _ints(args.serve_batches)
  except ValueError as e:
    parser.error(str(e))
  for name, values, known in (("--models", args.models, MODELS),
                              ("--rows", args.rows, TRAIN_ROWS + SERVE_ROWS),
                              ("--dtypes", args.dtypes or "float32", DTYPES)):
    unknown = sorted(set(values.split(",")) - set(known))
    if unknown:
      parser.error(f"{name}: unknown {unknown}; choose from {list(known)}")
  args.models, args.rows = args.models.split(","), args.rows.split(",")
  args.dtypes = args.dtypes.split(",") if args.dtypes else None
  if min([args.other_batch, args.check_steps] + (args.batches or [1])) < 1 or (
      args.row_seconds <= 0 or (args.model_width is not None and args.model_width <= 0)):
    parser.error("batches, --check-steps, --row-seconds and --model-width must be positive")
  return args


def _ints(text: str) -> list[int]:
  values = [int(v) for v in text.split(",")]
  if min(values) < 1:
    raise ValueError(f"expected positive integers, got {text!r}")
  return values


def _pairs(text: str) -> list[tuple[int, int]]:
  try:
    pairs = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]
  except ValueError:
    pairs = []
  if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
    raise ValueError(f"--sizes: expected HxW[,HxW...], got {text!r}")
  return pairs


def resolve(args, platform: str) -> None:
  """Fills the defaults that depend on the platform and on --quick."""
  accelerator = platform != "cpu"
  args.sizes = args.sizes or ([(64, 512)] if args.quick else list(SIZES))
  args.batches = args.batches or ([BATCHES[0]] if args.quick else list(BATCHES))
  if args.dtypes is None:
    args.dtypes = (["bfloat16", "float32"] if platform == "tpu" else
                   list(DTYPES) if accelerator or not args.quick else ["float32"])
  if args.model_width is None:
    args.model_width = 1.0 if accelerator else 0.125
  if args.budget_s is None:
    args.budget_s = 150.0 if args.quick else 420.0
  if args.compile_threads is None:
    args.compile_threads = min(8, max(1, (os.cpu_count() or 2) // 2)) if accelerator else 1


def _log(t0: float) -> Callable[[str], None]:
  return lambda text: print(f"[{time.monotonic() - t0:6.1f} s] {text}", file=sys.stderr,
                            flush=True)


def run(args, t0: float) -> dict:
  """Measures everything within the budget; the report (device, settings, rows)."""
  log = _log(t0)
  device = device_info()
  platform = device["platform"]
  resolve(args, platform)
  end = t0 + args.budget_s
  log(f"{device['described']}: {device['kind']}, jax {device['jax']}")
  reference = reference_rows(args, platform, min(end, time.monotonic() + 150.0))
  mesh = programs.make_mesh()
  planned = plan(args)
  try:
    meshes = None if args.no_check else check_meshes()
  except RuntimeError:
    meshes = None
  jobs = make_jobs(args, planned, mesh, platform, meshes)
  compiled = compile_all(jobs, args.compile_threads, end, log)
  checks = check_results(args, meshes, compiled)
  log(f"check: {checks[0]['note']}; {checks[1]['note']}")
  figures = time_rows(args, planned, mesh, compiled, device["peak_tflops"], end, log)
  listed = grid()
  extra = [r for r in planned if r not in set(listed)]
  rows = checks + reference + [row_dict(r, figures.get(r.key), args, platform)
                               for r in listed + extra]
  mode = "--quick" if args.quick else "full grid"
  return {"device": device,
          "settings": {"mode": mode, "budget_s": args.budget_s, "model_width": args.model_width,
                       "sizes": [f"{h}x{w}" for h, w in args.sizes], "batches": args.batches,
                       "serve_batches": args.serve_batches, "other_batch": args.other_batch,
                       "dtypes": args.dtypes, "row_seconds": args.row_seconds,
                       "check_steps": args.check_steps, "compile_threads": args.compile_threads,
                       "label_fraction": args.label_fraction,
                       "check_tolerance": {"loss_rtol": LOSS_RTOL, "loss_atol": LOSS_ATOL,
                                           "grad_norm_rtol": GRAD_NORM_RTOL},
                       "bank_norm_tolerance": BANK_NORM_TOL},
          "rows": rows, "elapsed_s": time.monotonic() - t0}


def main(argv=None) -> dict:
  t0 = time.monotonic()
  args = parse_args(argv)
  report = run(args, t0)
  print(format_table(report), flush=True)
  if args.output:
    files.atomic_write_json(args.output, report, indent=1)
  return report


if __name__ == "__main__":
  main()
