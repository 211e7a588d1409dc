"""benchmarks/gpu_check.py: the table names every row, the JSON round-trips, the device-vs-CPU
check passes and fails when it should, the peak table and the time budget."""
import itertools
import json
import time

import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from benchmarks import gpu_check

# Every row the GPU check must list, written out here from its specification rather than
# taken from gpu_check.grid().
SIZES = ("64x2048", "64x512")
TRAIN_STEPS = ("plain step", "+head step (contrast warm-up)", "full COARSE3D step")
SERVE_STEPS = ("evaluation step", "inference")
EXPECTED_ROWS = (
    {("SalsaNext", s, b, d, t) for s, b, d, t in itertools.product(
        SIZES, (4, 8, 16), ("float32", "bfloat16"), TRAIN_STEPS)}
    | {("SalsaNext", s, b, d, t) for s, b, d, t in itertools.product(
        SIZES, (1, 16), ("float32", "bfloat16"), SERVE_STEPS)}
    | {(m, s, 4, d, t) for m, s, d, t in itertools.product(
        ("RangeNet-21", "SqueezeSegV3-21"), SIZES, ("float32", "bfloat16"),
        TRAIN_STEPS + SERVE_STEPS)})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """A --quick run at a tiny size on the 4 simulated CPU devices: SalsaNext's full step and
  inference at 1 scan per device; torch is absent here. The check compiles two more train
  steps, too slow for a test: its loop is tested on small programs below."""
  output = tmp_path_factory.mktemp("gpu_check") / "gpu.json"
  report = gpu_check.main([
      "--quick", "--sizes", "16x64", "--batches", "1", "--serve-batches", "1",
      "--models", "salsanext", "--rows", "coarse3d,inference", "--no-check",
      "--row-seconds", "0.05", "--budget-s", "900", "--output", str(output)])
  return report, output


def _listed(report) -> dict:
  return {(r["model"], r["input"], r["batch"], r["dtype"], r["step"]): r for r in report["rows"]}


def test_the_table_lists_every_row_with_figures_only_where_measured(quick_run):
  report, _ = quick_run
  listed = _listed(report)
  assert EXPECTED_ROWS <= set(listed)
  assert all(listed[k].get("ms") is None and listed[k]["note"] for k in EXPECTED_ROWS)
  steps = {r["step"] for r in report["rows"] if r["model"] == "SalsaNext, PyTorch reference"}
  assert {"plain step", "full COARSE3D step (as its trainer runs it)"} <= steps
  assert [r["step"] for r in report["rows"][:2]] == [
      "check: device vs CPU, loss and gradient norm", "check: bank unit norm"]
  table = gpu_check.format_table(report).splitlines()
  assert len([line for line in table if line.startswith("| ")]) == 1 + len(report["rows"])
  empty_row = "| RangeNet-21 | 64x2048 | 4 | bfloat16 | inference | — | — | — | — |"
  assert empty_row in "\n".join(table)
  assert report["device"]["platform"] == "cpu" and "cpu" in table[0]


def test_measured_rows_agree_with_their_own_timing(quick_run):
  report, _ = quick_run
  listed = _listed(report)
  for step in ("full COARSE3D step", "inference"):
    row = listed[("SalsaNext", "16x64", 1, "float32", step)]
    assert row["ms"] > 0 and row["steps_timed"] >= 3, row
    # 1 scan per device on 4 devices: 4 scans per step.
    assert row["scans_per_s"] == pytest.approx(4 / (row["ms"] / 1e3))
    assert row["tflops"] == pytest.approx(row["gflop_per_step"] / row["ms"])
    assert row["peak_fraction"] is None  # No peak is known for a CPU.
    assert "model width 0.125" in row["note"]


def test_reference_rows_say_why_they_are_empty(quick_run):
  report, _ = quick_run
  reference = [r for r in report["rows"] if "PyTorch reference" in r["model"]]
  assert len(reference) == 3
  assert all(r.get("ms") is None and r["note"].startswith("n/a (") for r in reference)


def test_check_rows_say_why_they_are_empty(quick_run):
  report, _ = quick_run
  assert [r["note"] for r in report["rows"][:2]] == ["not run (--no-check)"] * 2


@flax.struct.dataclass
class _State:
  params: jax.Array
  bank: jax.Array


def _program(mesh, update_offset: float, loss_scale: float = 1.0) -> gpu_check.Program:
  """A stand-in train Program: loss = scale * sum(params), params <- 2 params + offset."""
  replicated = NamedSharding(mesh, P())

  def step(state, batch):
    loss = loss_scale * state.params.sum() + 0.0 * batch["x"].sum()
    logged = {"loss": loss, "grad_norm": loss_scale * np.sqrt(state.params.size)}
    return state.replace(params=2 * state.params + update_offset), logged

  def init(key):
    del key
    return jax.device_put(_State(params=np.ones(3, np.float32),
                                 bank=np.full((2, 1, 4), 0.5, np.float32)), replicated)
  return gpu_check.Program(fn=jax.jit(step, donate_argnums=(0,)), init=init,
                           inputs={"x": np.ones((1, 2), np.float32)}, flops=float("nan"),
                           kind="train", mesh=mesh, global_batch=1)


