"""The pipeline's Beam steps on a real Flink cluster: a JobManager, two TaskManagers and
Beam's job server, each its own JVM, brought up from the project's pinned packages
(engines/flink.py) and stopped at the end, also when a test fails.

On the synthetic release of `finished_run` (a DirectRunner run), the Flink run must
make the same examples, statistics and Transform vocabularies, and its Evaluator must
give the same AUC to the same trained model; Flink's REST API must show one finished
job per Beam step with subtasks on both TaskManagers; a TaskManager killed in the
middle of the last step must cost a restart, not the run; and a rerun after the
cluster went down and came up again must come from the cache.
"""
import dataclasses
import glob
import os
import shutil
import signal
import threading

import pytest

from engines import flink
from pipeline import configs
from pipeline import preflight
from pipeline import run_store
from testing import equivalence
from testing import synthetic
from tests.conftest import BRIEF_TRAINING
from tests.conftest import E2E_AUC_FLOOR
from tests.conftest import E2E_RELEASE
from tests.conftest import pipeline_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("java") is None,
                       reason="no `java` on this machine: Flink needs a Java 17 runtime "
                       "(Debian: apt-get install openjdk-17-jre-headless)"),
]

# MovieLensExampleGen, StatisticsGen, Transform, Evaluator.cf, in this order.
BEAM_STEPS = 4
KILLED_STEP = BEAM_STEPS  # the Evaluator's job: its TaskManager is killed mid-way


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """A cluster of this module's own (its own ports and folder), down at the end."""
  local = flink.FlinkCluster(str(tmp_path_factory.mktemp("flink-cluster")))
  try:
    local.up()
    yield local
  finally:
    local.down()
    assert not [pid for pid in local.taskmanager_pids() if flink._alive(pid)]  # pylint: disable=protected-access


def _jobs(cluster):
  """Flink's jobs, oldest first."""
  return sorted(cluster.rest("/jobs/overview")["jobs"], key=lambda job: job["start-time"])


