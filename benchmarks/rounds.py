"""Timing rounds shared by our benchmarks and the PyTorch reference's process (no jax here)."""
import time


def timed_round(steps: dict):
  """A callable running each no-argument step once, returning {name: seconds}.

  Each call starts one step later in the order: the first step after another program's turn
  ran up to ~25% slower here (measured, whichever step it was), so rotating spreads that over
  all rows, where the medians ignore it, instead of charging it to one row.
  """
  names = list(steps)
  calls = [0]

  def run() -> dict[str, float]:
    out = {}
    start_at = calls[0] % len(names)
    calls[0] += 1
    for name in names[start_at:] + names[:start_at]:
      start = time.perf_counter()
      steps[name]()
      out[name] = time.perf_counter() - start
    return {name: out[name] for name in names}
  return run


def time_interleaved(rounds_of: list, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
  """Seconds per call of every step, the groups of `rounds_of` (`timed_round`s) taking turns.

  On a shared machine whose speed drifts by tens of percent over minutes, timing the rows one
  after the other compares different machines; interleaving exposes every row to the same
  drift, so their ratios (the figures that matter) are stable.
  """
  times: dict[str, list[float]] = {}
  for i in range(warmup + rounds):
    for run in rounds_of:
      for name, seconds in run().items():
        if i >= warmup:
          times.setdefault(name, []).append(seconds)
  return times
