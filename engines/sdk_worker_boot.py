"""Starts one Beam Python SDK worker for a Flink TaskManager: Beam's SDK container
contract (the flags a PROCESS environment's command receives), in Python.

Beam's own implementation of the contract is a Go program (`boot`) inside its SDK
container images; the apache-beam wheel does not ship it. Its job on one machine is
small: ask the runner's provision service for the pipeline options, then run the
SDK harness against the control endpoint. Packages are not staged: the worker runs
in this project's environment, as the pipeline does (a multi-host cluster runs
Beam's container image instead, docs/scaling-out.md).

Each TaskManager starts its workers as its own child processes, so two TaskManagers
never share a worker pool. Beam's LOOPBACK and EXTERNAL pools are one pool for all
of them, which keys workers by an id each TaskManager counts from 1 on its own:
the second TaskManager's "stop worker 2-1" kills the first one's worker 2-1, whose
task then waits for it for ever.

When the cluster runs engines/warm_sdk_workers.py, this process asks it for the
worker (a fork of a process that has imported Beam and TensorFlow already) and
stands in for it until it exits; otherwise it becomes the worker itself.
"""
import argparse
import json
import os
import signal
import socket
import sys
import tempfile
from typing import List, Optional

from engines import warm_sdk_workers

# Where engines/warm_sdk_workers.py listens, when the cluster started it.
WARM_WORKERS_SOCKET = "RECSYS_WARM_SDK_WORKERS"


def _arguments(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--id", required=True, help="worker id, from the runner")
  for endpoint in ("provision", "control", "logging", "artifact", "status"):
    parser.add_argument(f"--{endpoint}_endpoint", default="")
  parser.add_argument("--semi_persist_dir", default="")
  arguments, _ = parser.parse_known_args(argv)
  return arguments


def run_worker(argv: List[str]) -> None:
  """Runs the SDK harness of the worker `argv` (the runner's flags) describes."""
  arguments = _arguments(argv)
  os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
  import grpc  # pylint: disable=g-import-not-at-top
  from apache_beam.portability.api import beam_provision_api_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.portability.api import beam_provision_api_pb2_grpc  # pylint: disable=g-import-not-at-top
  from apache_beam.portability.api import endpoints_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.worker import sdk_worker_main  # pylint: disable=g-import-not-at-top
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top

  with grpc.insecure_channel(arguments.provision_endpoint) as channel:
    info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
        beam_provision_api_pb2.GetProvisionInfoRequest(),
        metadata=[("worker_id", arguments.id)]).info

  def descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

  control = info.control_endpoint.url or arguments.control_endpoint
  logging = info.logging_endpoint.url or arguments.logging_endpoint
  os.environ.update({
      "WORKER_ID": arguments.id,
      "PIPELINE_OPTIONS": json.dumps(json_format.MessageToDict(info.pipeline_options)),
      "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(control),
      "SEMI_PERSISTENT_DIRECTORY": arguments.semi_persist_dir or tempfile.mkdtemp(
          prefix=f"beam-sdk-worker-{arguments.id}-"),
      "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
  })
  if logging:
    os.environ["LOGGING_API_SERVICE_DESCRIPTOR"] = descriptor(logging)
  if arguments.status_endpoint:
    os.environ["STATUS_API_SERVICE_DESCRIPTOR"] = descriptor(arguments.status_endpoint)
  sdk_worker_main.main(sys.argv[:1])


def _forked_worker(socket_path: str, argv: List[str]) -> Optional[int]:
  """The exit status of a worker that the warm worker server forked for `argv`, or
  None when no server answers at `socket_path`. This process stays the worker's
  stand-in for its TaskManager: it passes on SIGTERM and SIGINT, and the worker ends
  when this process does (engines/warm_sdk_workers.py)."""
  connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  try:
    connection.connect(socket_path)
  except OSError:
    connection.close()
    return None
  liveness_read, _ = os.pipe()  # the write end stays open until this process exits
  pid = warm_sdk_workers.send_request(connection, argv, dict(os.environ),
                                      [sys.stdout.fileno(), sys.stderr.fileno(),
                                       liveness_read])
  os.close(liveness_read)

  def pass_on(signum, _):
    try:
      os.kill(pid, signum)
    except ProcessLookupError:
      pass

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, pass_on)
  return warm_sdk_workers.wait_for_exit(connection)


def main(argv: Optional[List[str]] = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  socket_path = os.environ.get(WARM_WORKERS_SOCKET)
  status = _forked_worker(socket_path, argv) if socket_path else None
  if status is None:  # no server: a worker of its own, importing everything itself
    run_worker(argv)
    return
  sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
  main()
