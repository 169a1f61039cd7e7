"""TFX's Trainer executor, run as N local worker processes under MultiWorkerMirroredStrategy.

With `"workers": N` (N > 1) in the Trainer's custom_config, `Executor` does not
train in the pipeline's own process: TensorFlow has run ops there already, and
MultiWorkerMirroredStrategy configures collective ops only in a process that has
not ("Collective ops must be configured at program startup"). It starts N fresh
processes instead, as TFX's Vertex AI Trainer has its worker pools run
`python -m tfx.scripts.run_executor --executor_class_path
tfx.components.trainer.executor.GenericExecutor ...`: each runs TFX's
GenericExecutor on the same inputs, outputs and exec properties, with its own
TF_CONFIG naming every worker at localhost on a free port, so the same `run_fn` trains
on every worker, worker 0 being the chief whose model and logs are the Trainer's
outputs (trainer/run.py). `python -m components.trainer_worker` is that entry
point here: it reads the execution from a file rather than the command line, which
a long window of Examples artifacts could outgrow (Linux caps one argument at 128
KiB), and it dies with the pipeline's process.

The workers' output goes to the run's log, each line prefixed with its worker, and
the chief's progress lines to the console. If one worker fails, the others are
stopped (a worker whose peer is gone waits in its collective ops for good) and the
Trainer fails with that worker's exit code and last lines; a worker that could not
listen on its port (taken since it was picked) has them all start again on others.
Every worker is ended and reaped before `Do` returns or raises, KeyboardInterrupt
included, and their temporary folder, where a non-chief worker keeps its scratch
model, is deleted.
"""
import collections
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Deque, Dict, List, Optional

from absl import logging as absl_logging
from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.components.trainer.component import Trainer
from tfx.dsl.components.base import base_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.utils import json_utils

from common import errors
from common import ports
from common import progress
from components import trainer_worker

# The custom_config key that asks for this many worker processes.
WORKERS_KEY = "workers"
# Lines of a failed worker's output its error quotes.
_LAST_LINES = 15
# How long a worker may take to end after SIGTERM before it gets SIGKILL.
_TERMINATE_SECONDS = 10
_POLL_SECONDS = 0.2
# What a worker prints when its port was taken (TensorFlow's gRPC server), and how
# many times the workers are started on newly picked ports before that is an error.
_PORT_TAKEN = "Could not start gRPC server"
_PORT_ATTEMPTS = 3
# A progress line of the chief (common/progress.py's format), shown on the console.
_PROGRESS_LINE = re.compile(r"^\[recsys \d+:\d\d:\d\d\] (?P<stage>[^:]+): (?P<message>.*)$")

_log = logging.getLogger(__name__)


class WorkerFailedError(errors.RecsysError):
  """A worker process of a multi-worker Trainer ended with an error."""


def workers_of(exec_properties: Dict[str, Any]) -> int:
  """The number of worker processes a Trainer's exec properties ask for (1: in-process)."""
  custom_config = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
  return int(custom_config.get(WORKERS_KEY, 1))


