"""Checks before a run starts its components: folders writable, enough free disk, the
Beam engine reachable.

A full disk or a read-only folder found by a component an hour in would fail that
component and waste the hour; here it is one clear line before anything runs or
is registered in ML Metadata.
"""
import os
import shutil
import urllib.error
import urllib.request
from typing import Optional, Sequence, Type

from common import errors
from engines import flink
from engines import local_cluster
from engines import spark

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


def _flag(beam_args: Sequence[str], name: str) -> Optional[str]:
  """The value of the last `--name=VALUE` in `beam_args` (later flags win in Beam)."""
  values = [arg.split("=", 1)[1] for arg in beam_args if arg.startswith(f"--{name}=")]
  return values[-1] if values else None


def ensure_beam_engine(beam_args: Sequence[str]) -> None:
  """PreflightError unless the cluster and job server the flags of FlinkRunner or
  SparkRunner name answer.

  Without this a run against a stopped cluster would fail in its first Beam step,
  after TensorFlow and TFX load, in a gRPC time-out that names neither.
  """
  runner = _flag(beam_args, "runner")
  if runner == flink.FlinkCluster.RUNNER:
    _ensure_flink(beam_args)
  elif runner == spark.SparkCluster.RUNNER:
    _ensure_spark(beam_args)


def _ensure_flink(beam_args: Sequence[str]) -> None:
  job_endpoint, flink_master = _flag(beam_args, "job_endpoint"), _flag(beam_args, "flink_master")
  if not job_endpoint and not flink_master:
    raise PreflightError(
        "FlinkRunner has no cluster to run on: start the local one with "
        f"{flink.FlinkCluster.command('up')}, or name yours with "
        "--beam-arg=--flink_master=HOST:PORT --beam-arg=--job_endpoint=HOST:PORT")
  if flink_master:
    url = flink_master if "://" in flink_master else f"http://{flink_master}"
    try:
      with urllib.request.urlopen(f"{url}/overview", timeout=5) as reply:
        reply.read()
    except (OSError, urllib.error.URLError) as e:
      raise PreflightError(
          f"no Flink cluster answers at {url} ({getattr(e, 'reason', e)}): start it "
          f"with {flink.FlinkCluster.command('up')}, or name a running one with "
          "--beam-arg=--flink_master=HOST:PORT") from None
  if job_endpoint:
    _ensure_job_server(job_endpoint, flink.FlinkCluster)


def _ensure_spark(beam_args: Sequence[str]) -> None:
  """With --spark_master_url alone, Beam starts a job server of its own for it."""
  job_endpoint = _flag(beam_args, "job_endpoint")
  if not job_endpoint and not _flag(beam_args, "spark_master_url"):
    raise PreflightError(
        "SparkRunner has no cluster to run on: start the local one with "
        f"{spark.SparkCluster.command('up')}, or name yours with "
        "--beam-arg=--job_endpoint=HOST:PORT")
  if job_endpoint:
    _ensure_job_server(job_endpoint, spark.SparkCluster)


def _ensure_job_server(job_endpoint: str, cluster: Type[local_cluster.LocalCluster]) -> None:
  host, _, port = job_endpoint.rpartition(":")
  if not port.isdigit() or not local_cluster.accepts_connections(host or "localhost",
                                                                 int(port)):
    raise PreflightError(
        f"no Beam job server answers at {job_endpoint}: start the local cluster with "
        f"{cluster.command('up')}, or name a running job server with "
        "--beam-arg=--job_endpoint=HOST:PORT")
