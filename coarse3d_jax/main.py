"""Training and evaluation: python -m coarse3d_jax.main --config configs/<x>.py --workdir DIR.

Trains (resuming from the latest checkpoint in DIR) and evaluates on the config's eval split;
`--mode eval` only evaluates a saved checkpoint. Config fields are overridden on the command line
as `--config.a.b=value`.
"""
from coarse3d_jax import startup  # isort: skip  # First: it sets log levels.

from absl import flags
from absl import logging
from ml_collections import config_flags


def define_flags(fv: flags.FlagValues, argv) -> None:
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.",
                      flag_values=fv)
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and evaluate), or only evaluate.",
                    flag_values=fv)
  flags.DEFINE_string("checkpoint", "latest", "With --mode eval: latest, best or a step number.",
                      flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def main(fv: flags.FlagValues) -> None:
  from coarse3d_jax import train  # pylint: disable=g-import-not-at-top  # After start-up.
  logging.info("Config:\n%s", fv.config)
  if fv.mode == "train":
    train.train_and_evaluate(fv.config, fv.workdir)
  else:
    checkpoint = int(fv.checkpoint) if fv.checkpoint.isdigit() else fv.checkpoint
    train.evaluate_checkpoint(fv.config, fv.workdir, checkpoint)


def _errors() -> tuple[type[BaseException], ...]:
  from coarse3d_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import train  # pylint: disable=g-import-not-at-top
  return (train.TrainingError, checkpoints.CheckpointError, input_pipeline.InputError)


if __name__ == "__main__":
  startup.main_entry(startup.Program("coarse3d_jax.main", __doc__, define_flags, main,
                                     _errors(), multi_process=True))
