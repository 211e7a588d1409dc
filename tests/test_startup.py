"""The one start-up of every command-line program: flags, exit codes, errors, cache directory."""
import logging
import subprocess
import sys

from absl import flags
import pytest

from coarse3d_jax import startup


class BadInput(Exception):
  pass


def _program(seen: list, raise_error: Exception | None = None) -> startup.Program:
  def define(fv, argv):
    del argv
    flags.DEFINE_string("raw_dir", None, "Dataset root.", flag_values=fv)
    flags.DEFINE_bool("knn", False, "KNN.", flag_values=fv)
    flags.mark_flag_as_required("raw_dir", flag_values=fv)

  def main(fv):
    seen.append((fv.raw_dir, fv.knn))
    if raise_error is not None:
      raise raise_error

  return startup.Program("prog", "A test program.", define, main, (BadInput,))


def test_flags_parse_fresh_on_every_run(capsys):
  seen = []
  program = _program(seen)
  assert startup.run(program, ["prog", "--raw_dir=a", "--knn", "--compilation_cache="]) == 0
  assert startup.run(program, ["prog", "--raw_dir", "b", "--compilation_cache="]) == 0
  assert seen == [("a", True), ("b", False)]  # --knn of the first run does not leak.


@pytest.mark.parametrize("argv", [["prog"], ["prog", "--raw_dir=a", "--bogus=1"],
                                  ["prog", "--raw_dir=a", "--knn=maybe"]])
def test_bad_arguments_exit_2_with_one_error_line(capsys, argv):
  seen = []
  assert startup.run(_program(seen), argv) == startup.EXIT_USAGE
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "--help" in err and not seen


def test_expected_errors_exit_1_with_one_line_and_others_propagate(capsys):
  assert startup.run(_program([], BadInput("x.bin: size 7 is not a multiple of 16")),
                     ["prog", "--raw_dir=a", "--compilation_cache="]) == startup.EXIT_FAILED
  assert capsys.readouterr().err == "error: x.bin: size 7 is not a multiple of 16\n"
  with pytest.raises(RuntimeError):  # A bug is not turned into a polite message.
    startup.run(_program([], RuntimeError("bug")), ["prog", "--raw_dir=a"])


def test_help_lists_the_programs_own_flags_and_runs_nothing(capsys):
  seen = []
  assert startup.run(_program(seen), ["prog", "--help"]) == 0
  out = capsys.readouterr().out
  assert "usage: python -m prog" in out and "--raw_dir" in out and "--[no]verbose" in out
  assert "--flagfile" not in out and not seen


def test_usage_error_from_the_program_exits_2(capsys):
  program = _program([], startup.UsageError("--split names repeat: val, val"))
  assert startup.run(program, ["prog", "--raw_dir=a", "--compilation_cache="]) == 2
  assert capsys.readouterr().err == "error: --split names repeat: val, val\n"


def test_cache_directory_resolution(monkeypatch, tmp_path):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv(startup.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert startup.cache_directory(None) == str(tmp_path / "coarse3d_jax" / "jax")
  monkeypatch.setenv(startup.CACHE_ENV, "/env/cache")
  assert startup.cache_directory(None) == "/env/cache"
  assert startup.cache_directory("/flag/cache") == "/flag/cache"
  assert startup.cache_directory("") is None  # Turned off.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/own")
  assert startup.cache_directory(None) is None  # JAX's own variable stays in charge.
  assert startup.cache_directory("/flag/cache") == "/flag/cache"


def test_entry_points_answer_help_and_bad_flags(capsys):
  from coarse3d_jax import evaluate  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import predict  # pylint: disable=g-import-not-at-top
  from data_prep import __main__ as data_prep_cli  # pylint: disable=g-import-not-at-top
  for name, main in (("predict", predict.main), ("evaluate", evaluate.main),
                     ("data_prep", data_prep_cli.main)):
    assert main(["--help"]) == 0 and "usage: python -m" in capsys.readouterr().out, name
    assert main(["--no_such_flag=1"]) == startup.EXIT_USAGE, name
    assert capsys.readouterr().err.startswith("error: "), name
  # The training entry point as a user runs it: its own process, library notices hidden.
  ok = subprocess.run([sys.executable, "-m", "coarse3d_jax.main", "--help"], capture_output=True,
                      text=True, timeout=120)
  assert ok.returncode == 0 and "usage: python -m coarse3d_jax.main" in ok.stdout, ok.stderr
  assert "--config" in ok.stdout and "oneDNN" not in ok.stderr
  bad = subprocess.run([sys.executable, "-m", "coarse3d_jax.main", "--workdir=w"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr


@pytest.mark.parametrize("path,level,message,kept", [
    ("/x/tensorflow_datasets/core/features/feature.py", logging.WARNING,
     "`FeatureConnector.dtype` is deprecated. Please change your code", False),
    ("/x/tensorflow_datasets/core/reader.py", logging.WARNING, "shard 3 is missing", True),
    ("/x/orbax/checkpoint/manager.py", logging.INFO, "Saving checkpoint at step 3", False),
    ("/x/coarse3d_jax/train.py", logging.INFO, "Resuming w from step 3", True),
])
def test_library_filter_hides_noise_and_keeps_warnings(path, level, message, kept):
  record = logging.LogRecord("absl", level, path, 1, message, None, None)
  assert startup._LibraryInfoFilter().filter(record) is kept  # pylint: disable=protected-access
