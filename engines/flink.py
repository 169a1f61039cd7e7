"""A Flink standalone cluster on this machine, with Beam's Flink job server beside it.

`recsys cluster up` (make flink-up) installs the pinned Flink distribution and job
server jars into `.tools/flink` on first use (engines/installs.py), writes a
configuration for this machine, starts a JobManager, two TaskManagers and the job
server as separate JVMs on free loopback ports, and waits until Flink's REST API
counts both TaskManagers. `recsys cluster down` stops every process it started. The
cluster's ports and processes are kept in `<state dir>/cluster.json`, which
`recsys run --beam-runner FlinkRunner` reads to fill in its Beam flags. What it
shares with the Spark cluster is in engines/local_cluster.py.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

from common import progress
from engines import installs
from engines import local_cluster
from engines import sdk_worker_boot
from engines import warm_sdk_workers
from engines.local_cluster import LOOPBACK as _LOOPBACK
from engines.local_cluster import ClusterError
from engines.local_cluster import alive as _alive

FLINK_VERSION = "1.19.3"
BEAM_JOB_SERVER_VERSION = local_cluster.BEAM_JOB_SERVER_VERSION
_JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
# Names the daemons' pid and log files (Flink's scripts default to $USER, unset in CI).
_IDENT = "recsys"
# Jars of the job server that the Flink distribution has in its own versions.
_FLINKS_OWN = ("flink-", "slf4j-", "log4j-")
# engines/java: the job server's plug-in that lets a job ship no jars.
_JAVA_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java")
_NO_JARS_TO_STAGE = "recsys.flink.NoJarsToStage"
# How long a TaskManager keeps a job's SDK workers once no task of the job uses
# them: long enough for the job's next stage to find them. Not the 1,000 s of
# TFX's penguin example, which kept every finished job's workers alive for a
# quarter of an hour after it, though they serve that job only (Beam's
# ReferenceCountingExecutableStageContextFactory keys them by job id).
_SDK_WORKERS_KEPT_MS = 30_000


# Every JVM of the cluster compiles with the client compiler only and collects
# garbage in one thread. The jobs here are short and their Java side moves bytes
# between Python workers: the server compiler's work at each start cost more CPU
# than it saved, on a machine whose 2 cores also run those workers: measured
# faster on the 1M bench and on the tests' small runs, at half the JVMs' CPU
# (docs/scaling-out.md#the-clusters-jvms).
_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _java_options(flink_home: str) -> str:
  """The --add-opens/--add-exports that Flink's own configuration gives Java 17,
  and _JVM_OPTIONS."""
  with open(os.path.join(flink_home, "conf", "config.yaml")) as f:
    for line in f:
      if line.strip().startswith("all: --add-"):
        return f"{line.split('all:', 1)[1].strip()} {_JVM_OPTIONS}"
  raise ClusterError(f"no Java options in {flink_home}/conf/config.yaml: the Flink "
                     "distribution is not the pinned one")


@dataclasses.dataclass
class ClusterSettings:
  """What the cluster is made of; the defaults fit a 2-core, 24 GB machine beside a run.

  Two slots per TaskManager and a job parallelism of two: with slots spread evenly,
  each Beam step runs one subtask on each TaskManager, and when one TaskManager is
  lost the restarted job still finds two slots on the other.
  """
  taskmanagers: int = 2
  slots_per_taskmanager: int = 2
  parallelism: int = 2
  jobmanager_memory: str = "1600m"
  # The task heap must hold the largest element a step ships whole: at 1M ratings
  # MovieLensExampleGen's group of one output file's examples (87 MB serialized)
  # exceeded the 640 MB heap of a 3072m TaskManager with Flink's default managed
  # share (0.4), which Beam's batch jobs here barely use.
  taskmanager_memory: str = "4096m"
  taskmanager_managed_fraction: float = 0.1
  # Direct memory for Beam's gRPC data plane (netty): with Flink's default of none
  # for tasks, Transform's analysis at 1M ratings failed with "OutOfMemoryError:
  # Direct buffer memory".
  taskmanager_task_off_heap: str = "512m"
  taskmanager_network_memory: str = "768m"
  job_server_heap: str = "1g"
  # Failed tasks restart their part of the job, this many seconds apart, up to this
  # many failures in ten minutes. A lost TaskManager fails every task it ran at once,
  # each counted, and more while the JobManager still sends work to its slots
  # (until two heartbeats, below, have gone unanswered): a fixed number of attempts
  # is spent within a second (docs/scaling-out.md#faults).
  restart_delay_s: int = 10
  max_failures_per_10_min: int = 20


class FlinkCluster(local_cluster.LocalCluster):
  """One local Flink cluster and its Beam job server, kept in `state_dir`.

  Flink's own scripts start the JobManager and the TaskManagers as daemons and keep
  their pids in pid files of the state folder; `down` signals those pids and the job
  server's.
  """
  ENGINE = "flink"
  VERSION = FLINK_VERSION
  PORT_NAMES = ("rest_port", "jobmanager_rpc_port", "job_port", "artifact_port",
                "expansion_port")
  _WEB_PORT = "rest_port"
  _OVERVIEW_PATH = "/overview"

  def __init__(self, state_dir: Optional[str] = None,
               settings: Optional[ClusterSettings] = None):
    super().__init__(state_dir, settings or ClusterSettings())

  def install(self) -> None:
    """The pinned distribution and job server, and the job server's plug-in
    (engines/java), compiled where a JDK is; without one every job ships the job
    server's class path, as Beam does by default."""
    super().install()
    if shutil.which("javac") is None:
      progress.report("flink", "no `javac` (a JDK) here: each Beam step will send the "
                      "job server's whole class path to the cluster, seconds more per "
                      "step (Debian: apt-get install openjdk-17-jdk-headless)")
      return
    installs.java_library(_JAVA_SOURCES, self._job_server_jars(), self._plugin_jar,
                          "the job server's plug-in")

  @property
  def _plugin_jar(self) -> str:
    return os.path.join(self.tools_dir, "recsys-java", "recsys-flink.jar")

  # State

  def rest(self, path: str, state: Optional[Dict[str, Any]] = None,
           timeout: float = 5.0) -> Any:
    """GET `path` on the cluster's REST API (which also serves its web UI), as parsed
    JSON; a ClusterError when no cluster was started."""
    return local_cluster.get_json(self.web_url(state or self._require_state()) + path,
                                  timeout)

  def _engine_up(self, overview: Dict[str, Any]) -> bool:
    """Every TaskManager registered."""
    return overview["taskmanagers"] >= self.settings.taskmanagers

  def _describe(self, overview: Dict[str, Any]) -> str:
    return (f"Flink {overview['flink-version']}, {overview['taskmanagers']} "
            f"TaskManagers, {overview['slots-available']} of {overview['slots-total']} "
            f"slots free, jobs: {overview['jobs-running']} running, "
            f"{overview['jobs-finished']} finished, {overview['jobs-failed']} failed")

  def taskmanager_pids(self) -> List[int]:
    return self._pids("taskexecutor")

  def beam_args(self) -> List[str]:
    """Beam flags that run a pipeline on this cluster, through its job server.

    A PROCESS environment: each TaskManager starts the Python SDK workers of its
    tasks as its own child processes (`sdk_worker_parallelism` 1: one per task
    slot in use), in this project's environment (engines/sdk_worker_boot.py says
    why not LOOPBACK or an EXTERNAL pool).
    """
    state = self._require_state()
    # The job server would otherwise send its class path with each job (NoJarsToStage).
    ships_no_jars = ([f"--pipeline_resources_detector_factory_class={_NO_JARS_TO_STAGE}"]
                     if state.get("ships_no_jars") else [])
    return [f"--job_endpoint={_LOOPBACK}:{state['job_port']}",
            f"--flink_master={_LOOPBACK}:{state['rest_port']}",
            f"--parallelism={self.settings.parallelism}",
            "--environment_type=PROCESS",
            "--environment_config=" + json.dumps({"command": self.sdk_worker_command},
                                                 separators=(",", ":")),
            "--sdk_worker_parallelism=1",
            f"--environment_cache_millis={_SDK_WORKERS_KEPT_MS}", *ships_no_jars]

  @property
  def sdk_worker_command(self) -> str:
    """The executable each TaskManager runs to start a Python SDK worker."""
    return os.path.join(self.state_dir, "sdk-worker")

  # Starting and stopping

  def _start_processes(self, state: Dict[str, Any]) -> None:
    self._write_configuration(state)
    progress.report("flink", f"starting a JobManager and {self.settings.taskmanagers} "
                    f"TaskManagers (Flink {FLINK_VERSION}) on {self.web_url(state)}")
    state["warm_workers_pid"] = self._start_warm_workers()
    self._daemon("jobmanager.sh", "start")
    for _ in range(self.settings.taskmanagers):
      self._daemon("taskmanager.sh", "start")
    state["job_server_pid"] = self._start_job_server(state)
    self._write_state(state)

  def _stopped_at_start(self, state: Dict[str, Any]) -> Optional[str]:
    if _alive(state["job_server_pid"]):
      return None
    return ("Beam's Flink job server stopped at start: see "
            f"{os.path.join(self.log_dir, 'beam-job-server.log')}")

  def _not_up(self, overview: Dict[str, Any]) -> str:
    return (f"{overview.get('taskmanagers', 0)} of {self.settings.taskmanagers} "
            "TaskManagers registered")

  def _stop_targets(self) -> List[int]:
    state = self.state() or {}
    own = [state[name] for name in ("job_server_pid", "warm_workers_pid") if state.get(name)]
    return own + self._pids("taskexecutor") + self._pids("standalonesession")

  def _forget(self) -> None:
    super()._forget()
    for name in os.listdir(self.state_dir) if os.path.isdir(self.state_dir) else []:
      if name.endswith(".pid"):
        os.remove(os.path.join(self.state_dir, name))

  def _pids(self, daemon: str) -> List[int]:
    pids = []
    path = os.path.join(self.state_dir, f"flink-{_IDENT}-{daemon}.pid")
    with contextlib.suppress(FileNotFoundError):
      with open(path) as f:
        pids = [int(line) for line in f if line.strip()]
    return pids

  def _environment(self) -> Dict[str, str]:
    return {**os.environ, "FLINK_CONF_DIR": self.conf_dir, "FLINK_LOG_DIR": self.log_dir,
            "FLINK_PID_DIR": self.state_dir, "FLINK_IDENT_STRING": _IDENT,
            # Flink's scripts add this to the JobManager's and TaskManagers' class path.
            "HADOOP_CLASSPATH": os.pathsep.join(self._beam_jars())}

  def _job_server_jars(self) -> List[str]:
    return [os.path.join(self.job_server_lib, name)
            for name in sorted(os.listdir(self.job_server_lib)) if name.endswith(".jar")]

  def _beam_jars(self) -> List[str]:
    """The job server's Beam jars, for the TaskManagers' own class path.

    Beam's Flink runner keeps a task's SDK worker processes for the next task of the
    same job (`environment_cache_millis`) only when its classes come from Flink's
    class path; loaded from the job's jars, as by default, it stops them whenever no
    task uses them, and a new worker imports TensorFlow again for the next stage
    (FlinkExecutableStageContextFactory). Flink's own jars stay Flink's.
    """
    if not os.path.isdir(self.job_server_lib):
      return []
    return [jar for jar in self._job_server_jars()
            if not os.path.basename(jar).startswith(_FLINKS_OWN)]

  def _daemon(self, script: str, action: str) -> None:
    result = subprocess.run(["bash", os.path.join(self.home, "bin", script), action],
                            env=self._environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode:
      raise ClusterError(f"{script} {action} failed: {result.stdout.strip()}")

  def _start_job_server(self, state: Dict[str, Any]) -> int:
    classpath = [os.path.join(self.job_server_lib, "*")]
    state["ships_no_jars"] = os.path.exists(self._plugin_jar)
    if state["ships_no_jars"]:
      classpath.append(self._plugin_jar)
    return self._start("beam-job-server", [
        "java", f"-Xmx{self.settings.job_server_heap}", *_java_options(self.home).split(),
        "-cp", os.pathsep.join(classpath), _JOB_SERVER_MAIN,
        f"--flink-master={_LOOPBACK}:{state['rest_port']}",
        f"--flink-conf-dir={self.conf_dir}",
        f"--job-host={_LOOPBACK}", f"--job-port={state['job_port']}",
        f"--artifact-port={state['artifact_port']}",
        f"--expansion-port={state['expansion_port']}",
        f"--artifacts-dir={os.path.join(self.state_dir, 'artifacts')}"])

  @property
  def warm_workers_socket(self) -> str:
    return os.path.join(self.state_dir, warm_sdk_workers.SOCKET_NAME)

  def _start_warm_workers(self) -> int:
    """engines/warm_sdk_workers.py, which the TaskManagers' SDK workers fork from."""
    return self._start("warm-sdk-workers", [
        sys.executable, "-m", "engines.warm_sdk_workers",
        f"--socket={self.warm_workers_socket}"], cwd=installs.PROJECT_DIR)

  def _write_configuration(self, state: Dict[str, Any]) -> None:
    """config.yaml, workers and the log settings of the distribution, for this machine."""
    os.makedirs(self.conf_dir, exist_ok=True)
    settings = self.settings
    config = {
        "env.java.opts.all": _java_options(self.home),
        "env.log.dir": self.log_dir,
        "env.pid.dir": self.state_dir,
        "jobmanager.rpc.address": _LOOPBACK,
        "jobmanager.bind-host": _LOOPBACK,
        "jobmanager.rpc.port": state["jobmanager_rpc_port"],
        "jobmanager.memory.process.size": settings.jobmanager_memory,
        "taskmanager.bind-host": _LOOPBACK,
        "taskmanager.host": _LOOPBACK,
        "taskmanager.numberOfTaskSlots": settings.slots_per_taskmanager,
        "taskmanager.memory.process.size": settings.taskmanager_memory,
        "taskmanager.memory.managed.fraction": settings.taskmanager_managed_fraction,
        "taskmanager.memory.task.off-heap.size": settings.taskmanager_task_off_heap,
        # Beam's batch jobs chain many exchanges; TFDV's needed 512 buffers of a slot
        # where Flink's default share of memory gave 288.
        "taskmanager.memory.network.fraction": 0.25,
        "taskmanager.memory.network.min": settings.taskmanager_network_memory,
        "taskmanager.memory.network.max": settings.taskmanager_network_memory,
        "cluster.evenly-spread-out-slots": "true",
        "parallelism.default": settings.parallelism,
        "rest.address": _LOOPBACK,
        "rest.bind-address": _LOOPBACK,
        "rest.port": state["rest_port"],
        "blob.server.port": 0,
        "restart-strategy.type": "failure-rate",
        "restart-strategy.failure-rate.max-failures-per-interval":
            settings.max_failures_per_10_min,
        "restart-strategy.failure-rate.failure-rate-interval": "10 min",
        "restart-strategy.failure-rate.delay": f"{settings.restart_delay_s} s",
        "jobmanager.execution.failover-strategy": "region",
        # Beam's classes, and the libraries they share objects of, from the class
        # path above, not from each job's jars (_beam_jars).
        "classloader.resolve-order": "parent-first",
        # A killed TaskManager is noticed after two failed heartbeats, 5 s apart, a
        # silent one after 30 s.
        "heartbeat.interval": 5000,
        "heartbeat.timeout": 30000,
    }
    with open(os.path.join(self.conf_dir, "config.yaml"), "w") as f:
      f.write("# Written by `recsys cluster up` (engines/flink.py) for this machine.\n")
      for key, value in config.items():
        f.write(f"{key}: {value}\n")
    with open(self.sdk_worker_command, "w") as f:
      f.write("#!/bin/sh\n# Written by `recsys cluster up`: one Beam SDK worker of a "
              "TaskManager (engines/sdk_worker_boot.py).\n"
              f"export TF_USE_LEGACY_KERAS=1 PYTHONPATH={installs.PROJECT_DIR} "
              f"{sdk_worker_boot.WARM_WORKERS_SOCKET}={self.warm_workers_socket}\n"
              f"exec {sys.executable} -m engines.sdk_worker_boot \"$@\"\n")
    os.chmod(self.sdk_worker_command, 0o755)
    with open(os.path.join(self.conf_dir, "workers"), "w") as f:
      f.write(f"{_LOOPBACK}\n" * settings.taskmanagers)
    with open(os.path.join(self.conf_dir, "masters"), "w") as f:
      f.write(f"{_LOOPBACK}:{state['rest_port']}\n")
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties",
                 "logback.xml"):
      source = os.path.join(self.home, "conf", name)
      if os.path.exists(source):
        with open(source) as src, open(os.path.join(self.conf_dir, name), "w") as dst:
          dst.write(src.read())
