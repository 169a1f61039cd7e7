"""Checks before a run starts its components: folders writable, enough free disk.

A full disk or a read-only folder found by a component an hour in would fail that
component and waste the hour; here it is one clear line before anything runs or
is registered in ML Metadata.
"""
import os
import shutil

from common import errors

_GB = 1024 ** 3


class PreflightError(errors.RecsysError):
  """The run cannot start: a folder it writes is unusable, or the disk is too full."""


def ensure_writable_folder(folder: str, what: str) -> None:
  """Creates `folder` if needed and writes and removes a probe file in it."""
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise PreflightError(f"cannot create the {what} {folder}: "
                         f"{e.strerror or e}") from None
  if not os.path.isdir(folder):
    raise PreflightError(f"the {what} {folder} is not a folder")
  probe = os.path.join(folder, f".write-probe-{os.getpid()}")
  try:
    with open(probe, "wb") as f:
      f.write(b"probe")
    os.remove(probe)
  except OSError as e:
    raise PreflightError(f"cannot write in the {what} {folder}: "
                         f"{e.strerror or e}") from None


def ensure_free_space(folder: str, min_free_gb: float) -> None:
  """PreflightError unless the file system of `folder` has `min_free_gb` free."""
  free = shutil.disk_usage(folder).free
  if free < min_free_gb * _GB:
    raise PreflightError(
        f"not enough free disk space for {folder}: {free / _GB:.2f} GB free, "
        f"a run needs at least {min_free_gb:g} GB; free some space, or set the "
        "minimum with --min-free-gb")
