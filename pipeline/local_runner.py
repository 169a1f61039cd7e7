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
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Iterator, List, Set, Tuple

from common import progress
from components.movielens_example_gen import parsing
from components.movielens_example_gen import sources
from components.movielens_example_gen import spans
from pipeline import configs
from pipeline import preflight
from pipeline import run_lock

# Ratings per shard of the in-process pass that finds the spans.
_LINES_PER_SHARD = 100_000


@contextlib.contextmanager
def temporary_folder(folder: str) -> Iterator[str]:
  """TMPDIR (for child processes) and Python's tempfile point at `folder` inside."""
  saved_environment, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
  os.environ["TMPDIR"] = tempfile.tempdir = folder
  try:
    yield folder
  finally:
    tempfile.tempdir = saved_tempdir
    if saved_environment is None:
      os.environ.pop("TMPDIR", None)
    else:
      os.environ["TMPDIR"] = saved_environment


@contextlib.contextmanager
def _run_temp_dir(output_dir: str) -> Iterator[str]:
  """Points temporary files of this process and its children into the run folder.

  TFX, Beam and TensorFlow's AutoGraph leave files in the temporary folder (a
  package per Beam step, one file per traced function); in `<output_dir>/.tmp`
  they are deleted when the run ends, however it ends.
  """
  path = os.path.join(output_dir, ".tmp", f"run-{os.getpid()}")
  os.makedirs(path, exist_ok=True)
  try:
    with temporary_folder(path):
      yield path
  finally:
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@contextlib.contextmanager
def _this_python_first_on_path() -> Iterator[None]:
  """`python` on PATH is this process's interpreter inside the block.

  Beam's loopback worker pool starts each SDK worker process as plain `python`
  (worker_pool_main, `use_loopback_process_worker`), which outside an activated
  environment is some other interpreter without Beam: its workers die at start and
  the engine's tasks wait for them for ever. The local Spark cluster's flags use that
  pool (engines/spark.py); the Flink cluster's PROCESS workers need nothing on PATH.
  """
  saved = os.environ.get("PATH", "")
  os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), saved])
  try:
    yield
  finally:
    os.environ["PATH"] = saved


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


def run(config: configs.PipelineConfig, verbose: bool = False):
  """Runs the pipeline end to end and returns what ML Metadata recorded (a RunSummary).

  The console shows our progress lines; third-party logs and warnings go to the
  run's log file, and with `verbose` their warnings to the console as well.

  Raises, before anything runs or TensorFlow loads: MovieLensDataError when the
  data is missing, PreflightError for an unusable folder or a full disk, and
  RunLockedError while another run uses the output folder.
  """
  sources.check_available(config.dataset, config.data_dir)
  preflight.ensure_writable_folder(config.output_dir, "output folder")
  with run_lock.hold(config.output_dir):
    preflight.ensure_free_space(config.output_dir, config.min_free_gb)
    preflight.ensure_writable_folder(config.serving_dir, "serving folder")
    preflight.ensure_beam_engine(config.beam_args)
    return _run_locked(config, verbose)


def span_plan(config: configs.PipelineConfig) -> Tuple[str, spans.SpanPlan]:
  """The ratings file and its spans of the configured length, up to `config.until`
  (one pass over the ratings' timestamps)."""
  source = sources.resolve(config.dataset, config.data_dir, config.download_dir)
  layout = parsing.LAYOUTS[config.dataset]
  shards = parsing.plan_ratings_shards(f"{source.folder}/{layout.ratings_file}",
                                       _LINES_PER_SHARD, layout.ratings_header)
  keys = parsing.read_rating_keys(shards, layout, parsing.read_users(source.folder, layout),
                                  parsing.read_movies(source.folder, layout))
  return shards[0].path, spans.SpanPlan.of(
      keys.timestamps, spans.SpanLength(config.span_days, config.span_months),
      spans.end_of_day(config.until))


def window(plan: spans.SpanPlan, span: int, window_spans: int) -> List[int]:
  """The spans with ratings a run of `span` learns from (all before it, or the last
  `window_spans` of them)."""
  earlier = [n for n in plan.with_ratings if n < span]
  return earlier[-window_spans:] if window_spans else earlier


