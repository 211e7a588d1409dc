"""Orbax checkpoints of the whole train state: the latest few, plus the best by mIoU.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoint intact. The run's config is saved beside the
checkpoints; a rerun with an incompatible config is refused rather than silently mixing.
"""
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from coarse3d_jax import files

# Config entries that change the shapes or meaning of the saved state.
STRUCTURAL_KEYS = ("dataset", "model.name", "model.width", "model.embed_dim",
                   "contrast.sub_prototypes", "contrast.enabled", "contrast.memory")
# Structural keys added after workdirs were written: a saved config without one had this value.
_ADDED_DEFAULTS = {"contrast.memory": "prototypes"}


class CheckpointError(RuntimeError):
  """A workdir or checkpoint that cannot be used."""


def _lookup(config: dict[str, Any], dotted: str) -> Any:
  for part in dotted.split("."):
    config = config.get(part, {}) if isinstance(config, dict) else None
  return config


def _structure(config: dict[str, Any]) -> dict[str, Any]:
  """The entries of a (JSON) config that shape the saved state; the pixel memory's size only
  where the bank is a pixel memory (contrast.memory='pixels')."""
  values = {k: _lookup(config, k) for k in STRUCTURAL_KEYS}
  for key, default in _ADDED_DEFAULTS.items():
    if values[key] == {}:
      values[key] = default
  if values["contrast.memory"] == "pixels":
    values["contrast.pixel_memory_size"] = _lookup(config, "contrast.pixel_memory_size")
  return values


def check_or_save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Saves config.json in a fresh workdir; refuses a workdir trained with another structure."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = _structure(json.load(f))
    now = _structure(current)
    diffs = [f"{k}: saved {saved.get(k)!r} != now {now.get(k)!r}"
             for k in dict.fromkeys([*saved, *now]) if saved.get(k) != now.get(k)]
    if diffs:
      raise CheckpointError(
          f"{workdir}: holds a run with an incompatible config ({'; '.join(diffs)}); "
          "use a new --workdir or the original config")
  os.makedirs(workdir, exist_ok=True)
  files.atomic_write_json(path, current, indent=2, sort_keys=True)


def load_saved_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: missing; is {workdir} a coarse3d_jax training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class Checkpoints:
  """`latest/` keeps the newest `keep` steps; `best/` keeps the step with the highest mIoU."""

  def __init__(self, workdir: str, keep: int = 3):
    workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints", "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints", "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["miou"], best_mode="max"))

  def save(self, step: int, state) -> None:
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))
      self.latest.wait_until_finished()

  def save_if_best(self, step: int, state, miou: float) -> None:
    self.best.save(step, args=ocp.args.StandardSave(state), metrics={"miou": float(miou)})
    self.best.wait_until_finished()

  def restore(self, state, which: str | int = "latest"):
    """Restores into the structure (and shardings) of `state`; None if nothing is saved."""
    manager, step = self._resolve(which)
    if step is None:
      return None
    return manager.restore(step, args=ocp.args.StandardRestore(state))

  def restore_variables(self, which: str | int, sharding) -> tuple[dict, int] | None:
    """({'params', 'batch_stats'}, step) of a saved train state, placed with `sharding`;
    None if nothing is saved. The optimizer state and the bank are not read."""
    manager, step = self._resolve(which)
    if step is None:
      return None
    saved = ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / "default")
    wanted = {k: saved[k] for k in ("params", "batch_stats", "step")}
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), wanted)
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    return {k: restored[k] for k in ("params", "batch_stats")}, int(restored["step"])

  def _resolve(self, which: str | int):
    if which == "latest":
      return self.latest, self.latest.latest_step()
    if which == "best":
      return self.best, self.best.best_step()
    step = int(which)
    for manager in (self.latest, self.best):
      if step in manager.all_steps():
        return manager, step
    raise CheckpointError(f"no checkpoint at step {step} (have {self.all_steps()})")

  def all_steps(self) -> list[int]:
    return sorted(set(self.latest.all_steps()) | set(self.best.all_steps()))

  def close(self) -> None:
    self.latest.close()
    self.best.close()
