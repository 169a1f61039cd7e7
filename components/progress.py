"""Progress lines a person can follow, beside the Beam and TFX logs."""
import sys
import time

_START = time.monotonic()


def report(stage: str, message: str) -> None:
  """Prints `[recsys hh:mm:ss] stage: message` to stderr at once."""
  elapsed = int(time.monotonic() - _START)
  stamp = f"{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
  print(f"[recsys {stamp}] {stage}: {message}", file=sys.stderr, flush=True)
