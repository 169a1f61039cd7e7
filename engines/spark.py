"""A Spark standalone cluster on this machine, with Beam's Spark job server beside it.

`recsys cluster up --engine spark` (make spark-up) installs the pinned Spark
(pyspark's jars and bin/, from PyPI) and Beam's Spark job server jars into
`.tools/spark` on first use (engines/installs.py), then starts a Spark master, one
worker and the job server as separate JVMs on loopback ports, and waits until the
master counts the worker as alive. `down()` stops every process it started, the
executors the worker launched included. Ports and processes are kept in
`<state dir>/cluster.json`, which `recsys run --beam-runner SparkRunner` reads to
fill in its Beam flags (`beam_args()`). What it shares with the Flink cluster is in
engines/local_cluster.py.

Versions: Beam publishes its Spark job server shaded as
beam-runners-spark-3-job-server, which Maven Central does not serve here; Beam
2.62.0's Spark 3 runner library resolves whole (engines/pins/beam-spark-job-server.pom)
and is built against Spark 3.2.2, a "provided" dependency that pyspark 3.2.2 ships.
Spark 3.2 predates its Java 17 support (3.3): every JVM gets the `--add-opens` that
Spark's own launcher adds from 3.3 on.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional

from common import progress
from engines import local_cluster
from engines.local_cluster import LOOPBACK as _JOB_HOST

SPARK_VERSION = "3.2.2"
BEAM_JOB_SERVER_VERSION = local_cluster.BEAM_JOB_SERVER_VERSION
_JOB_SERVER_MAIN = "org.apache.beam.runners.spark.SparkJobServerDriver"
_RUNNER_JAR = f"beam-runners-spark-3-{BEAM_JOB_SERVER_VERSION}.jar"
_PROCESSES = ("master", "worker", "job_server")
# Spark's master takes the address it is given as its name: workers and the driver
# must use the same string, so the daemons bind to and name the IPv4 loopback.
_HOST = "127.0.0.1"
# Spark 3.3+'s launcher (org.apache.spark.launcher.JavaModuleOptions) adds these on
# Java 17; 3.2 does not, and without them its JVMs fail on `sun.nio.ch.DirectBuffer`.
_JAVA17_OPTIONS = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
    "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED",
    "--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "-Djdk.reflect.useDirectMethodHandle=false",
    "-Dio.netty.tryReflectionSetAccessible=true",
)


@dataclasses.dataclass
class ClusterSettings:
  """What the cluster is made of; the defaults fit a 2-core, 24 GB machine beside a run.

  One worker offering both cores: Spark then starts one executor per job with two
  task slots, and each executor runs its Python work in one SDK worker process of
  the submitting machine (LOOPBACK, `sdk_worker_parallelism` 1).
  """
  worker_cores: int = 2
  worker_memory: str = "4g"
  executor_memory: str = "2g"
  daemon_memory: str = "512m"  # the master's and the worker's heap
  job_server_heap: str = "1g"  # the job server holds the Spark driver of each job


class SparkCluster(local_cluster.LocalCluster):
  """One local Spark standalone cluster and its Beam job server, kept in `state_dir`.

  Each daemon is started as the leader of a process group of its own, and the
  executors the worker launches stay in the worker's group: `down` signals the
  groups, which reaches the executors too, also when the worker itself is gone.
  """
  ENGINE = "spark"
  VERSION = SPARK_VERSION
  PORT_NAMES = ("master_port", "master_webui_port", "worker_port", "worker_webui_port",
                "job_port", "artifact_port", "expansion_port")
  _WEB_HOST = _HOST
  _WEB_PORT = "master_webui_port"
  _OVERVIEW_PATH = "/json/"  # workers, cores, active and completed applications
  _SIGNAL_GROUPS = True

  def __init__(self, state_dir: Optional[str] = None,
               settings: Optional[ClusterSettings] = None):
    super().__init__(state_dir, settings or ClusterSettings())
    self.work_dir = os.path.join(self.state_dir, "work")  # executors' folders and logs
    self.local_dir = os.path.join(self.state_dir, "local")  # shuffle and spill files

  # State

  def master_url(self, state: Optional[Dict[str, Any]] = None) -> Optional[str]:
    state = state or self.state()
    return f"spark://{_HOST}:{state['master_port']}" if state else None

  def _engine_up(self, overview: Dict[str, Any]) -> bool:
    """The master alive with its worker registered."""
    return overview.get("status") == "ALIVE" and overview.get("aliveworkers", 0) >= 1

  def _describe(self, overview: Dict[str, Any]) -> str:
    cores, used = overview.get("cores", 0), overview.get("coresused", 0)
    return (f"Spark {SPARK_VERSION}, master {overview.get('status')} at "
            f"{overview.get('url')}, {overview.get('aliveworkers', 0)} worker(s), "
            f"{cores - used} of {cores} cores free, applications: "
            f"{len(overview.get('activeapps', []))} running, "
            f"{len(overview.get('completedapps', []))} completed")

  def beam_args(self) -> List[str]:
    """Beam flags that run a pipeline on this cluster, through its job server.

    LOOPBACK with `use_loopback_process_worker`: the submitting process starts a pool
    that runs each executor's Python work in an SDK worker process of its own, which
    sees this machine's files and this project's environment (put the project's
    Python first on PATH: the pool starts workers as `python`; `recsys run` does).
    The environment is kept for the whole job (`environment_cache_millis`), not
    started again for each Spark stage. `files_to_stage` names one jar the executors
    have already: without it the job server sends its whole class path (Spark's and
    Beam's jars, 380 MB) to each job's executor, which has them on its class path
    anyway.
    """
    state = self._require_state()
    return [f"--job_endpoint={_JOB_HOST}:{state['job_port']}",
            "--environment_type=LOOPBACK",
            "--experiments=use_loopback_process_worker=True",
            "--sdk_worker_parallelism=1",
            "--environment_cache_millis=1000000",
            f"--files_to_stage={os.path.join(self.job_server_lib, _RUNNER_JAR)}"]

  # Starting and stopping

  def _start_processes(self, state: Dict[str, Any]) -> None:
    for folder in (self.conf_dir, self.work_dir, self.local_dir):
      os.makedirs(folder, exist_ok=True)
    progress.report("spark", f"starting a Spark {SPARK_VERSION} master and one worker "
                    f"on {self.master_url(state)} (web UI {self.web_url(state)})")
    state["master_pid"] = self._start_daemon("master", self._spark_class(
        "org.apache.spark.deploy.master.Master", "--host", _HOST,
        "--port", str(state["master_port"]),
        "--webui-port", str(state["master_webui_port"])))
    self._write_state(state)
    state["worker_pid"] = self._start_daemon("worker", self._spark_class(
        "org.apache.spark.deploy.worker.Worker", self.master_url(state),
        "--host", _HOST, "--port", str(state["worker_port"]),
        "--webui-port", str(state["worker_webui_port"]),
        "--cores", str(self.settings.worker_cores),
        "--memory", self.settings.worker_memory, "--work-dir", self.work_dir))
    self._write_state(state)
    state["job_server_pid"] = self._start_daemon("job_server",
                                                self._job_server_command(state))
    self._write_state(state)

  def _stopped_at_start(self, state: Dict[str, Any]) -> Optional[str]:
    for name in _PROCESSES:
      if not local_cluster.live_members([state[f"{name}_pid"]]):
        return (f"the Spark {name.replace('_', ' ')} stopped at start: see "
                f"{os.path.join(self.log_dir, name + '.log')}")
    return None

  def _not_up(self, overview: Dict[str, Any]) -> str:
    return (f"master {overview.get('status', 'not answering')}, "
            f"{overview.get('aliveworkers', 0)} worker(s) alive")

  def _logs(self) -> str:
    return f"logs in {self.log_dir}, executors' in {self.work_dir}"

  def _stop_targets(self) -> List[int]:
    state = self.state() or {}
    return [state[f"{name}_pid"] for name in _PROCESSES if state.get(f"{name}_pid")]

  def _environment(self) -> Dict[str, str]:
    """What Spark's scripts, its daemons and the driver read from the environment."""
    return {**os.environ,
            "SPARK_HOME": self.home,
            "SPARK_CONF_DIR": self.conf_dir,
            "SPARK_LOG_DIR": self.log_dir,
            "SPARK_LOCAL_IP": _HOST,
            "SPARK_LOCAL_DIRS": self.local_dir,
            "SPARK_WORKER_DIR": self.work_dir,
            "SPARK_DAEMON_MEMORY": self.settings.daemon_memory,
            "SPARK_DAEMON_JAVA_OPTS": " ".join(_JAVA17_OPTIONS)}

  def _spark_class(self, main: str, *arguments: str) -> List[str]:
    # spark-class builds the java command line and execs it: the pid is the JVM's.
    return ["bash", os.path.join(self.home, "bin", "spark-class"), main, *arguments]

  def _job_server_command(self, state: Dict[str, Any]) -> List[str]:
    """Beam's job server, which runs each job's Spark driver in its own JVM.

    Beam's jars come before Spark's on both class paths, as in Beam's shaded job
    server: Google Cloud's gcsio, which Beam's options load, fails on Spark's Guava 14
    (`NoSuchMethodError: Preconditions.checkState(boolean, String, long)`), and
    the pom adds the jackson-module-scala that fits Beam's newer Jackson. Spark takes
    `spark.*` system properties of the driver's JVM as its configuration.
    """
    beam_jars = os.path.join(self.job_server_lib, "*")
    spark_jars = os.path.join(self.home, "jars", "*")
    spark_conf = {
        "spark.driver.host": _HOST,
        "spark.driver.bindAddress": _HOST,
        "spark.ui.enabled": "false",
        "spark.executor.memory": self.settings.executor_memory,
        "spark.executor.extraClassPath": beam_jars,
        "spark.executor.extraJavaOptions": " ".join(_JAVA17_OPTIONS),
    }
    return ["java", f"-Xmx{self.settings.job_server_heap}", *_JAVA17_OPTIONS,
            *(f"-D{key}={value}" for key, value in spark_conf.items()),
            "-cp", f"{beam_jars}:{spark_jars}", _JOB_SERVER_MAIN,
            "--spark-master-url", self.master_url(state),
            "--job-host", _JOB_HOST, "--job-port", str(state["job_port"]),
            "--artifact-port", str(state["artifact_port"]),
            "--expansion-port", str(state["expansion_port"]),
            "--artifacts-dir", os.path.join(self.state_dir, "artifacts")]

  def _start_daemon(self, name: str, command: List[str]) -> int:
    return self._start(name, command, env=self._environment(), cwd=self.state_dir)