def _plan_spans(config: configs.PipelineConfig
                ) -> Tuple[configs.PipelineConfig, List[configs.PipelineConfig]]:
  """Continuous training: the run's span, and the ingestions its window needs first.

  One pass over the ratings' timestamps finds the spans. Each span of the window
  is ingested by a run of its own (ingestion and statistics only, under the whole
  pipeline's node ids), so that the whole run's rolling range finds it in ML
  Metadata. A span whose ingestion an earlier run finished (its Examples, whole,
  and their statistics) is not run again, not even as a cache hit: a late span of
  a long replay would otherwise spend a second per earlier span on it, and a
  ratings file that grew since (its fingerprint keys the cache) would have every
  earlier span read again. Empty spans are reported and skipped. Returns the whole
  run's settings (its span by number, and `until` only where it ends that span
  early: a complete span's ingestion does not depend on it) and those of each
  ingestion still to run, oldest span first.
  """
  ratings_path, plan = span_plan(config)
  until = spans.end_of_day(config.until)
  try:
    span = plan.choose(config.span)
  except spans.EmptySpanError as e:
    raise parsing.MovieLensDataError(f"{ratings_path}: {e}") from None
  _refuse_going_back(config, plan.cutter.length, span)
  earlier = window(plan, span.number, config.window_spans)
  if not earlier:
    raise parsing.MovieLensDataError(
        f"{ratings_path}: {span.describe()} has no span with ratings before it to "
        "learn from; start at a later span")
  empty = [n for n, count in plan.counts.items()
           if not count and earlier[0] < n < span.number]
  done = _spans_with_statistics(config)
  progress.report("spans", f"this run: {span.describe()}, {plan.counts[span.number]:,} "
                  f"ratings; it learns from {len(earlier)} span(s) before it, "
                  f"{plan.cutter.span(earlier[0]).first_day} to "
                  f"{plan.cutter.span(earlier[-1]).last_day}"
                  + (f" (empty, skipped: span {', '.join(map(str, empty))})" if empty else "")
                  + f"; {len(done.intersection(earlier))} of them ingested before")
  run_config = dataclasses.replace(
      config, span=span.number,
      until=config.until if until is not None and until < span.end else None)
  ingestions = [dataclasses.replace(config, span=number, until=None)
                for number in earlier if number not in done]
  return run_config, ingestions


def _spans_with_statistics(config: configs.PipelineConfig) -> Set[int]:
  store = _store_if_any(config)
  return store.spans_with_statistics() if store else set()


def _store_if_any(config: configs.PipelineConfig):
  """The output folder's ML Metadata (a run_store.RunStore), None before its first run."""
  if not os.path.isfile(config.metadata_path):
    return None
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  return run_store.RunStore(config.output_dir)


def _refuse_going_back(config: configs.PipelineConfig, length: spans.SpanLength,
                       span: spans.Span) -> None:
  """A span run may only go forward in time in its folder, with the folder's spans.

  Its window is every span the folder holds before the newest one: run after a
  later span, it would learn from the very span it is judged on (and from later
  ones); with spans of another length, or beside a run without spans, the numbers
  would mix different cuts of the ratings.
  """
  store = _store_if_any(config)
  if store is None:
    return
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  held = store.ingested_spans()
  other_cuts = sorted({cut for cut in held.values() if cut != str(length)})
  if other_cuts:
    what = ", ".join(f"spans of {cut}" if cut else "a run without spans"
                     for cut in other_cuts)
    raise run_store.RunFolderError(
        f"{config.output_dir} holds {what}, not spans of {length}: each folder keeps "
        "one cut of the ratings; use another --output-dir")
  newest = max(held, default=-1)
  if newest > span.number:
    raise run_store.RunFolderError(
        f"{config.output_dir} already holds span {newest}, after {span.describe()}: "
        "a run learns from every span its folder holds before the newest one, so it "
        "would learn from what it is judged on. Runs go forward in time in a folder; "
        "run an earlier span in another --output-dir")


def _run_locked(config: configs.PipelineConfig, verbose: bool):
  # TFX and TensorFlow load here, after the checks above have had their say in
  # seconds: missing data, an unusable folder, a full disk, a busy folder.
  from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # pylint: disable=g-import-not-at-top

  from pipeline import console  # pylint: disable=g-import-not-at-top
  from pipeline import pipeline as pipeline_dsl  # pylint: disable=g-import-not-at-top
  from pipeline import run_state  # pylint: disable=g-import-not-at-top
  ingestions = []
  if config.spans_enabled:
    config, ingestions = _plan_spans(config)
  tfx_pipeline = pipeline_dsl.create_pipeline(config)
  node_ids = [c.id for c in tfx_pipeline.components]
  interrupted = run_state.cancel_interrupted_executions(config)
  if interrupted:
    progress.report("run", "an earlier run was interrupted in "
                    f"{', '.join(interrupted)}; resuming from its completed stages")
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  log_path = os.path.join(config.output_dir, "logs", f"run-{stamp}.log")
  progress.report("run", f"{config.pipeline_name}: {len(node_ids)} stages, output in "
                  f"{config.output_dir}, logs in {log_path}")
  _set_tensorflow_threads(configs.available_cores())
  with _run_temp_dir(config.output_dir), _this_python_first_on_path(), \
      console.run_output(log_path, verbose) as log_info, \
      console.StageProgress(node_ids, before_each=log_info).installed(), \
      warnings.catch_warnings():
    # TFMA divides by zero for empty slices and thresholds; the numbers are NaN by design.
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            module="tensorflow_model_analysis")
    try:
      for position, ingestion in enumerate(ingestions, 1):
        progress.report("spans", f"ingesting span {ingestion.span} ({position} of "
                        f"{len(ingestions)}), unless an earlier run did")
        LocalDagRunner().run(
            pipeline_dsl.create_pipeline(ingestion, ingestion_only=True))
      LocalDagRunner().run(tfx_pipeline)
    except KeyboardInterrupt:
      # Ctrl-C: record the stopped execution as CANCELED at once, then stop.
      run_state.cancel_interrupted_executions(config)
      raise
  summary = run_state.summarize_run(config)
  summary.log_path = log_path
  summary.report_path = run_state.publish_report(config)
  return summary