def test_check_steps_compare_each_step_from_the_devices_state():
  devices = jax.devices("cpu")
  one = lambda d: jax.sharding.Mesh(np.asarray([d]), ("data",))
  # The updates differ (+1 on the device): run freely the losses would part (6 vs 5, ...),
  # but every CPU step starts from the device's state, so every loss agrees.
  run = gpu_check.check_steps(_program(one(devices[0]), 1.0), _program(one(devices[3]), 0.0), 3)
  np.testing.assert_array_equal(run["device_losses"], [3.0, 9.0, 21.0])
  np.testing.assert_array_equal(run["cpu_losses"], run["device_losses"])
  losses, bank = gpu_check.check_verdicts(run)
  assert losses["pass"] and losses["max_abs_diff"] == 0.0
  assert bank["pass"] and bank["max_abs_diff"] == 0.0  # 4 x 0.5^2 = 1.
  # A loss computed differently on the CPU fails the check.
  run = gpu_check.check_steps(_program(one(devices[0]), 0.0),
                              _program(one(devices[3]), 0.0, loss_scale=1.001), 2)
  assert not gpu_check.check_verdicts(run)[0]["pass"]
  # The device is the CPU: its run stands for both.
  run = gpu_check.check_steps(_program(one(devices[0]), 0.0), None, 2)
  np.testing.assert_array_equal(run["cpu_losses"], run["device_losses"])
  assert "the device is the CPU" in gpu_check.check_verdicts(run)[0]["note"]


def test_start_carries_the_train_state_between_steps():
  program = _program(jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)), 0.0)
  step = gpu_check.start(program)
  assert [float(step()["loss"]) for _ in range(3)] == [3.0, 6.0, 12.0]


def test_report_round_trips_through_json(quick_run):
  report, output = quick_run
  loaded = json.loads(output.read_text())
  assert loaded == json.loads(json.dumps(report))
  assert gpu_check.format_table(loaded) == gpu_check.format_table(report)


def test_compare_passes_identical_values_and_fails_a_hand_made_difference():
  same = gpu_check.compare([2.5, 2.4, 2.3], [2.5, 2.4, 2.3], rtol=1e-4, atol=1e-6)
  assert same == {"pass": True, "max_abs_diff": 0.0, "max_rel_diff": 0.0}
  # The bound at 2.4 is 1e-6 + 1e-4 * 2.4 = 2.41e-4: 2.4002 is within it, 2.4003 is not.
  assert gpu_check.compare([2.5, 2.4002], [2.5, 2.4], rtol=1e-4, atol=1e-6)["pass"]
  off = gpu_check.compare([2.5, 2.4003], [2.5, 2.4], rtol=1e-4, atol=1e-6)
  assert not off["pass"] and off["max_abs_diff"] == pytest.approx(3e-4)
  assert off["max_rel_diff"] == pytest.approx(3e-4 / 2.4)
  assert not gpu_check.compare([1.0, np.nan], [1.0, 1.0], rtol=1.0)["pass"]
  assert not gpu_check.compare([1.0], [1.0, 1.0], rtol=1.0)["pass"]


def _run(device_losses, cpu_losses, device_norms, cpu_norms, bank):
  return {"device_losses": np.asarray(device_losses), "cpu_losses": np.asarray(cpu_losses),
          "device_grad_norms": np.asarray(device_norms),
          "cpu_grad_norms": np.asarray(cpu_norms), "bank": np.asarray(bank)}


def test_check_verdicts_fail_on_loss_gradient_norm_or_bank_norm():
  bank = np.random.default_rng(0).normal(size=(3, 4, 8))
  bank /= np.linalg.norm(bank, axis=-1, keepdims=True)
  good = gpu_check.check_verdicts(_run([2.0, 1.9], [2.0, 1.9], [5.0, 4.0], [5.0, 4.0], bank))
  assert good[0]["pass"] and good[1]["pass"] and good[0]["note"].startswith("PASS")
  # Gradient norms may differ by up to 1% (discontinuous gradients), losses by 1e-4.
  close = gpu_check.check_verdicts(_run([2.0, 1.9], [2.0, 1.9], [5.0, 4.03], [5.0, 4.0], bank))
  assert close[0]["pass"]
  loss_off = gpu_check.check_verdicts(_run([2.0, 1.901], [2.0, 1.9], [5.0, 4.0], [5.0, 4.0],
                                           bank))
  assert not loss_off[0]["pass"] and loss_off[0]["note"].startswith("FAIL")
  norm_off = gpu_check.check_verdicts(_run([2.0, 1.9], [2.0, 1.9], [5.0, 4.1], [5.0, 4.0], bank))
  assert not norm_off[0]["pass"]
  stretched = bank.copy()
  stretched[1, 2] *= 1.5
  assert not gpu_check.check_verdicts(_run([2.0], [2.0], [5.0], [5.0], stretched))[1]["pass"]


