"""Shared fixtures: synthetic MovieLens releases, the real files when present, and
one finished end-to-end run that several test modules read."""
import contextlib
import fcntl
import io
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top

from testing import synthetic  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
# The real GroupLens files live beside the repo (never inside it: no redistribution).
REAL_DATA = pathlib.Path(os.environ.get("MOVIELENS_REAL_DATA",
                                        REPO.parent / "shared" / "data" / "movielens"))
REAL_100K = REAL_DATA / "ml-100k"
REAL_1M = REAL_DATA / "ml-1m"


# Fixtures that run Beam (Transform, TFMA, whole pipelines) or train models. A test
# that uses one, directly or through another fixture, is marked `slow`, and
# `make test-fast` leaves it out.
SLOW_FIXTURES = frozenset({"transformed_1m", "exported_models", "finished_run", "fans",
                           "recommenders", "both_evaluations", "transformed_25m"})


# The longest modules, longest first, are handed out before the rest (`make test` runs
# `--dist loadfile --no-loadscope-reorder`: a module's tests stay on one worker, which
# builds its module-scoped fixtures once, and modules go out in this order). A long
# module handed out last would run on alone while the other worker idles.
LONGEST_MODULES = ("test_replay.py", "test_flink.py", "test_pipeline.py", "test_real_100k.py",
                   "test_warm_start.py", "test_models.py", "test_client.py",
                   "test_sequence.py", "test_multi_worker.py", "test_recommend.py",
                   "test_transform.py", "test_two_stage.py")


