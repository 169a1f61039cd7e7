"""One run at a time per output folder: an exclusive lock on `<output_dir>/.run.lock`.

Two LocalDagRunner processes writing the same ML Metadata store and component
folders would interleave their executions and could corrupt the store. The lock is
an `fcntl.flock` held by the open file for the whole run, so the operating system
releases it when the process ends in any way (a finished run, an exception,
SIGINT, SIGKILL): a killed run never leaves a stale lock behind, and the file
itself may stay. It holds the owner's pid and start time, for the message the
second run gives. It lives beside `tfx/` and `metadata.sqlite`, never inside
what TFX writes.
"""
import contextlib
import datetime
import fcntl
import os
from typing import Iterator

from common import errors

LOCK_FILE = ".run.lock"


class RunLockedError(errors.RecsysError):
  """Another run is using the output folder."""


def lock_path(output_dir: str) -> str:
  return os.path.join(output_dir, LOCK_FILE)


def _owner(fd: int) -> str:
  """What the current holder wrote into the lock file, e.g. 'pid 123, started ...'."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()
  except OSError:
    return ""


@contextlib.contextmanager
def hold(output_dir: str) -> Iterator[None]:
  """Holds the output folder's run lock; RunLockedError if another run holds it.

  `output_dir` must exist.
  """
  path = lock_path(output_dir)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _owner(fd) or "owner unknown"
      raise RunLockedError(
          f"{output_dir} is in use by another run ({owner}); wait for it to finish, "
          "or pass another --output-dir") from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
    try:
      yield
    finally:
      # Emptied before the unlock so that the next owner never shows a stale pid.
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
