"""The engines' tooling without starting one: pinned installs, ports, the `recsys
cluster` command, the checks a run against a Flink or Spark cluster makes before it
starts (tests/test_flink.py starts one)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest

from common import ports
from engines import flink
from engines import installs
from engines import local_cluster
from engines import sdk_worker_boot
from engines import spark
from pipeline import cli
from pipeline import configs
from pipeline import preflight
from tests.conftest import cli_error

CLUSTERS = [flink.FlinkCluster, spark.SparkCluster]


@pytest.mark.parametrize("engine", ["flink", "spark"])
def test_a_missing_java_is_one_line_saying_what_to_install(capsys, monkeypatch, tmp_path,
                                                           engine):
  monkeypatch.setenv("PATH", str(tmp_path))  # a folder with no `java` in it
  line = cli_error(capsys, "cluster", "up", "--engine", engine,
                   "--state-dir", str(tmp_path / "cluster"))
  assert line.startswith("error: `java` not found on PATH: install a Java 17 runtime")
  assert "openjdk-17-jre-headless" in line


@pytest.mark.parametrize("engine, name", [("flink", "Flink"), ("spark", "Spark")])
def test_the_status_of_a_cluster_never_started_is_down(capsys, tmp_path, engine, name):
  assert cli.main(["cluster", "status", "--engine", engine,
                   "--state-dir", str(tmp_path)]) == 3
  assert capsys.readouterr().out == f"down: no {name} cluster answers for {tmp_path}\n"
  assert cli.main(["cluster", "down", "--engine", engine, "--state-dir", str(tmp_path)]) == 0
  assert capsys.readouterr().out == f"No {name} cluster was running from {tmp_path}.\n"


def test_the_cluster_command_defaults_to_flink(tmp_path):
  args = cli.build_parser().parse_args(["cluster", "status", "--state-dir", str(tmp_path)])
  assert args.engine == "flink"
  assert set(configs.LOCAL_CLUSTERS) == {"flink", "spark"}
  for engine, cluster in configs.LOCAL_CLUSTERS.items():
    assert cluster.ENGINE == engine and cluster.RUNNER in configs.BEAM_RUNNERS
    assert cluster.VERSION and cluster().state_dir == f"{installs.TOOLS_DIR}/{engine}/cluster"


def _jars(folder, contents):
  folder.mkdir()
  for name, data in contents.items():
    (folder / name).write_bytes(data)
  return str(folder)


def test_jars_are_checked_against_their_pinned_checksums(tmp_path):
  good = {"a.jar": b"a", "b.jar": b"b"}
  pins = {"a.jar": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
          "b.jar": "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"}
  installs.verify_checksums(_jars(tmp_path / "good", good), pins)
  with pytest.raises(installs.InstallError, match=r"b\.jar: sha256 .* differs from the pinned"):
    installs.verify_checksums(_jars(tmp_path / "changed", {**good, "b.jar": b"B"}), pins)
  with pytest.raises(installs.InstallError, match="b.jar is pinned but Maven did not deliver"):
    installs.verify_checksums(_jars(tmp_path / "missing", {"a.jar": b"a"}), pins)
  with pytest.raises(installs.InstallError, match=r"c\.jar is not pinned"):
    installs.verify_checksums(_jars(tmp_path / "extra", {**good, "c.jar": b"c"}), pins)


@pytest.mark.skipif(shutil.which("javac") is None,
                    reason="no `javac` (a JDK) on this machine to compile with")
def test_a_java_library_is_compiled_once_and_again_when_its_source_changes(tmp_path):
  sources = tmp_path / "java"
  (sources / "demo").mkdir(parents=True)
  (sources / "META-INF" / "services").mkdir(parents=True)
  (sources / "META-INF" / "services" / "demo.Service").write_text("demo.Greeting\n")
  source = sources / "demo" / "Greeting.java"
  source.write_text("package demo; public final class Greeting {}\n")
  jar = tmp_path / "lib" / "demo.jar"

  assert installs.java_library(str(sources), [], str(jar), "demo") == str(jar)
  with zipfile.ZipFile(jar) as archive:
    assert set(archive.namelist()) == {"demo/Greeting.class", "META-INF/services/demo.Service"}
  built = jar.stat().st_mtime_ns
  installs.java_library(str(sources), [], str(jar), "demo")
  assert jar.stat().st_mtime_ns == built  # the same sources: not compiled again

  source.write_text("package demo; public final class Greeting { int broken }\n")
  with pytest.raises(installs.InstallError, match="compiling demo failed"):
    installs.java_library(str(sources), [], str(jar), "demo")
  with zipfile.ZipFile(jar) as archive:  # the last good build is kept
    assert "demo/Greeting.class" in archive.namelist()


@pytest.mark.parametrize("pins, runner_jar", [
    ("beam-flink-job-server", f"beam-runners-flink-1.19-{flink.BEAM_JOB_SERVER_VERSION}.jar"),
    ("beam-spark-job-server", f"beam-runners-spark-3-{spark.BEAM_JOB_SERVER_VERSION}.jar"),
])
def test_the_pinned_job_server_checksums_are_well_formed(pins, runner_jar):
  checksums = installs.read_checksums(f"{installs.PINS_DIR}/{pins}.sha256")
  assert runner_jar in checksums
  assert all(len(digest) == 64 for digest in checksums.values())


@pytest.mark.parametrize("cluster_class", CLUSTERS)
def test_a_cluster_keeps_its_ports_while_they_are_free(tmp_path, cluster_class):
  cluster = cluster_class(str(tmp_path))
  first = cluster._ports()  # pylint: disable=protected-access
  assert list(first) == list(cluster_class.PORT_NAMES)
  assert len(set(first.values())) == len(first)
  assert cluster._ports() == first  # pylint: disable=protected-access
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", first["job_port"]))
    busy.listen()
    moved = cluster._ports()  # pylint: disable=protected-access
  assert moved["job_port"] != first["job_port"]
  assert {k: v for k, v in moved.items() if k != "job_port"} == \
      {k: v for k, v in first.items() if k != "job_port"}
  assert json.loads((tmp_path / "ports.json").read_text()) == moved


@pytest.mark.parametrize("cluster_class", CLUSTERS)
def test_a_cluster_never_started_has_no_flags_to_give(tmp_path, cluster_class):
  cluster = cluster_class(str(tmp_path))
  assert cluster.state() is None and cluster.overview() is None and not cluster.is_up()
  assert cluster.status_line() is None and cluster.web_url() is None
  with pytest.raises(local_cluster.ClusterError,
                     match=f"make {cluster_class.ENGINE}-up"):
    cluster.beam_args()
  assert cluster.down() == []


def test_an_exited_child_not_yet_collected_is_not_alive():
  child = subprocess.Popen(["true"])  # pylint: disable=consider-using-with
  deadline = time.monotonic() + 10
  while local_cluster.alive(child.pid) and time.monotonic() < deadline:
    time.sleep(0.01)
  assert not local_cluster.alive(child.pid)  # a zombie until waited for
  assert child.wait() == 0
  assert local_cluster.alive(os.getpid())


@pytest.mark.parametrize("runner, flags", [
    ("FlinkRunner", ["--flink_master=host:8081", "--job_endpoint=host:8099"]),
    ("FlinkRunner", ["--job_endpoint=host:8099"]),
    ("SparkRunner", ["--job_endpoint=host:8099"]),
    ("SparkRunner", ["--spark_master_url=spark://host:7077"]),
])
def test_runner_flags_naming_a_cluster_pass_through(runner, flags, monkeypatch, tmp_path):
  _started_local_clusters(monkeypatch, tmp_path)
  args = configs.beam_pipeline_args(runner, flags)
  assert args == [f"--runner={runner}", *configs.setup_file_args(), *flags]


def _started_local_clusters(monkeypatch, tmp_path):
  """Both local clusters as if `recsys cluster up` had started them under tmp_path."""
  monkeypatch.setattr(installs, "TOOLS_DIR", str(tmp_path))
  for cluster_class in CLUSTERS:
    cluster = cluster_class()
    cluster._write_state(cluster._ports())  # pylint: disable=protected-access


@pytest.mark.parametrize("runner", [configs.FLINK_RUNNER, configs.SPARK_RUNNER])
def test_a_runner_naming_no_cluster_gets_its_local_clusters_flags(runner, monkeypatch,
                                                                 tmp_path):
  monkeypatch.setattr(installs, "TOOLS_DIR", str(tmp_path))
  assert configs.beam_pipeline_args(runner, ["--x=1"]) == [
      f"--runner={runner}", *configs.setup_file_args(), "--x=1"]  # none started
  _started_local_clusters(monkeypatch, tmp_path)
  cluster = next(c for c in CLUSTERS if c.RUNNER == runner)()
  assert configs.beam_pipeline_args(runner, ["--x=1"]) == [
      f"--runner={runner}", *configs.setup_file_args(), *cluster.beam_args(), "--x=1"]
  assert f"--job_endpoint=localhost:{cluster.state()['job_port']}" in cluster.beam_args()


def test_a_flink_run_without_a_cluster_stops_before_it_starts():
  with pytest.raises(preflight.PreflightError, match="make flink-up"):
    preflight.ensure_beam_engine(["--runner=FlinkRunner"])
  port = ports.free_port()
  with pytest.raises(preflight.PreflightError,
                     match=f"no Flink cluster answers at http://localhost:{port}"):
    preflight.ensure_beam_engine(["--runner=FlinkRunner", f"--flink_master=localhost:{port}"])
  with pytest.raises(preflight.PreflightError,
                     match=f"no Beam job server answers at localhost:{port}"):
    preflight.ensure_beam_engine(["--runner=FlinkRunner", f"--job_endpoint=localhost:{port}"])
  preflight.ensure_beam_engine(["--runner=DirectRunner"])  # nothing to reach


def test_a_spark_run_without_a_job_server_stops_before_it_starts():
  with pytest.raises(preflight.PreflightError, match=r"make spark-up.*--engine spark"):
    preflight.ensure_beam_engine(["--runner=SparkRunner"])
  port = ports.free_port()
  with pytest.raises(preflight.PreflightError,
                     match=f"no Beam job server answers at localhost:{port}: .*make spark-up"):
    preflight.ensure_beam_engine(["--runner=SparkRunner", f"--job_endpoint=localhost:{port}"])
  with socket.socket() as listening:
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    preflight.ensure_beam_engine(
        ["--runner=SparkRunner", f"--job_endpoint=localhost:{listening.getsockname()[1]}"])
  # Beam starts a job server of its own for a master named alone.
  preflight.ensure_beam_engine(["--runner=SparkRunner", "--spark_master_url=spark://h:7077"])


@pytest.fixture
def warm_workers(tmp_path):
  """engines/warm_sdk_workers.py serving forks of testing/warm_worker_probe.py (nothing
  preloaded: what is tested is the forking, not what the pipeline imports)."""
  socket_path = str(tmp_path / "workers.sock")
  server = subprocess.Popen(
      [sys.executable, "-m", "engines.warm_sdk_workers", f"--socket={socket_path}",
       "--preload=", "--worker=testing.warm_worker_probe:run"], cwd=installs.PROJECT_DIR)
  try:
    deadline = time.monotonic() + 60
    while not os.path.exists(socket_path):
      assert server.poll() is None, "the warm worker server exited"
      assert time.monotonic() < deadline, "the warm worker server never listened"
      time.sleep(0.05)
    yield server, socket_path
  finally:
    server.kill()
    server.wait()


def _boot(socket_path, *flags):
  """engines/sdk_worker_boot.py as a TaskManager starts it (in a folder of its own)."""
  env = {**os.environ, sdk_worker_boot.WARM_WORKERS_SOCKET: socket_path,
         "PROBE_MARKER": "from-the-boot-environment", "PYTHONPATH": installs.PROJECT_DIR}
  return subprocess.Popen([sys.executable, "-m", "engines.sdk_worker_boot", "--id=3-1",
                           *flags], cwd=os.path.dirname(socket_path), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _probe_pid(boot):
  line = boot.stdout.readline()
  assert line.startswith("probe pid="), line
  return int(line.split()[1].split("=")[1]), line


def test_a_warm_worker_is_a_fork_of_the_server_with_the_boot_processes_flags_and_output(
    warm_workers):
  server, socket_path = warm_workers
  boot = _boot(socket_path, "--exit=3")
  pid, line = _probe_pid(boot)
  stdout, stderr = boot.communicate(timeout=60)
  assert f"parent={server.pid}" in line and pid not in (boot.pid, server.pid)
  assert f"cwd={os.path.dirname(socket_path)} " in line
  assert "argv=--id=3-1 --exit=3" in line and "marker=from-the-boot-environment" in line
  assert "probe to stderr" in stderr
  assert boot.returncode == 3  # the worker's exit status is the boot process's


def test_a_warm_worker_stops_with_its_boot_process(warm_workers):
  _, socket_path = warm_workers
  # SIGTERM, as Beam's ProcessManager stops a worker: passed on to the worker.
  boot = _boot(socket_path, "--sleep=120")
  pid, _ = _probe_pid(boot)
  boot.terminate()
  assert boot.wait(timeout=60) == 128 + signal.SIGTERM
  assert not local_cluster.alive(pid)
  # SIGKILL leaves nothing to pass it on: the worker sees the boot process's pipe close.
  boot = _boot(socket_path, "--sleep=120")
  pid, _ = _probe_pid(boot)
  boot.kill()
  boot.wait(timeout=60)
  deadline = time.monotonic() + 30
  while local_cluster.alive(pid):
    assert time.monotonic() < deadline, "the worker outlived its killed boot process"
    time.sleep(0.05)
