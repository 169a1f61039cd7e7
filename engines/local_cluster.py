"""What the local clusters (engines/flink.py, engines/spark.py) have in common: a
state folder, stable ports, JVM daemons that are started, waited for and stopped,
and a Beam job server beside them.

`LocalCluster.up()` installs the engine on first use, picks the ports, starts the
engine's processes and waits until the engine and its job server answer; `down()`
stops every process it started and checks that none is left. What is started, how
it is asked whether it is up and which Beam flags reach it is each engine's own.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from common import errors
from common import ports
from common import progress
from engines import installs

# What Beam's Python SDK dials for the job server, and where ports are probed.
LOOPBACK = "localhost"
# Both job servers' Beam release: the SDK's 2.59 runners do not resolve from Maven
# Central here, 2.62.0's do, and the Python SDK 2.59 submits to them (engines/pins).
BEAM_JOB_SERVER_VERSION = "2.62.0"
STATE_FILE = "cluster.json"
PORTS_FILE = "ports.json"


class ClusterError(errors.RecsysError):
  """The local cluster could not start, is not running, or did not stop."""


def accepts_connections(host: str, port: int, timeout: float = 2.0) -> bool:
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _stat(pid: int) -> Optional[List[str]]:
  """/proc/PID/stat from its state (field 3) on, or None when there is no such process.

  The command name (field 2) is in parentheses and may hold spaces, so the fields
  are counted from its closing one.
  """
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None


def _running(fields: List[str]) -> bool:
  """A zombie has exited, unless it is a JVM whose main thread ended before the
  others: the process still runs while it has threads left (field 20)."""
  return fields[0] != "Z" or int(fields[17]) > 1


def alive(pid: int) -> bool:
  """Whether process `pid` still runs (an exited child of ours not yet collected,
  a zombie, does not)."""
  fields = _stat(pid)
  return fields is not None and _running(fields)


def live_members(group_ids: List[int]) -> List[int]:
  """The running processes in the process groups `group_ids`, from /proc."""
  wanted = set(group_ids)
  members = []
  for name in os.listdir("/proc"):
    fields = _stat(int(name)) if name.isdigit() else None
    if fields and int(fields[2]) in wanted and _running(fields):
      members.append(int(name))
  return members


def _reap(pids: List[int], timeout_s: float) -> None:
  """Collects the exit status of those of `pids` that are children of this process
  (the daemons, when `up` ran here), waiting up to `timeout_s` for them to exit."""
  deadline = time.monotonic() + timeout_s
  waiting = list(pids)
  while waiting:
    for pid in list(waiting):
      try:
        done, _ = os.waitpid(pid, os.WNOHANG)
      except ChildProcessError:  # not a child of this process, or collected already
        done = pid
      if done:
        waiting.remove(pid)
    if not waiting or time.monotonic() >= deadline:
      return
    time.sleep(0.1)


def get_json(url: str, timeout: float = 5.0) -> Any:
  with urllib.request.urlopen(url, timeout=timeout) as reply:
    return json.load(reply)


class LocalCluster:
  """One local cluster of an engine and its Beam job server, kept in `state_dir`.

  A subclass names its engine, version and ports in class attributes, and says how
  its processes start (`_start_processes`), which of them to signal
  (`_stop_targets`), whether the engine is up (`_engine_up`) and which Beam flags
  reach it (`beam_args`). The rest follows from ENGINE by convention: its name for
  people, Beam's runner, the pins (engines/pins/ENGINE-requirements.txt, the PyPI
  package pyENGINE that ships the distribution; beam-ENGINE-job-server.pom/.sha256).
  """
  ENGINE = ""  # "flink": the tools folder, make targets, `--engine`
  NAME = ""  # "Flink", for people
  RUNNER = ""  # Beam's runner: "FlinkRunner"
  VERSION = ""
  BEAM_JOB_SERVER_VERSION = BEAM_JOB_SERVER_VERSION
  # The ports `up` picks, kept in ports.json; `job_port` is the job server's.
  PORT_NAMES: Tuple[str, ...] = ()
  _WEB_HOST = LOOPBACK
  _WEB_PORT = ""  # the state's port of the engine's web UI
  _OVERVIEW_PATH = ""  # the web UI's JSON summary of the cluster
  # Signal process groups (each daemon leads one, with its children) or single pids.
  _SIGNAL_GROUPS = False

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    cls.NAME = cls.ENGINE.capitalize()
    cls.RUNNER = f"{cls.NAME}Runner"

  def __init__(self, state_dir: Optional[str], settings: Any):
    self.tools_dir = os.path.join(installs.TOOLS_DIR, self.ENGINE)
    self.state_dir = os.path.abspath(state_dir or os.path.join(self.tools_dir, "cluster"))
    self.settings = settings
    self.conf_dir = os.path.join(self.state_dir, "conf")
    self.log_dir = os.path.join(self.state_dir, "log")

  @property
  def home(self) -> str:
    """The engine's distribution: its bin/, conf/ and jars."""
    return os.path.join(self.tools_dir, "dist", f"py{self.ENGINE}")

  @property
  def job_server_lib(self) -> str:
    return os.path.join(self.tools_dir, f"beam-job-server-{self.BEAM_JOB_SERVER_VERSION}")

  @classmethod
  def command(cls, action: str) -> str:
    """How to run `action` on this engine's cluster, for messages: `make ENGINE-ACTION`
    (recsys cluster ACTION [--engine ENGINE])."""
    engine = "" if cls.ENGINE == "flink" else f" --engine {cls.ENGINE}"
    return f"`make {cls.ENGINE}-{action}` (recsys cluster {action}{engine})"

  # Installing

  def install(self) -> None:
    """The pinned distribution and the job server's jars, once."""
    installs.require_java()
    pins = os.path.join(installs.PINS_DIR, self.ENGINE)
    installs.python_distribution(f"{pins}-requirements.txt", os.path.dirname(self.home),
                                 f"{self.NAME} {self.VERSION}")
    job_server = os.path.join(installs.PINS_DIR, f"beam-{self.ENGINE}-job-server")
    installs.maven_jars(f"{job_server}.pom", f"{job_server}.sha256", self.job_server_lib,
                        f"Beam {self.BEAM_JOB_SERVER_VERSION}'s {self.NAME} job server")

  # State

  def state(self) -> Optional[Dict[str, Any]]:
    """What `up` recorded (ports, processes), or None when no cluster was started."""
    try:
      with open(os.path.join(self.state_dir, STATE_FILE)) as f:
        return json.load(f)
    except FileNotFoundError:
      return None

  def _require_state(self) -> Dict[str, Any]:
    state = self.state()
    if not state:
      raise ClusterError(f"no {self.NAME} cluster started from {self.state_dir}: run "
                         f"{self.command('up')}")
    return state

  def web_url(self, state: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The engine's web UI, or None when no cluster was started."""
    state = state or self.state()
    return f"http://{self._WEB_HOST}:{state[self._WEB_PORT]}" if state else None

  def overview(self, state: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The web UI's JSON summary of the cluster, or None if nothing answers."""
    state = state or self.state()
    if not state:
      return None
    try:
      return get_json(self.web_url(state) + self._OVERVIEW_PATH)
    except (OSError, urllib.error.URLError, ValueError):
      return None

  def is_up(self) -> bool:
    """The engine up (`_engine_up`) and the job server taking connections."""
    state = self.state()
    overview = self.overview(state)
    return bool(overview and self._engine_up(overview)
                and accepts_connections(LOOPBACK, state["job_port"]))

  def status_line(self) -> Optional[str]:
    """One line on the running cluster, or None when its engine does not answer."""
    state = self.state()
    overview = self.overview(state)
    if not overview:
      return None
    job_server = (f"Beam job server on {LOOPBACK}:{state['job_port']}"
                  if accepts_connections(LOOPBACK, state["job_port"])
                  else f"no Beam job server answers at {LOOPBACK}:{state['job_port']}")
    return f"{self.web_url(state)}, {self._describe(overview)}; {job_server}"

  def beam_args(self) -> List[str]:
    """Beam flags that run a pipeline on this cluster, through its job server."""
    raise NotImplementedError

  def _engine_up(self, overview: Dict[str, Any]) -> bool:
    raise NotImplementedError

  def _describe(self, overview: Dict[str, Any]) -> str:
    raise NotImplementedError

  # Starting and stopping

  def up(self, timeout_s: float = 180.0) -> Dict[str, Any]:
    """Starts the cluster unless it is up; returns its state. Stops what it started
    if the cluster does not come up within `timeout_s`."""
    if self.is_up():
      return self.state()
    self.install()
    self.down(quiet=True)  # what a killed `up` or a crash left
    os.makedirs(self.log_dir, exist_ok=True)
    state: Dict[str, Any] = {**self._ports(), f"{self.ENGINE}_version": self.VERSION,
                             "beam_job_server_version": self.BEAM_JOB_SERVER_VERSION}
    self._write_state(state)
    try:
      self._start_processes(state)
      self._wait_until_up(state, timeout_s)
    except BaseException:
      self.down(quiet=True)
      raise
    progress.report(self.ENGINE, f"up: {self.status_line() or self.web_url(state)}; "
                    f"{self._logs()}")
    return state

  def down(self, quiet: bool = False, timeout_s: float = 30.0) -> List[int]:
    """Stops every process of the cluster and returns their pids; none is left."""
    targets = self._stop_targets()
    pids = self._live(targets)
    self._signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while self._live(targets) and time.monotonic() < deadline:
      time.sleep(0.2)
    self._signal(targets, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while self._live(targets) and time.monotonic() < deadline:
      time.sleep(0.1)
    _reap(targets, timeout_s=5)
    left = self._live(targets)
    if left:
      raise ClusterError(f"processes {left} of the {self.NAME} cluster in "
                         f"{self.state_dir} did not stop")
    self._forget()
    if pids and not quiet:
      progress.report(self.ENGINE, f"stopped {len(pids)} processes")
    return pids

  def _start_processes(self, state: Dict[str, Any]) -> None:
    """Says what it starts, then starts the engine's daemons and the job server,
    recording their pids in `state` (and `_write_state`) as they start."""
    raise NotImplementedError

  def _logs(self) -> str:
    return f"logs in {self.log_dir}"

  def _start(self, name: str, command: List[str], env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None) -> int:
    """Starts `command` as the leader of a new process group, its output appended to
    `<log folder>/NAME.log`; returns its pid."""
    with open(os.path.join(self.log_dir, f"{name}.log"), "ab") as log:
      process = subprocess.Popen(  # pylint: disable=consider-using-with
          command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL, start_new_session=True)
    return process.pid

  def _stop_targets(self) -> List[int]:
    """The pids, or process groups (`_SIGNAL_GROUPS`), that `down` signals."""
    raise NotImplementedError

  def _stopped_at_start(self, state: Dict[str, Any]) -> Optional[str]:
    """Why the cluster cannot come up any more (a process that exited), or None."""
    raise NotImplementedError

  def _live(self, targets: List[int]) -> List[int]:
    if self._SIGNAL_GROUPS:
      return live_members(targets)
    return [pid for pid in targets if alive(pid)]

  def _signal(self, targets: List[int], signum: int) -> None:
    send = os.killpg if self._SIGNAL_GROUPS else os.kill
    for target in targets:
      if self._live([target]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
          send(target, signum)

  def _forget(self) -> None:
    """Removes what says the cluster runs, once it does not."""
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(self.state_dir, STATE_FILE))

  def _ports(self) -> Dict[str, int]:
    """The ports of the last cluster from this state folder where they are still free,
    else new free ones.

    The same ports make the same Beam flags, and TFX keys its cache on a step's Beam
    flags: a run after `down` and `up` reuses the steps it completed before.
    """
    path = os.path.join(self.state_dir, PORTS_FILE)
    try:
      with open(path) as f:
        kept = json.load(f)
    except (OSError, ValueError):
      kept = {}
    chosen = {}
    for name in self.PORT_NAMES:
      port = kept.get(name)
      taken = set(chosen.values())
      if not port or port in taken or accepts_connections(LOOPBACK, port, timeout=0.5):
        port = ports.free_port()
        while port in taken:
          port = ports.free_port()
      chosen[name] = port
    os.makedirs(self.state_dir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(chosen, f, indent=2)
    return chosen

  def _wait_until_up(self, state: Dict[str, Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if self.is_up():
        return
      stopped = self._stopped_at_start(state)
      if stopped:
        raise ClusterError(stopped)
      time.sleep(0.5)
    raise ClusterError(f"the {self.NAME} cluster did not come up in {timeout_s:.0f} s: "
                       f"{self._not_up(self.overview(state) or {})} at "
                       f"{self.web_url(state)}; logs in {self.log_dir}")

  def _not_up(self, overview: Dict[str, Any]) -> str:
    """What the overview says is missing, for a cluster that did not come up."""
    raise NotImplementedError

  def _write_state(self, state: Dict[str, Any]) -> None:
    os.makedirs(self.state_dir, exist_ok=True)
    path = os.path.join(self.state_dir, STATE_FILE)
    with open(f"{path}.tmp", "w") as f:
      json.dump(state, f, indent=2)
    os.replace(f"{path}.tmp", path)
