"""A stand-in for Beam's SDK harness in tests of engines/warm_sdk_workers.py: it
prints what it was given, then waits or exits as its flags say."""
import os
import sys
import time
from typing import List


def run(argv: List[str]) -> None:
  print(f"probe pid={os.getpid()} parent={os.getppid()} cwd={os.getcwd()} "
        f"argv={' '.join(argv)} "
        f"marker={os.environ.get('PROBE_MARKER', '')}", flush=True)
  print("probe to stderr", file=sys.stderr, flush=True)
  for arg in argv:
    if arg.startswith("--sleep="):
      time.sleep(float(arg.split("=", 1)[1]))
    if arg.startswith("--exit="):
      sys.exit(int(arg.split("=", 1)[1]))