class Executor(trainer_executor.GenericExecutor):
  """TFX's GenericExecutor, run in `workers` local processes when custom_config asks."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    workers = workers_of(exec_properties)
    if workers <= 1:
      super().Do(input_dict, output_dict, exec_properties)
      return
    node = self._context.pipeline_node if self._context else None
    name = node.node_info.id if node is not None else "Trainer"
    run_workers(name, workers, input_dict, output_dict, exec_properties)


class MultiWorkerTrainer(Trainer):
  """TFX's Trainer with `Executor`: in `workers` local processes when custom_config asks.

  A subclass rather than Trainer's `custom_executor_spec`, which TFX 1.16 deprecates
  with a warning on the console of every run.
  """
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)


def tf_config(addresses: List[str], index: int) -> str:
  """TF_CONFIG of worker `index` in a cluster of workers only (worker 0 is the chief)."""
  return json.dumps({"cluster": {"worker": addresses},
                     "task": {"type": "worker", "index": index}})


class _Worker:
  """One worker process; its output read line by line as it comes."""

  def __init__(self, name: str, index: int, count: int, address: str, command: List[str],
               env: Dict[str, str]):
    self.index, self.address = index, address
    self.label = f"worker {index} of {count}"
    self._stage = name
    self.last_lines: Deque[str] = collections.deque(maxlen=_LAST_LINES)
    self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    errors="replace")
    self._reader = threading.Thread(target=self._read, daemon=True,
                                    name=f"{name} {self.label} output")
    self._reader.start()

  def _read(self) -> None:
    for line in self.process.stdout:
      line = line.rstrip("\n")
      self.last_lines.append(line)
      _log.info("%s %s: %s", self._stage, self.label, line)
      shown = _PROGRESS_LINE.match(line) if self.index == 0 else None
      if shown:
        progress.report(shown["stage"], shown["message"])

  def describe_exit(self) -> str:
    code = self.process.returncode
    if code is not None and code < 0:
      return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"

  def terminate(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()

  def reap(self) -> None:
    """Waits for the process to end (SIGKILL after a grace period) and its output."""
    try:
      self.process.wait(timeout=_TERMINATE_SECONDS)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    self._reader.join(timeout=_TERMINATE_SECONDS)


def run_workers(name: str, count: int, input_dict: Dict[str, List[types.Artifact]],
                output_dict: Dict[str, List[types.Artifact]],
                exec_properties: Dict[str, Any]) -> None:
  """Runs TFX's GenericExecutor in `count` local worker processes until all succeed.

  Raises WorkerFailedError, naming the worker, as soon as one fails; the others are
  stopped first.
  """
  folder = tempfile.mkdtemp(prefix="trainer-workers-")
  workers: List[_Worker] = []
  try:
    execution_file = os.path.join(folder, "execution.json")
    with open(execution_file, "w", encoding="utf-8") as f:
      json.dump({"inputs": artifact_utils.jsonify_artifact_dict(input_dict),
                 "outputs": artifact_utils.jsonify_artifact_dict(output_dict),
                 "exec_properties": exec_properties}, f)
    command = [sys.executable, "-m", trainer_worker.__name__, execution_file,
               str(os.getpid())]
    for attempt in range(1, _PORT_ATTEMPTS + 1):
      addresses = [f"localhost:{port}" for port in ports.free_ports(count)]
      progress.report(name, f"training on {count} worker processes (MultiWorker"
                      f"MirroredStrategy over {', '.join(addresses)}); worker 0 is the chief")
      workers = []
      for index, address in enumerate(addresses):
        workers.append(_Worker(name, index, count, address, command, {
            **os.environ, "TF_CONFIG": tf_config(addresses, index),
            "TF_USE_LEGACY_KERAS": "1",
            # The workers' temporary files, a non-chief worker's scratch model among
            # them, go where this function deletes them however the workers end.
            "TMPDIR": folder}))
      failed = _wait_for(workers)
      _stop_all(workers)
      if failed is None:
        return
      if attempt < _PORT_ATTEMPTS and any(_PORT_TAKEN in line for line in failed.last_lines):
        # Another process took a port between its pick and the worker's start; the
        # worker failed before anything was trained or written.
        progress.report(name, f"{failed.label} could not listen on {failed.address}; "
                        "starting the workers again on other ports")
        continue
      lines = "\n".join(f"  {line}" for line in failed.last_lines) or "  (no output)"
      raise WorkerFailedError(
          f"{name}: {failed.label} ({failed.address}) {failed.describe_exit()}; the other "
          f"workers were stopped. Its last lines (all of them in the run's log):\n{lines}")
  finally:
    _stop_all(workers)
    shutil.rmtree(folder, ignore_errors=True)


def _wait_for(workers: List[_Worker]) -> Optional[_Worker]:
  """Waits until every worker succeeded (None) or one failed (that worker, the first
  found, by index among several found at once)."""
  while True:
    codes = [worker.process.poll() for worker in workers]
    failed = [worker for worker, code in zip(workers, codes) if code not in (None, 0)]
    if failed:
      return failed[0]
    if all(code == 0 for code in codes):
      return None
    time.sleep(_POLL_SECONDS)


def _stop_all(workers: List[_Worker]) -> None:
  """Ends every worker still running, all at once, and reaps them all."""
  for worker in workers:
    worker.terminate()
  for worker in workers:
    worker.reap()


def run_worker(execution_file: str) -> None:
  """One worker: TFX's GenericExecutor on the execution `run_workers` wrote down."""
  absl_logging.set_verbosity(absl_logging.INFO)  # as TFX's run_executor logs
  with open(execution_file, encoding="utf-8") as f:
    execution = json.load(f)
  context = base_executor.BaseExecutor.Context(tmp_dir=os.path.dirname(execution_file))
  trainer_executor.GenericExecutor(context).Do(
      artifact_utils.parse_artifact_dict(execution["inputs"]),
      artifact_utils.parse_artifact_dict(execution["outputs"]),
      execution["exec_properties"])
