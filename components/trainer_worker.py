"""One worker process of a multi-worker Trainer: `python -m components.trainer_worker
EXECUTION_FILE PARENT_PID`, started by components/multi_worker_trainer.py.

Kept apart from that module so that the worker is tied to the pipeline's process
before it spends its first seconds importing TFX and TensorFlow.
"""
import ctypes
import os
import signal
import sys


def die_with_parent(parent_pid: int) -> None:
  """Has Linux kill this process when the process that started it ends.

  The pipeline's process stops its workers itself when it fails or is interrupted;
  killed outright, it cannot, and a chief left running would go on writing into
  outputs that the next run deletes.
  """
  try:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
  except OSError:
    return  # not Linux with glibc: the pipeline's own cleanup must do
  pr_set_pdeathsig = 1
  libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
  if os.getppid() != parent_pid:  # it ended before prctl took effect
    sys.exit(f"the process that started this worker ({parent_pid}) has ended")


if __name__ == "__main__":
  die_with_parent(int(sys.argv[2]))
  from components import multi_worker_trainer  # pylint: disable=g-import-not-at-top
  multi_worker_trainer.run_worker(sys.argv[1])
