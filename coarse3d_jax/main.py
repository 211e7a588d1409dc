"""Entry point: python -m coarse3d_jax.main --config configs/<x>.py --workdir DIR [--mode ...]."""
if __name__ == "__main__":  # Before the heavy imports below, which a re-execution repeats.
  from coarse3d_jax import host_memory
  host_memory.reexec_with_tunables()

import logging as py_logging  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and evaluate), or only evaluate.")
flags.DEFINE_string("checkpoint", "latest", "With --mode eval: latest, best or a step number.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO lines of orbax and tfds (dozens per checkpoint / dataset); keeps warnings."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "tensorflow_datasets"))
    return record.levelno >= py_logging.WARNING or not noisy


def main(argv):
  del argv
  logging.get_absl_logger().addFilter(_LibraryInfoFilter())
  from coarse3d_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except distributed.LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from coarse3d_jax import train  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", FLAGS.config)
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
  except (train.TrainingError, checkpoints.CheckpointError, input_pipeline.InputError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)
