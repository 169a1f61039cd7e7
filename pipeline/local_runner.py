"""Runs the pipeline here: LocalDagRunner, SQLite ML Metadata, Beam (DirectRunner by default).

The console shows one line per stage and its time; TFX's and Beam's own logs go
to `<output_dir>/logs/run-<time>.log`.

Before any component runs: the output and serving folders must be writable and
the disk must have the configured free space (`preflight`), and the run takes the
output folder's lock (`run_lock`), so two runs never share an ML Metadata store.
A run that was killed leaves its current execution RUNNING in ML Metadata, with
nothing of it published; the next run marks such executions CANCELED, deletes
their unpublished output folders, and reuses every completed component from the
cache.
"""
import contextlib
import dataclasses
import datetime
import glob
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional

from absl import logging as absl_logging
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.orchestration import metadata
from tfx.orchestration.portable import launcher

from components import model_report
from components import progress
from pipeline import configs
from pipeline import pipeline as pipeline_dsl
from pipeline import preflight
from pipeline import run_lock
from pipeline import run_store

_STATES = {metadata_store_pb2.Execution.COMPLETE: "done",
           metadata_store_pb2.Execution.CACHED: "cached",
           metadata_store_pb2.Execution.FAILED: "failed",
           metadata_store_pb2.Execution.RUNNING: "running",
           metadata_store_pb2.Execution.CANCELED: "canceled"}


class _StageProgress:
  """Prints a line when each component starts and ends, and how long it took.

  Wraps TFX's component launcher for the duration of a run instead of watching
  its log lines: TensorFlow's SavedModel export and absl flag parsing reset absl's
  verbosity mid-run, TFX's INFO records then stopped, and with them the progress.
  """

  def __init__(self, node_ids: List[str], before_each: Callable[[], None]):
    self._node_ids = node_ids
    self._before_each = before_each

  @contextlib.contextmanager
  def installed(self) -> Iterator[None]:
    original_launch = launcher.Launcher.launch
    original_prepare = launcher.Launcher._prepare_execution  # pylint: disable=protected-access
    node_ids, before_each = self._node_ids, self._before_each

    def prepare(component_launcher, *args, **kwargs):
      result = original_prepare(component_launcher, *args, **kwargs)
      component_launcher.recsys_cached = not result.is_execution_needed
      return result

    def launch(component_launcher):
      node_id = component_launcher._pipeline_node.node_info.id  # pylint: disable=protected-access
      position = (f"{node_ids.index(node_id) + 1}/{len(node_ids)}"
                  if node_id in node_ids else "-")
      before_each()
      progress.report(f"stage {position}", f"{node_id} running")
      started = time.monotonic()
      try:
        result = original_launch(component_launcher)
      except BaseException:
        progress.report(f"stage {position}", f"{node_id} failed after "
                        f"{time.monotonic() - started:.1f} s")
        raise
      how = ("reused from cache" if getattr(component_launcher, "recsys_cached", False)
             else "done")
      progress.report(f"stage {position}",
                      f"{node_id} {how} in {time.monotonic() - started:.1f} s")
      return result

    launcher.Launcher.launch = launch
    launcher.Launcher._prepare_execution = prepare  # pylint: disable=protected-access
    try:
      yield
    finally:
      launcher.Launcher.launch = original_launch
      launcher.Launcher._prepare_execution = original_prepare  # pylint: disable=protected-access


# Console warnings that say nothing to a user (they still go to the log file).
_NOISE = ("ArtifactQuery.property_predicate is not supported",)


def _not_noise(record: logging.LogRecord) -> bool:
  return not any(text in str(record.msg) for text in _NOISE)


@contextlib.contextmanager
def _logs_to_file(log_path: str) -> Iterator[Callable[[], None]]:
  """Sends INFO logs to `log_path`, keeps the console to warnings and progress.

  Yields a function that re-applies the INFO level (see _StageProgress), called
  before each component.
  """
  root = logging.getLogger()
  saved_level = root.level
  saved_handler_levels = [(h, h.level) for h in root.handlers]
  for handler in root.handlers:
    handler.setLevel(max(handler.level, logging.WARNING))
    handler.addFilter(_not_noise)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  file_handler = logging.FileHandler(log_path)
  file_handler.setLevel(logging.INFO)
  file_handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(name)s: %(message)s"))
  root.addHandler(file_handler)
  # Through absl's verbosity flag, not the absl logger's level: TensorFlow's
  # SavedModel export sets the flag to FATAL and back, and Transform's flag parsing
  # resets it, which would drop TFX's INFO records from the log file.
  saved_verbosity = absl_logging.get_verbosity()

  def log_info():
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)

  log_info()
  try:
    yield log_info
  finally:
    root.removeHandler(file_handler)
    file_handler.close()
    root.setLevel(saved_level)
    absl_logging.set_verbosity(saved_verbosity)
    for handler, level in saved_handler_levels:
      handler.setLevel(level)
      handler.removeFilter(_not_noise)


