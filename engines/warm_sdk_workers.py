"""Beam SDK workers forked from a process that has already imported what they need.

Each Beam step is a Flink job of its own, and Beam's Flink runner keeps a job's SDK
workers for that job only: every step, each TaskManager starts a new Python worker,
which imports Beam and then TensorFlow and the step's TFX library before the first
record moves (docs/scaling-out.md says how long). `recsys cluster up`
starts this server once for the cluster. It imports those modules, listens on a
Unix socket in the cluster's folder, and forks a worker for each request of
`engines/sdk_worker_boot.py`, the command the TaskManagers run. A fork starts in
milliseconds with every module in place.

The server itself never starts a thread, a gRPC channel or a TensorFlow op before
it forks: the child starts all of those itself, as a new process does. The request
carries the boot process's standard output and error and the read end of a pipe
whose write end the boot process holds: the worker exits when that pipe closes, so
that a worker never outlives the process its TaskManager started and stops.
"""
import argparse
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from typing import Callable, Dict, List, Optional

# What the pipeline's Beam steps import in their workers: Beam's SDK harness, and the
# libraries of StatisticsGen, Transform and the Evaluators (TensorFlow with them).
PRELOADED = ("apache_beam.runners.worker.sdk_worker_main", "tensorflow",
             "tensorflow_data_validation", "tensorflow_transform.beam",
             "tensorflow_model_analysis")
SOCKET_NAME = "sdk-workers.sock"
WORKER = "engines.sdk_worker_boot:run_worker"
_MAX_REQUEST = 1 << 20
_FDS = 3  # standard output, standard error, the boot process's liveness pipe
_NUMBER = struct.Struct("!i")  # a pid or an exit status, as the server writes them


def send_request(connection: socket.socket, argv: List[str], env: Dict[str, str],
                 fds: List[int]) -> int:
  """Asks the server to fork a worker with `argv`, `env` and `fds`; returns its pid."""
  request = {"argv": argv, "env": env, "cwd": os.getcwd()}
  socket.send_fds(connection, [json.dumps(request).encode()], fds)
  return _read_number(connection)


def wait_for_exit(connection: socket.socket) -> int:
  """The forked worker's exit status (a negative signal number if one killed it)."""
  return _read_number(connection)


def _read_number(connection: socket.socket) -> int:
  """The next number the server writes: a worker's pid, then its exit status."""
  data = b""
  while len(data) < _NUMBER.size:
    chunk = connection.recv(_NUMBER.size - len(data))
    if not chunk:
      raise ConnectionError("the SDK worker server closed the connection")
    data += chunk
  return _NUMBER.unpack(data)[0]


def _run_worker(worker: Callable[[List[str]], None], request: dict,
                fds: List[int]) -> None:
  """In the forked child: become the worker the request describes; never returns."""
  status = 1
  try:
    stdout, stderr, liveness = fds
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.close(stdout)
    os.close(stderr)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    _exit_when_closed(liveness)
    worker(request["argv"])
    status = 0
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access


def _exit_when_closed(liveness: int) -> None:
  """Ends this worker when the boot process that asked for it is gone (its end of the
  pipe closes on exit, whatever killed it)."""
  import threading  # pylint: disable=g-import-not-at-top

  def watch():
    while os.read(liveness, 1):
      pass
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="boot-liveness").start()


class Server:
  """Forks a worker per connection, and writes its pid and then its exit status back."""

  def __init__(self, path: str, worker: Callable[[List[str]], None]):
    self.path, self.worker = path, worker
    self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
      os.remove(path)
    self.listener.bind(path)
    self.listener.listen(16)
    self.workers: Dict[int, socket.socket] = {}
    self.selector = selectors.DefaultSelector()
    self.selector.register(self.listener, selectors.EVENT_READ)
    self._child_exited_r, self._child_exited_w = os.pipe()
    os.set_blocking(self._child_exited_w, False)
    self.selector.register(self._child_exited_r, selectors.EVENT_READ)

  def serve(self) -> None:
    signal.set_wakeup_fd(self._child_exited_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
      for key, _ in self.selector.select():
        if key.fileobj is self.listener:
          self._fork_for(self.listener.accept()[0])
        else:
          os.read(self._child_exited_r, 4096)
          self._reap()

  def _fork_for(self, connection: socket.socket) -> None:
    try:
      message, fds, _, _ = socket.recv_fds(connection, _MAX_REQUEST, _FDS)
      request = json.loads(message)
    except (OSError, ValueError):
      connection.close()
      return
    if len(fds) != _FDS:
      for fd in fds:
        os.close(fd)
      connection.close()
      return
    pid = os.fork()
    if pid == 0:
      signal.set_wakeup_fd(-1)
      signal.signal(signal.SIGCHLD, signal.SIG_DFL)
      self.selector.close()
      self.listener.close()
      connection.close()
      for fd in (self._child_exited_r, self._child_exited_w):
        os.close(fd)
      for other in self.workers.values():
        other.close()
      _run_worker(self.worker, request, fds)
    for fd in fds:
      os.close(fd)
    self.workers[pid] = connection
    try:
      connection.sendall(_NUMBER.pack(pid))
    except OSError:
      pass

  def _reap(self) -> None:
    while self.workers:
      try:
        pid, wait_status = os.waitpid(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        return
      connection = self.workers.pop(pid, None)
      if connection is not None:
        try:
          connection.sendall(_NUMBER.pack(os.waitstatus_to_exitcode(wait_status)))
        except OSError:
          pass
        connection.close()


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
  parser.add_argument("--preload", default=",".join(PRELOADED),
                      help="comma-separated modules to import before serving")
  parser.add_argument("--worker", default=WORKER,
                      help="MODULE:FUNCTION each fork runs with the worker's flags")
  arguments = parser.parse_args(argv)
  os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
  for module in filter(None, arguments.preload.split(",")):
    importlib.import_module(module)
  module, function = arguments.worker.split(":")
  Server(arguments.socket, getattr(importlib.import_module(module), function)).serve()


if __name__ == "__main__":
  main()
