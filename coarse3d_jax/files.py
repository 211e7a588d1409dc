"""Atomic file writes: a file is either absent, or complete and under its final name."""
from collections.abc import Iterator
import contextlib
import json
import os
import pathlib
import shutil
import tempfile


def _current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# mkstemp creates 0600 files; finished files get the usual permissions (0666 minus umask).
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A temporary file next to `path` to write; renamed over `path` when the block completes,
  removed if it raises, so `path` is never seen half-written."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write(path: str | os.PathLike, data: bytes) -> pathlib.Path:
  """Writes `data` to a temporary file next to `path`, then renames it over `path`."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
  return pathlib.Path(path)


def atomic_write_json(path: str | os.PathLike, obj, **dump_kwargs) -> pathlib.Path:
  """`json.dumps(obj, **dump_kwargs)` plus a newline, written with `atomic_write`."""
  return atomic_write(path, (json.dumps(obj, **dump_kwargs) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A temporary directory next to `path` to fill; it takes the place of `path` (a previous
  directory there is removed) when the block completes, and is removed if the block raises, so
  `path` is never seen half-written. The caller decides whether an existing `path` may go."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_current_umask())
    if path.exists():
      old = tmp.with_name(tmp.name + ".old")
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