def _taskmanagers_of(cluster, job_id: str):
  """The TaskManagers that ran subtasks of `job_id`'s vertices."""
  found = set()
  for vertex in cluster.rest(f"/jobs/{job_id}")["vertices"]:
    reply = cluster.rest(f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")
    found.update(tm["taskmanager-id"] for tm in reply["taskmanagers"])
  return found


class TaskManagerKiller(threading.Thread):
  """Kills one TaskManager (SIGKILL) once the `nth` Flink job has a task running on it."""

  def __init__(self, cluster, nth: int):
    super().__init__(daemon=True)
    self.cluster, self.nth = cluster, nth
    self.killed_pid = None
    self.job_id = None
    self._stop_event = threading.Event()

  def stop(self):
    self._stop_event.set()

  def run(self):
    while not self._stop_event.is_set():
      try:
        jobs = _jobs(self.cluster)
      except OSError:  # the REST API busy for a moment: ask again
        jobs = []
      if len(jobs) >= self.nth and jobs[self.nth - 1]["state"] == "RUNNING" \
          and jobs[self.nth - 1]["tasks"]["running"]:
        self.job_id = jobs[self.nth - 1]["jid"]
        self.killed_pid = self.cluster.taskmanager_pids()[0]
        os.kill(self.killed_pid, signal.SIGKILL)
        return
      self._stop_event.wait(0.2)


def _run(config, model_uri):
  from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # pylint: disable=g-import-not-at-top
  LocalDagRunner().run(equivalence.beam_steps_pipeline(config, model_uri))


def _latest(run_dir, type_name, producer):
  return run_store.RunStore(str(run_dir)).latest_artifact(type_name, producer).uri


@dataclasses.dataclass
class FlinkRun:
  """What the Flink run made, and what Flink's REST API said right after it."""
  config: configs.PipelineConfig
  model_uri: str
  killer: TaskManagerKiller
  jobs: list
  taskmanagers_by_job: dict
  failures_of_killed_job: list
  taskmanagers_left: int
  ships_no_jars: bool  # the cluster's job server has the plug-in that stages no jars


@pytest.fixture(scope="module")
def flink_run(cluster, request, tmp_path_factory):
  """The Beam steps of `finished_run`'s settings on the cluster, evaluating its CF
  model; a TaskManager is killed while the Evaluator's job runs.

  The steps before the Evaluator run on the same release as `finished_run`'s,
  written afresh, while another test process may still be making `finished_run`;
  the Evaluator, which needs its model, runs after, the other steps from the cache.
  """
  root = tmp_path_factory.mktemp("flink-run")
  synthetic.write_release(str(root / "data"), **E2E_RELEASE)
  config = pipeline_config(root / "data", root / "run", overrides=BRIEF_TRAINING)
  config.auc_floor = E2E_AUC_FLOOR
  config.beam_args = [f"--runner={configs.FLINK_RUNNER}", *configs.setup_file_args(),
                      *cluster.beam_args()]
  killer = TaskManagerKiller(cluster, KILLED_STEP)
  killer.start()
  try:
    _run(config, model_uri=None)
    _, direct_config, _ = request.getfixturevalue("finished_run")
    assert direct_config.auc_floor == config.auc_floor
    model_uri = _latest(direct_config.output_dir, "Model", "Trainer.cf")
    _run(config, model_uri)
  finally:
    killer.stop()
    killer.join()
  # What Flink's REST API says now: the cluster keeps no job history once it stops.
  jobs = _jobs(cluster)
  return FlinkRun(
      config=config, model_uri=model_uri, killer=killer, jobs=jobs,
      taskmanagers_by_job={job["jid"]: _taskmanagers_of(cluster, job["jid"])
                           for job in jobs},
      failures_of_killed_job=(cluster.rest(f"/jobs/{killer.job_id}/exceptions")
                              ["exceptionHistory"]["entries"] if killer.job_id else []),
      taskmanagers_left=len(cluster.rest("/taskmanagers")["taskmanagers"]),
      ships_no_jars=cluster.state()["ships_no_jars"])


def test_each_beam_step_is_one_flink_job_on_both_taskmanagers(flink_run):
  # With a JDK here the job server's plug-in was built, and jobs ship no jars.
  assert flink_run.ships_no_jars == (shutil.which("javac") is not None)
  assert [job["state"] for job in flink_run.jobs] == ["FINISHED"] * BEAM_STEPS
  for job in flink_run.jobs[:KILLED_STEP - 1]:  # before the kill
    assert len(flink_run.taskmanagers_by_job[job["jid"]]) == 2, job["name"]


def test_flink_recovers_the_job_whose_taskmanager_was_killed(flink_run):
  killer = flink_run.killer
  assert killer.killed_pid is not None, "the Evaluator's job ended before it could be hit"
  assert killer.job_id == flink_run.jobs[KILLED_STEP - 1]["jid"]
  assert not flink._alive(killer.killed_pid)  # pylint: disable=protected-access
  assert flink_run.taskmanagers_left == 1
  # Flink recorded the lost TaskManager's failure, restarted the job on the other
  # TaskManager's slots (restart-strategy: failure-rate), and the job finished.
  assert flink_run.failures_of_killed_job
  assert flink_run.jobs[KILLED_STEP - 1]["state"] == "FINISHED"


def test_flink_makes_what_the_direct_runner_makes(finished_run, flink_run):
  _, direct_config, _ = finished_run
  direct, on_flink = direct_config.output_dir, flink_run.config.output_dir
  assert not equivalence.compare_example_pairs(
      equivalence.example_pairs(_latest(direct, "Examples", "MovieLensExampleGen")),
      equivalence.example_pairs(_latest(on_flink, "Examples", "MovieLensExampleGen")))
  assert not equivalence.compare_statistics(
      equivalence.statistics(_latest(direct, "ExampleStatistics", "StatisticsGen")),
      equivalence.statistics(_latest(on_flink, "ExampleStatistics", "StatisticsGen")))
  vocabularies = equivalence.vocabularies(_latest(on_flink, "TransformGraph", "Transform"))
  assert vocabularies
  assert not equivalence.compare_vocabularies(
      equivalence.vocabularies(_latest(direct, "TransformGraph", "Transform")), vocabularies)
  direct_metrics = equivalence.overall_metrics(
      _latest(direct, "ModelEvaluation", "Evaluator.cf"))
  assert "auc" in direct_metrics
  assert not equivalence.compare_metrics(
      direct_metrics,
      equivalence.overall_metrics(_latest(on_flink, "ModelEvaluation", "Evaluator.cf")),
      abs_tol=1e-6)


def test_a_rerun_after_the_cluster_restarts_comes_from_the_cache(cluster, flink_run):
  config = flink_run.config
  cluster.down()
  cluster.up()
  # The same ports, so the same Beam flags: TFX keys each step's cache on them.
  assert config.beam_args[-len(cluster.beam_args()):] == cluster.beam_args()
  _run(config, flink_run.model_uri)
  assert not _jobs(cluster), "a step that had completed submitted a Flink job again"
  for producer in ("MovieLensExampleGen", "StatisticsGen", "Transform", "Evaluator.cf"):
    for output in glob.glob(os.path.join(config.pipeline_root, producer, "*")):
      assert len(os.listdir(output)) == 1, f"{producer} ran again"


def test_a_run_against_a_stopped_cluster_stops_before_its_first_step(cluster, flink_run):
  beam_args = flink_run.config.beam_args  # the flags of a run that found the cluster up
  cluster.down()
  flink_master = next(arg for arg in beam_args if arg.startswith("--flink_master="))
  with pytest.raises(preflight.PreflightError, match=(
      f"no Flink cluster answers at http://{flink_master.split('=', 1)[1]}")):
    preflight.ensure_beam_engine(beam_args)
