"""Progress lines a person can follow, beside the Beam and TFX logs."""
import contextlib
import sys
import time
from typing import Iterator, Optional, TextIO

_START = time.monotonic()
# Where the lines go while a run sends everything else to its log (None: stderr).
_console: Optional[TextIO] = None


def report(stage: str, message: str) -> None:
  """Prints `[recsys hh:mm:ss] stage: message` to the console at once."""
  elapsed = int(time.monotonic() - _START)
  stamp = f"{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
  print(f"[recsys {stamp}] {stage}: {message}", file=_console or sys.stderr, flush=True)


@contextlib.contextmanager
def printing_to(console: TextIO) -> Iterator[None]:
  """Progress lines go to `console` inside the block, whatever stderr then is."""
  global _console
  saved, _console = _console, console
  try:
    yield
  finally:
    _console = saved