def pytest_collection_modifyitems(items):
  for item in items:
    if SLOW_FIXTURES.intersection(item.fixturenames):
      item.add_marker(pytest.mark.slow)
  rank = {name: position for position, name in enumerate(LONGEST_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def requires(path: pathlib.Path):
  return pytest.mark.skipif(not path.is_dir(), reason=(
      f"real MovieLens files not found at {path} (set MOVIELENS_REAL_DATA); "
      "GroupLens forbids shipping them in the repo"))


def _sigint_as_from_a_terminal() -> None:
  signal.signal(signal.SIGINT, signal.SIG_DFL)


class CliProcess:
  """A `recsys COMMAND` process; its console lines are collected as they come."""

  def __init__(self, command, args, log_path):
    self.popen = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", command, *args], cwd=REPO,
        # As from a user's shell: without the suite's TensorFlow log setting.
        env={**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
             "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        # As from a terminal: a shell starts background jobs (a CI script run
        # with `&`) with SIGINT ignored, and the run would inherit that.
        preexec_fn=_sigint_as_from_a_terminal)
    self.lines = []
    self._reader = threading.Thread(target=self._read, args=(log_path,), daemon=True)
    self._reader.start()

  def _read(self, log_path):
    with open(log_path, "w", encoding="utf-8") as log:
      for line in self.popen.stdout:
        self.lines.append(line)
        log.write(line)
        log.flush()

  @property
  def output(self) -> str:
    return "".join(self.lines)

  def wait_for(self, pattern, timeout=300, since=0):
    """The first console line matching `pattern` (from line `since` on); fails if the
    run ends first, or prints nothing for `timeout` s: a busy machine slows a run
    down but does not silence it."""
    return self._wait(pattern, lambda: self.lines[since:], timeout)

  def wait_for_log(self, pattern, timeout=300):
    """The first line of the run's log file (named on its console) matching `pattern`."""
    log_file = pathlib.Path(re.search(r"logs in (\S+)$", self.wait_for(r"logs in \S+$"),
                                      re.MULTILINE).group(1))

    def lines():
      return log_file.read_text(errors="replace").splitlines() if log_file.exists() else []

    return self._wait(pattern, lines, timeout)

  def _wait(self, pattern, lines, timeout):
    printed = len(self.lines)
    deadline = time.monotonic() + timeout
    while True:
      if len(self.lines) > printed:
        printed = len(self.lines)
        deadline = time.monotonic() + timeout
      for line in lines():
        if re.search(pattern, line):
          return line
      if self.popen.poll() is not None and not self._reader.is_alive():
        raise AssertionError(f"the run ended (exit {self.popen.returncode}) before "
                             f"{pattern!r}:\n{self.output[-3000:]}")
      if time.monotonic() > deadline:
        raise AssertionError(f"no {pattern!r}, and no console line for {timeout} s:\n"
                             f"{self.output[-3000:]}")
      time.sleep(0.2)

  def finish(self, timeout=600) -> int:
    returncode = self.popen.wait(timeout=timeout)
    self._reader.join(timeout=30)
    return returncode

  def kill(self, signum) -> int:
    self.popen.send_signal(signum)
    return self.finish(timeout=120)


def cli_error(capsys, *argv: str) -> str:
  """The one `error:` line `recsys ARGV` prints as it fails (exit 1, no traceback)."""
  from pipeline import cli  # pylint: disable=g-import-not-at-top
  assert cli.main(list(argv)) == 1
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  return lines[0]


def built_once(tmp_path_factory, name: str, build: Callable[[pathlib.Path], Any]) -> Any:
  """`build(folder)`'s result, built once per test session however many
  pytest-xdist processes ask for it (as pytest-xdist's docs advise for costly
  session fixtures).

  The first process to ask builds it in a folder all of the session's processes
  share; the others wait for it (a file lock) and load the result it left
  (pickled). A build that failed is tried again by the next process that asks.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's folder, above each process's own
  folder, result = root / f"built-once-{name}", root / f"built-once-{name}.pickle"
  with open(root / f"built-once-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if result.exists():
      return pickle.loads(result.read_bytes())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    value = build(folder)
    result.write_bytes(pickle.dumps(value))
    return value


@pytest.fixture(scope="session")
def synthetic_1m(tmp_path_factory) -> synthetic.SyntheticRelease:
  """A small release in the MovieLens 1M layout (ratings.dat, users.dat, movies.dat)."""
  return synthetic.write_release(str(tmp_path_factory.mktemp("ml-1m")), "1m",
                                 num_users=150, num_movies=200, num_ratings=6000, seed=1)


@pytest.fixture(scope="session")
def synthetic_100k(tmp_path_factory) -> synthetic.SyntheticRelease:
  """A small release in the MovieLens 100K layout (u.data, u.user, u.item)."""
  return synthetic.write_release(str(tmp_path_factory.mktemp("ml-100k")), "100k",
                                 num_users=120, num_movies=150, num_ratings=5000, seed=2)


@pytest.fixture(scope="session")
def transformed_1m(synthetic_1m, tmp_path_factory):
  """The synthetic 1M-layout release, each rating with its history as ingested (one
  split), after the project's tf.Transform preprocessing."""
  from components.movielens_example_gen import parsing  # pylint: disable=g-import-not-at-top
  from testing import examples  # pylint: disable=g-import-not-at-top
  from tests import transform_fixture  # pylint: disable=g-import-not-at-top

  def build(folder):
    table = examples.with_histories(
        parsing.read_release(synthetic_1m.folder, parsing.LAYOUTS["1m"]))
    return transform_fixture.run_transform(transform_fixture.rows_from_table(table),
                                           str(folder))

  return built_once(tmp_path_factory, "transformed_1m", build)


def export_briefly_trained(model_name: str, transformed, export_dir: str) -> None:
  """The project's model, trained for a few eager steps, exported as the Trainer does."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from export import saved_model  # pylint: disable=g-import-not-at-top
  from models import cf  # pylint: disable=g-import-not-at-top
  from models import data  # pylint: disable=g-import-not-at-top
  from models import deepfm  # pylint: disable=g-import-not-at-top
  from models import features  # pylint: disable=g-import-not-at-top
  from models import hparams as hp  # pylint: disable=g-import-not-at-top
  from models import retrieval  # pylint: disable=g-import-not-at-top
  from models import runtime  # pylint: disable=g-import-not-at-top
  build = {"cf": cf.build, "deepfm": deepfm.build, "retrieval": retrieval.build}[model_name]
  raw_keys = {"cf": features.CF_RAW_FEATURES, "deepfm": features.DEEPFM_RAW_FEATURES,
              "retrieval": features.RETRIEVAL_RAW_FEATURES}
  hparams = hp.preset(model_name, "best")
  tf.keras.utils.set_random_seed(0)
  with runtime.precision_policy(runtime.uses_bfloat16(hparams)):
    model = build(data.vocabulary_sizes(transformed.output), hparams)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  inputs = {k: tf.constant(v[:2048]) for k, v in transformed.columns.items()
            if k != features.LABEL}
  labels = tf.constant(transformed.columns[features.LABEL][:2048])
  # 30 eager steps spread the probabilities over ~0.1-0.9; `fit` would first spend
  # ~15 s compiling its train function on these machines.
  for _ in range(30):
    model.train_step((inputs, labels))
  saved_model.export(model, transformed.output, raw_keys[model_name], export_dir,
                  train_examples=transformed.columns)


@pytest.fixture(scope="session")
def exported_models(transformed_1m, tmp_path_factory) -> pathlib.Path:
  """A TF Serving model base path: <base>/cf/1, <base>/deepfm/1 and
  <base>/retrieval/1, the project's models trained briefly on the synthetic 1M
  release, with every signature."""
  def build(base):
    for model_name in ("cf", "deepfm", "retrieval"):
      export_briefly_trained(model_name, transformed_1m, str(base / model_name / "1"))
    return base

  return built_once(tmp_path_factory, "exported_models", build)


# End-to-end runs: the Beam flags a small data set gets (configs.default_beam_args:
# one in-process worker, and this project's setup.py, without which TFX packages
# itself into an sdist for every Beam step), a few epochs, one pair of retrieval
# towers (the ensemble is tested in test_models.py and through exported_models),
# and a blessing floor the planted signal of a small synthetic set passes (its test
# AUC is ~0.7-0.85).
BRIEF_TRAINING = {"cf": {"epochs": 6}, "deepfm": {"epochs": 4},
                  "retrieval": {"epochs": 5, "towers": 1}}
E2E_AUC_FLOOR = 0.6
# The synthetic release of `finished_run`; write_release gives the same files each
# time. Users watch to their taste, so that there is something for retrieval to find.
E2E_RELEASE = {"layout": "1m", "num_users": 300, "num_movies": 400,
               "num_ratings": 20_000, "seed": 11, "watch_affinity": 3.0}
# What `finished_run` printed to the console (progress lines), by output folder.
RUN_CONSOLE = {}
# What it left in the private temporary folder it was handed, by output folder.
RUN_TEMPORARY_FILES = {}


def pipeline_config(data_dir, output_dir, dataset="1m", overrides=None):
  """The settings of an end-to-end test run."""
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  return configs.PipelineConfig(dataset=dataset, data_dir=str(data_dir),
                                output_dir=str(output_dir),
                                beam_args=configs.default_beam_args(),
                                overrides=overrides or {})


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
  """One full run on synthetic data, shared by the end-to-end modules: read-only.

  A test that reruns a pipeline copies it (`copy_of_finished_run`) or builds its
  own. The run gets a private temporary folder, so that what it leaves there is
  its own, whatever else the machine does meanwhile.
  """
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top

  def build(root):
    release = synthetic.write_release(str(root / "data"), **E2E_RELEASE)
    config = pipeline_config(root / "data", root / "run", overrides=BRIEF_TRAINING)
    config.auc_floor = E2E_AUC_FLOOR
    console = io.StringIO()
    private_tmp = root / "tmp"
    private_tmp.mkdir()
    with local_runner.temporary_folder(str(private_tmp)), \
        contextlib.redirect_stderr(console):
      summary = local_runner.run(config)
    return release, config, summary, console.getvalue(), sorted(os.listdir(private_tmp))

  release, config, summary, console, left = built_once(tmp_path_factory, "finished_run",
                                                       build)
  RUN_CONSOLE[config.output_dir] = console
  RUN_TEMPORARY_FILES[config.output_dir] = left
  return release, config, summary


def copy_of_finished_run(finished_run_value, folder: pathlib.Path):
  """`finished_run`'s run folder copied to `folder`, and its settings pointed there.

  Its ML Metadata still names the original's artifacts, which a rerun reads and
  reuses from the cache but never writes: new outputs go to the copy.
  """
  _, config, _ = finished_run_value
  shutil.copytree(config.output_dir, folder)
  copy = pipeline_config(config.data_dir, folder, overrides=BRIEF_TRAINING)
  copy.auc_floor = config.auc_floor
  return copy