def test_bank_norm_error_is_the_largest_deviation_from_unit_norm():
  bank = np.zeros((2, 3, 4))
  bank[..., 0] = 1.0
  bank[1, 1] = [0.0, 3.0, 4.0, 0.0]  # norm 5
  assert gpu_check.bank_norm_error(bank) == pytest.approx(4.0)
  bank[1, 1] = [0.0, 0.6, 0.8, 0.0]
  assert gpu_check.bank_norm_error(bank) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("kind,bf16,fp32", [
    ("NVIDIA H100 80GB HBM3", 989.4, 66.9), ("NVIDIA H100 PCIe", 756.5, 51.2),
    ("NVIDIA H200", 989.4, 66.9), ("NVIDIA A100-SXM4-40GB", 312.0, 19.5),
    ("NVIDIA L4", 121.0, 30.3), ("TPU v4", 275.0, None), ("TPU v5 lite", 197.0, None),
    ("TPU v5p", 459.0, None), ("TPU v6 lite", 918.0, None)])
def test_peak_table(kind, bf16, fp32):
  assert gpu_check.peak_tflops(kind) == {"bfloat16": bf16, "float32": fp32}


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA L40S", "Tesla T4"])
def test_unknown_devices_have_no_peak(kind):
  assert gpu_check.peak_tflops(kind) is None


def test_compile_all_keeps_order_reports_failures_and_stops_at_the_budget():
  def job(key, seconds, reserve=0.0, fail=False, kind="train"):
    def make():
      time.sleep(seconds)
      if fail:
        raise ValueError("boom\nsecond line")
      return key.upper()
    return gpu_check.Job(key, make, reserve, kind)

  end = time.monotonic() + 0.5
  out = gpu_check.compile_all(
      [job("a", 0.2), job("b", 0.0, fail=True), job("c", 0.2), job("d", 0.2),
       job("e", 0.0, kind="inference"), job("f", 0.0)],
      threads=1, end=end, log=lambda _: None)
  assert (out["a"], out["b"]) == ("A", "failed to compile: ValueError: boom")
  # After a and c (0.2 s each), another 0.2 s train compilation would pass the end: skipped;
  # a kind with no compilation so far (e) is still tried.
  assert (out["c"], out["e"]) == ("C", "E")
  assert out["d"] == out["f"] == "skipped: time budget (not compiled)"
  # The reserve of what is compiled counts: with 1 s per job timed, only the first starts.
  out = gpu_check.compile_all([job("x", 0.0, 1.0), job("y", 0.0, 1.0)], threads=2,
                              end=time.monotonic() + 1.5, log=lambda _: None)
  assert out == {"x": "X", "y": "skipped: time budget (not compiled)"}


def test_measure_times_enough_steps_and_respects_the_deadline():
  calls = []

  def step():
    calls.append(time.perf_counter())
    time.sleep(0.01)
    return np.zeros(1)

  seconds, n = gpu_check.measure(step, target_s=0.1, deadline=time.monotonic() + 60)
  assert 5 <= n <= 10 and len(calls) == 2 + 1 + n
  assert 0.009 < seconds < 0.05
  calls.clear()
  _, n = gpu_check.measure(step, target_s=10.0, deadline=time.monotonic() - 1)
  assert n == 1 and len(calls) == 4


def test_quick_plan_and_bad_flags():
  args = gpu_check.parse_args(["--quick"])
  gpu_check.resolve(args, "gpu")
  rows = gpu_check.plan(args)
  assert {(r.height, r.width, r.dtype) for r in rows} == {
      (64, 512, "float32"), (64, 512, "bfloat16")}
  assert {r.batch for r in rows if r.model == "salsanext" and r.step == "coarse3d"} == {4}
  assert rows[0] == gpu_check.Row("salsanext", 64, 512, 4, "float32", "plain")
  tpu = gpu_check.parse_args([])
  gpu_check.resolve(tpu, "tpu")
  assert tpu.dtypes == ["bfloat16", "float32"] and tpu.sizes == [(64, 2048), (64, 512)]
  with pytest.raises(SystemExit):
    gpu_check.parse_args(["--sizes", "64by512"])
  with pytest.raises(SystemExit):
    gpu_check.parse_args(["--rows", "plain,bogus"])
