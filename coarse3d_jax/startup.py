"""The one start-up every command-line program of the project shares.

`run(program, argv)` parses the program's absl flags (its own `FlagValues`, so several programs
can live in one process, as in the tests), quiets library start-up noise unless `--verbose`,
turns on JAX's persistent compilation cache, joins a multi-process run when asked to, calls the
program and turns its errors into one `error: ...` line and an exit status: 0 done, 1 bad input
or a failed run, 2 bad arguments, 130 interrupted.

Entry points import this module first: the TensorFlow log level below only takes effect when
it is set before TensorFlow is imported.
"""
from collections.abc import Callable, Sequence
import dataclasses
import logging as py_logging
import os
import sys
from typing import Any
import warnings

from absl import flags
from absl import logging

if "--verbose" not in sys.argv:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's CUDA and device notices.
  # TensorFlow only decodes records here (no TF math), so its oneDNN kernels never run; turning
  # them off also drops the notice it prints about them on import.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CACHE_ENV = "COARSE3D_COMPILATION_CACHE"
# INFO lines of these libraries (dozens per checkpoint, dataset or SavedModel) are hidden unless
# --verbose.
_NOISY_LIBRARIES = ("orbax", "tensorflow_datasets", "tensorflow")
# Loggers whose start-up messages say nothing to a user (e.g. the TPU probe on a CPU machine).
_NOISY_LOGGERS = ("jax._src.xla_bridge", "absl.flags")


class UsageError(Exception):
  """Flags that do not fit together (exit status 2)."""


@dataclasses.dataclass
class Program:
  """A command-line program: its name, help text, flags, body and the errors it expects.

  `define_flags(flag_values, argv)` adds the program's own flags to a fresh flag set (each run
  parses a new one, so no value leaks from one run to the next); `main(flag_values)` runs the
  program (an int it returns is the exit status); an exception in `errors` is bad input or a failed run, reported as one line.
  """
  name: str
  doc: str
  define_flags: Callable[[flags.FlagValues, Sequence[str]], None]
  main: Callable[[flags.FlagValues], object]
  errors: tuple[type[BaseException], ...] = ()
  multi_process: bool = False
  log: Any = None  # Where errors go; default sys.stderr at the time of the run.


def new_flags(multi_process: bool = False) -> flags.FlagValues:
  """A fresh flag set holding the flags every program has."""
  fv = flags.FlagValues()
  flags.DEFINE_bool("help", False, "Show this help and exit.", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "Show the libraries' start-up and INFO messages too.",
                    flag_values=fv)
  flags.DEFINE_string(
      "compilation_cache", None,
      f"JAX persistent compilation cache directory ('' turns it off). Default: ${CACHE_ENV}, "
      "else ~/.cache/coarse3d_jax/jax.", flag_values=fv)
  if multi_process:
    flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.",
                         flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.",
                         flag_values=fv)
  return fv


def help_text(program: Program, fv: flags.FlagValues) -> str:
  own = fv.get_help(include_special_flags=False)
  return f"usage: python -m {program.name} [flags]\n\n{program.doc.strip()}\n\nflags:\n{own}"


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO lines and deprecation notices logged from inside the noisy libraries; keeps
  their other warnings."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in _NOISY_LIBRARIES)
    if not noisy:
      return True
    # TFDS warns that its own FeatureConnector.dtype is deprecated, once per feature and load.
    deprecation = "is deprecated" in str(record.msg)
    return record.levelno >= py_logging.WARNING and not deprecation


def quiet_libraries() -> None:
  """Hides library notices that precede every run and that a user cannot act on."""
  logging.get_absl_logger().addFilter(_LibraryInfoFilter())
  py_logging.getLogger("tensorflow").addFilter(_LibraryInfoFilter())  # TF's own logger too.
  for name in _NOISY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.ERROR)
  # TFDS's own FeatureConnector.dtype deprecation, raised from inside TFDS on every load.
  warnings.filterwarnings("ignore", category=DeprecationWarning, module="tensorflow_datasets")
  warnings.filterwarnings("ignore", message=".*dtype.*deprecated.*")


def cache_directory(flag_value: str | None) -> str | None:
  """The compilation cache directory: the flag, else $COARSE3D_COMPILATION_CACHE, else the
  user's cache folder; None when turned off ('') or when JAX's own variable already says."""
  if flag_value is None and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  value = flag_value if flag_value is not None else os.environ.get(CACHE_ENV)
  if value is None:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    value = os.path.join(root, "coarse3d_jax", "jax")
  return value or None


def enable_compilation_cache(flag_value: str | None) -> None:
  """A resumed run, an evaluation or a predict of the same shapes loads its programs from disk
  instead of compiling them again (benchmarks/README.md measures the saving)."""
  directory = cache_directory(flag_value)
  if directory is None:
    return
  import jax  # pylint: disable=g-import-not-at-top  # Programs without JAX never get here.
  jax.config.update("jax_compilation_cache_dir", directory)


def _parse(program: Program, fv: flags.FlagValues, argv: Sequence[str]) -> int | None:
  """Parses argv into the program's flags; an exit status when the program must not run."""
  if {"--help", "-h", "--helpfull"} & set(argv[1:]):  # Before required flags are checked.
    print(help_text(program, fv))
    return EXIT_OK
  try:
    fv(list(argv))
  except (flags.Error, AttributeError, KeyError, ValueError) as e:
    # AttributeError / KeyError: an override of a config field that does not exist.
    print(f"error: {e}\n(python -m {program.name} --help lists the flags)",
          file=program.log or sys.stderr)
    return EXIT_USAGE
  return None


def _start(program: Program, fv: flags.FlagValues) -> None:
  if not flags.FLAGS.is_parsed():  # absl's global flags (logging verbosity) take defaults.
    flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  if not fv.verbose:
    quiet_libraries()
  if program.multi_process:
    from coarse3d_jax import distributed  # pylint: disable=g-import-not-at-top
    try:
      distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
    except distributed.LaunchError as e:
      raise UsageError(str(e)) from e
  enable_compilation_cache(fv.compilation_cache)


def run(program: Program, argv: Sequence[str] | None = None) -> int:
  """Parses flags, starts up and runs `program`; returns its exit status.

  Args:
    program: what to run.
    argv: the command line, program name first; default sys.argv.
  """
  argv = list(sys.argv if argv is None else argv)
  fv = new_flags(program.multi_process)
  program.define_flags(fv, argv)
  status = _parse(program, fv, argv)
  if status is not None:
    return status
  try:
    _start(program, fv)
    status = program.main(fv)
  except UsageError as e:
    print(f"error: {e}", file=program.log or sys.stderr)
    return EXIT_USAGE
  except program.errors as e:
    print(f"error: {e}", file=program.log or sys.stderr)
    return EXIT_FAILED
  except KeyboardInterrupt:
    print("interrupted", file=program.log or sys.stderr)
    return EXIT_INTERRUPTED
  return status if isinstance(status, int) else EXIT_OK


def main_entry(program: Program) -> None:
  """`if __name__ == "__main__": startup.main_entry(PROGRAM)` in every entry point."""
  sys.exit(run(program))