@contextlib.contextmanager
def _run_temp_dir(output_dir: str) -> Iterator[str]:
  """Points temporary files of this process and its children into the run folder.

  TFX, Beam and TensorFlow's AutoGraph leave files in the temporary folder (42 MB
  of packaging per Beam step, one file per traced function); in `<output_dir>/.tmp`
  they are deleted when the run ends, however it ends.
  """
  path = os.path.join(output_dir, ".tmp", f"run-{os.getpid()}")
  os.makedirs(path, exist_ok=True)
  saved_environment, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
  os.environ["TMPDIR"] = tempfile.tempdir = path
  try:
    yield path
  finally:
    tempfile.tempdir = saved_tempdir
    if saved_environment is None:
      os.environ.pop("TMPDIR", None)
    else:
      os.environ["TMPDIR"] = saved_environment
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _set_tensorflow_threads(cores: int) -> None:
  """One TensorFlow thread pool as wide as the cores this process may use.

  TensorFlow sizes its pools by the machine's cores, not by the CPU affinity or
  container limits the process runs under. It must happen before TensorFlow first
  runs an op; a process that already ran one keeps its pools.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
  except RuntimeError:
    logging.info("TensorFlow already initialised; keeping its thread pools")


@dataclasses.dataclass
class ComponentRun:
  """One component's execution in a run, as ML Metadata recorded it."""
  node_id: str
  state: str
  seconds: float


@dataclasses.dataclass
class RunSummary:
  """What a finished run did, read back from ML Metadata."""
  output_dir: str
  run_id: str
  components: List[ComponentRun]
  split_counts: Dict[str, int]
  log_path: Optional[str] = None
  report_path: Optional[str] = None

  def table(self) -> str:
    lines = [f"{'component':<28} {'state':<8} {'seconds':>8}"]
    for c in self.components:
      lines.append(f"{c.node_id:<28} {c.state:<8} {c.seconds:>8.1f}")
    if self.split_counts:
      lines.append("examples: " + ", ".join(
          f"{split} {count:,}" for split, count in self.split_counts.items()))
    return "\n".join(lines)


def summarize_run(config: configs.PipelineConfig) -> RunSummary:
  """Per-component state and wall time of the latest run, from ML Metadata."""
  connection = metadata.sqlite_metadata_connection_config(config.metadata_path)
  with metadata.Metadata(connection) as m:
    store = m.store
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
      raise RuntimeError(f"{config.metadata_path}: no pipeline run recorded")
    latest = max(runs, key=lambda c: c.create_time_since_epoch)
    components = []
    for execution in sorted(store.get_executions_by_context(latest.id),
                            key=lambda e: e.create_time_since_epoch):
      node_ids = run_store.execution_node_ids(store, execution.id)
      seconds = (execution.last_update_time_since_epoch
                 - execution.create_time_since_epoch) / 1000
      components.append(ComponentRun(
          node_ids[0] if node_ids else str(execution.type),
          _STATES.get(execution.last_known_state, "unknown"), seconds))
    split_counts = {}
    for artifact in store.get_artifacts_by_context(latest.id):
      if "split_counts" in artifact.custom_properties:
        split_counts = json.loads(
            artifact.custom_properties["split_counts"].string_value)
  return RunSummary(config.output_dir, latest.name, components, split_counts)


def publish_report(config: configs.PipelineConfig) -> Optional[str]:
  """Copies the latest ModelReport (all but its TensorBoard logs) to `<output_dir>/report/`.

  Returns the published metrics.json, or None when the run made no report.
  """
  report = run_store.RunStore(config.output_dir).latest_artifact(
      model_report.ReportArtifact.TYPE_NAME)
  if report is None:
    return None
  target = os.path.join(config.output_dir, "report")
  shutil.rmtree(target, ignore_errors=True)
  if configs.is_uri(report.uri):  # a pipeline root in a bucket
    _download_folder(report.uri, target, skip=model_report.TENSORBOARD_DIR)
  else:
    shutil.copytree(report.uri, target,
                    ignore=shutil.ignore_patterns(model_report.TENSORBOARD_DIR))
  return os.path.join(target, model_report.METRICS_FILE)


def _download_folder(uri: str, target: str, skip: str) -> None:
  """Copies the files under `uri` (gs://...) to the local `target`, but not `skip/`."""
  for folder, _, files in fileio.walk(uri):
    relative = folder[len(uri):].strip("/")
    if relative.split("/")[0] == skip:
      continue
    os.makedirs(os.path.join(target, relative), exist_ok=True)
    for name in files:
      fileio.copy(f"{folder.rstrip('/')}/{name}", os.path.join(target, relative, name))


def cancel_interrupted_executions(config: configs.PipelineConfig) -> List[str]:
  """Marks executions a killed run left RUNNING as CANCELED; returns their node ids.

  Only called while holding the run lock, so no live run owns them. TFX never
  reuses them (each run has its own pipeline_run context) and never published
  their outputs, whose folders (`<pipeline_root>/<node>/<key>/<execution id>`) are
  deleted here: half-written data nothing refers to.
  """
  if not os.path.exists(config.metadata_path):
    return []
  interrupted = []
  connection = metadata.sqlite_metadata_connection_config(config.metadata_path)
  with metadata.Metadata(connection) as m:
    store = m.store
    for execution in store.get_executions():
      if execution.last_known_state not in (metadata_store_pb2.Execution.NEW,
                                            metadata_store_pb2.Execution.RUNNING):
        continue
      node_ids = run_store.execution_node_ids(store, execution.id)
      execution.last_known_state = metadata_store_pb2.Execution.CANCELED
      store.put_executions([execution])
      for node_id in node_ids:
        node_dir = os.path.join(config.pipeline_root, node_id)
        for folder in (glob.glob(os.path.join(node_dir, "*", str(execution.id)))
                       + glob.glob(os.path.join(node_dir, ".system", "*",
                                                str(execution.id)))):
          shutil.rmtree(folder, ignore_errors=True)
      interrupted.extend(node_ids)
  return interrupted


def run(config: configs.PipelineConfig) -> RunSummary:
  """Runs the pipeline end to end and returns what ML Metadata recorded.

  Raises PreflightError (before anything runs) for an unusable folder or a full
  disk, and RunLockedError while another run uses the output folder.
  """
  preflight.ensure_writable_folder(config.output_dir, "output folder")
  with run_lock.hold(config.output_dir):
    preflight.ensure_free_space(config.output_dir, config.min_free_gb)
    preflight.ensure_writable_folder(config.serving_dir, "serving folder")
    return _run_locked(config)


def _run_locked(config: configs.PipelineConfig) -> RunSummary:
  tfx_pipeline = pipeline_dsl.create_pipeline(config)
  node_ids = [c.id for c in tfx_pipeline.components]
  interrupted = cancel_interrupted_executions(config)
  if interrupted:
    progress.report("run", "an earlier run was interrupted in "
                    f"{', '.join(interrupted)}; resuming from its completed stages")
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  log_path = os.path.join(config.output_dir, "logs", f"run-{stamp}.log")
  progress.report("run", f"{config.pipeline_name}: {len(node_ids)} stages, output in "
                  f"{config.output_dir}, logs in {log_path}")
  _set_tensorflow_threads(configs.available_cores())
  with _run_temp_dir(config.output_dir), _logs_to_file(log_path) as log_info, \
      _StageProgress(node_ids, before_each=log_info).installed(), \
      warnings.catch_warnings():
    # TFMA divides by zero for empty slices and thresholds; the numbers are NaN by design.
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            module="tensorflow_model_analysis")
    try:
      tfx.orchestration.LocalDagRunner().run(tfx_pipeline)
    except KeyboardInterrupt:
      # Ctrl-C: record the stopped execution as CANCELED at once, then stop.
      cancel_interrupted_executions(config)
      raise
  summary = summarize_run(config)
  summary.log_path = log_path
  summary.report_path = publish_report(config)
  return summary
