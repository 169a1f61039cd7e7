"""Continuous training end to end: `recsys replay` over four synthetic spans, and what
becomes of a replay that is interrupted, or started twice, on the way.

Each span's run ingests it, learns from the spans before it (warm-started from
the last models) and is judged on it. The replay judges spans 2 and 3 (`--from`);
the first run ingests spans 0 and 1 as its window. Real `recsys replay` processes
(conftest's `CliProcess`) end each way a run can end badly, and each is started
again with the same command: SIGKILLed in span 2's Transform (while a second replay
on the same folder is refused), stopped by Ctrl-C in span 2's CF Trainer, and
SIGKILLed in the middle of span 3's CF Pusher's copy, with span 2's models already
served. The last resumes here to the end.
"""
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import re
import signal
import time
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tensorboard.backend.event_processing import event_accumulator
from tfx.orchestration import metadata

from components import drift
from components import pusher
from models import features
from pipeline import cli
from pipeline import configs
from pipeline import replay
from pipeline import run_state
from pipeline import run_store
from pipeline import tensorboard
from pipeline import timeline
from testing import synthetic
from tests.conftest import BRIEF_TRAINING
from tests.conftest import E2E_AUC_FLOOR
from tests.conftest import CliProcess
from tests.conftest import cli_error
from tests.conftest import pipeline_config
from tests.test_pipeline import _states

pytestmark = pytest.mark.e2e

# The synthetic release's ratings run from 2000-04 to 2003-02: four spans of nine
# months, from 2000-04, 2001-01, 2001-10 and 2002-07.
EVERY = "9m"
FIRST_JUDGED = 2
SPAN_STARTS = ["2000-04-01", "2001-01-01", "2001-10-01", "2002-07-01", "2003-04-01"]
RELEASE = {"layout": "1m", "num_users": 150, "num_movies": 200, "num_ratings": 6_000,
           "seed": 5, "watch_affinity": 3.0}
MODELS = ("cf", "deepfm", "recommender")
# The stages of a span's run before Transform that run on its data.
BEFORE_TRANSFORM = ["MovieLensExampleGen", "StatisticsGen", "DriftValidator",
                    "ExampleValidator", "AnomaliesGate"]
# Ctrl-C in the CF Trainer: trained this long, it is still in `fit` when the signal
# lands (6 epochs of the small set take about a second once the first is traced).
LONG_CF = ["--set", "cf.epochs=2000", "--set", "cf.early_stopping_patience=0"]


def _cli_args(data_dir, output_dir):
  args = ["--dataset", "1m", "--data-dir", str(data_dir), "--output-dir", str(output_dir),
          "--every", EVERY, "--from", SPAN_STARTS[FIRST_JUDGED],
          "--beam-arg=--direct_num_workers=1",
          "--auc-floor", str(E2E_AUC_FLOOR)]
  for model, overrides in BRIEF_TRAINING.items():
    for name, value in overrides.items():
      args += ["--set", f"{model}.{name}={value}"]
  return args


def _executions(config, node: str, states=(metadata_store_pb2.Execution.COMPLETE,)):
  """Per execution of `node` in `states` (oldest first): (artifacts read, written)."""
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      config.metadata_path)) as m:
    store = m.store
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    runs = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
      if (run_store.execution_node_ids(store, execution.id) != [node]
          or execution.last_known_state not in states):
        continue
      events = store.get_events_by_execution_ids([execution.id])
      read, wrote = ([(type_names[a.type_id], a) for a in store.get_artifacts_by_id(
          [e.artifact_id for e in events if e.type == kind])]
          for kind in (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.OUTPUT))
      runs.append((read, wrote))
    return runs


def _spans_read_by(config, node: str, kind: str = "Examples"):
  return [sorted(a.properties["span"].int_value for k, a in read if k == kind)
          for read, _ in _executions(config, node)]


def _expected_counts(release) -> list:
  """Ratings per span, counted from the release's own timestamps."""
  seconds = [np.datetime64(day).astype("datetime64[s]").astype(np.int64)
             for day in SPAN_STARTS]
  timestamps = np.array([int(line.split("::")[3]) for line in pathlib.Path(
      release.folder, "ratings.dat").read_text().splitlines()])
  return [int(((timestamps >= a) & (timestamps < b)).sum())
          for a, b in zip(seconds, seconds[1:])]


def _live_outputs(config, node: str) -> list:
  """The live artifacts that executions of `node`, in any state, output."""
  every_state = tuple(metadata_store_pb2.Execution.State.values())
  return [a for _, wrote in _executions(config, node, every_state) for _, a in wrote
          if a.state == metadata_store_pb2.Artifact.LIVE]


def _files(folder: pathlib.Path) -> Dict[str, int]:
  return {str(p.relative_to(folder)): p.stat().st_size
          for p in folder.rglob("*") if p.is_file()}


def _serving_folders(config, model) -> List[str]:
  """The model's folders in the serving folder: versions and pushes under way (its
  model card files lie beside them)."""
  folder = pathlib.Path(config.serving_model_dir(model))
  return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _whole_versions(config) -> bool:
  """Whether every numbered version folder holds a whole SavedModel (TF Serving may
  load any of them)."""
  return all({"saved_model.pb", "fingerprint.pb", "variables/variables.index"} <= set(
      _files(pathlib.Path(config.serving_model_dir(model)) / version))
             for model in ("cf", "deepfm")
             for version in pusher.pushed_versions(config.serving_model_dir(model)))


def _served_model_dirs(config, model) -> List[pathlib.Path]:
  """What `Pusher.<model>` pushes, ServedModelBuilder's SavedModels, oldest first."""
  runs = pathlib.Path(config.pipeline_root, f"ServedModelBuilder.{model}",
                      "served_model").iterdir()
  return [run / "Format-Serving" for run in sorted(runs, key=lambda p: int(p.name))]


@dataclasses.dataclass
class Stopped:
  """A replay stopped or refused, and what ML Metadata and the run folder held right
  after."""
  console: str
  returncode: int
  states: Dict[str, str] = dataclasses.field(default_factory=dict)
  serving_cf: List[str] = dataclasses.field(default_factory=list)
  extra: Dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Replayed:
  release: synthetic.SyntheticRelease
  config: configs.PipelineConfig
  refused: Stopped  # a second replay started on the folder while the first held it
  in_transform: Stopped  # SIGKILL, in span 2
  in_trainer: Stopped  # SIGINT in the CF Trainer (LONG_CF), in span 2
  in_pusher: Stopped  # SIGKILL in the middle of the CF Pusher's copy, in span 3
  timeline_at_kill: dict  # when it was killed in span 3
  resumed_console: str
  resumed: timeline.Timeline


def _stopped(process: CliProcess, config, returncode: int, **extra) -> Stopped:
  return Stopped(process.output, returncode, _states(run_state.summarize_run(config)),
                 _serving_folders(config, "cf"), extra)


def _replay_here(args) -> Stopped:
  """`recsys replay ARGS` in this process."""
  console = io.StringIO()
  with contextlib.redirect_stderr(console), contextlib.redirect_stdout(console):
    returncode = cli.main(["replay", *args])
  return Stopped(console.getvalue(), returncode)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Replayed:
  """The replay, stopped three times (twice in span 2, once in span 3) and refused
  once, each time started again with the same command; resumed here to the end."""
  root = tmp_path_factory.mktemp("replay")
  release = synthetic.write_release(str(root / "data"), **RELEASE)
  config = pipeline_config(root / "data", root / "run", overrides=BRIEF_TRAINING)
  config.auc_floor = E2E_AUC_FLOOR
  args = _cli_args(release.folder, config.output_dir)
  started = []

  def start(name, extra=()):
    started.append(CliProcess("replay", [*args, *extra], root / f"{name}.log"))
    return started[-1]

  try:
    # A second replay on the same folder is refused while the first runs; the first
    # is SIGKILLed in Transform. Paused (SIGSTOP) while the second runs and is
    # refused, so that the first is still before Transform afterwards.
    first = start("killed-in-transform")
    first.wait_for(r"stage \d+/\d+: MovieLensExampleGen running")
    first.popen.send_signal(signal.SIGSTOP)
    try:
      refused = _replay_here(args)
      refused.extra["holder_pid"] = first.popen.pid
    finally:
      first.popen.send_signal(signal.SIGCONT)
    first.wait_for(r"stage \d+/\d+: Transform running")
    # tf.Transform's executor logs this as it starts analysing the train split.
    first.wait_for_log(r"Not using the in-place Transform")
    transform_ended = "Transform done" in first.output
    in_transform = _stopped(first, config, first.kill(signal.SIGKILL),
                            transform_ended_first=transform_ended,
                            published_by_transform=len(_live_outputs(config, "Transform")),
                            half_written=[str(folder) for folder in pathlib.Path(
                                config.pipeline_root, "Transform").glob("*/*")
                                          if folder.name.isdigit()])

    # Ctrl-C in the CF Trainer of the resumed run.
    second = start("interrupted-in-trainer", LONG_CF)
    second.wait_for(r"train cf: epoch 1/")
    in_trainer = _stopped(second, config, second.kill(signal.SIGINT),
                          published_by_cf=len(_live_outputs(config, "Trainer.cf")))

    # Span 2 to its end, then SIGKILL in the middle of span 3's CF Pusher's copy, with
    # span 2's CF already served: a FIFO in the pushed model's folder holds the copy
    # there (reading it blocks).
    third = start("killed-in-pusher")
    third.wait_for(r"replay: span 2 in \d+ s: cf auc")
    third.wait_for(r"replay: span 3 \(2002-07-01 to 2003-03-31\), 2 of 2")
    third.wait_for(r"ServedModelBuilder\.cf done", since=len(third.lines))
    hold = _served_model_dirs(config, "cf")[-1] / "hold-the-copy"
    os.mkfifo(hold)
    pushing = len(third.lines)
    third.wait_for(r"Pusher\.cf running", since=pushing)
    serving_cf = pathlib.Path(config.serving_model_dir("cf"))
    deadline = time.monotonic() + 120
    # Until the copy into the temporary folder has begun: some files in, the FIFO not.
    while not any(name.startswith(pusher.TEMPORARY_PREFIX) and any(
        (serving_cf / name).iterdir()) for name in _serving_folders(config, "cf")):
      assert not re.search(r"Pusher\.cf done", "".join(third.lines[pushing:])), (
          "span 3's CF was not pushed (not blessed?):\n" + third.output[-2000:])
      assert time.monotonic() < deadline, third.output[-2000:]
      time.sleep(0.2)
    in_pusher = _stopped(third, config, third.kill(signal.SIGKILL),
                         whole_versions=_whole_versions(config),
                         half_copied=[name for name in _serving_folders(config, "cf")
                                      if name.startswith(pusher.TEMPORARY_PREFIX)
                                      and any((serving_cf / name).iterdir())])
    hold.unlink()
  finally:
    for process in started:
      if process.popen.poll() is None:
        process.kill(signal.SIGKILL)
  at_kill = json.loads((pathlib.Path(config.output_dir) / "report" /
                        timeline.TIMELINE_FILE).read_text())
  # The same command again, in this process. (Its settings, Beam's included, must be
  # the killed run's: they are part of every stage's cache key.)
  resumed = _replay_here(args)
  assert resumed.returncode == 0, resumed.console[-3000:]
  on_disk = json.loads((pathlib.Path(config.output_dir) / "report" /
                        timeline.TIMELINE_FILE).read_text())
  return Replayed(release, config, refused, in_transform, in_trainer, in_pusher, at_kill,
                  resumed.console, timeline.Timeline(on_disk["settings"], on_disk["spans"]))


def test_a_second_replay_on_the_folder_is_refused_while_one_runs(replayed):
  refused = replayed.refused
  assert refused.returncode == 1
  assert re.search(rf"^error: {re.escape(replayed.config.output_dir)} is in use by another "
                   rf"run \(pid {refused.extra['holder_pid']}, started [-0-9T:+]+\); wait "
                   "for it to finish", refused.console, re.MULTILINE), refused.console[-2000:]
  assert "Traceback" not in refused.console


def test_a_run_killed_in_transform_registers_nothing_and_its_files_go(replayed):
  killed = replayed.in_transform
  assert not killed.extra["transform_ended_first"], "Transform ended before the kill"
  assert killed.returncode == -signal.SIGKILL
  assert [killed.states[node] for node in BEFORE_TRANSFORM] == ["done"] * 5
  assert killed.states["Transform"] == "running"  # what a kill leaves in ML Metadata
  assert killed.extra["published_by_transform"] == 0
  assert not killed.serving_cf
  # Its output folders (<key>/<execution id>), never registered, are deleted by the
  # next run on the folder, which resumes it.
  assert killed.extra["half_written"]
  assert not [folder for folder in killed.extra["half_written"] if os.path.exists(folder)]
  assert "an earlier run was interrupted in Transform; resuming" in (
      replayed.in_trainer.console)


def test_a_trainer_stopped_by_ctrl_c_is_canceled_and_never_reused(replayed):
  stopped, config = replayed.in_trainer, replayed.config
  assert stopped.returncode == 130
  assert "interrupted: run the same command again to resume" in stopped.console
  assert "Traceback" not in stopped.console
  assert [stopped.states[node] for node in BEFORE_TRANSFORM] == ["cached"] * 5
  assert stopped.states["Transform"] == "done"
  assert stopped.states["Trainer.cf"] == "canceled"
  assert stopped.extra["published_by_cf"] == 0
  # The Evaluators judged (as candidate or baseline) the models of the complete
  # Trainer runs, one per span, and nothing else: the canceled one left none.
  trained = {a.id for _, wrote in _executions(config, "Trainer.cf")
             for kind, a in wrote if kind == "Model"}
  judged = {a.id for read, _ in _executions(config, "Evaluator.cf")
            for kind, a in read if kind == "Model"}
  assert judged == trained and len(trained) == 2


def test_a_push_killed_midway_leaves_the_served_versions_whole(replayed):
  killed, config = replayed.in_pusher, replayed.config
  assert killed.returncode == -signal.SIGKILL
  assert killed.states["Pusher.cf"] == "running"
  assert killed.states["Trainer.cf"] == "done"
  # Span 2's version, whole, and a half-copied temporary folder that is no version.
  copying, version = killed.serving_cf  # sorted: "." before digits
  assert version.isdigit() and copying.startswith(pusher.TEMPORARY_PREFIX), killed.serving_cf
  assert killed.extra["half_copied"] == [copying]
  assert killed.extra["whole_versions"]
  # Resumed: the stale temporary folder is gone, and each span's version is a whole
  # copy of what its ServedModelBuilder made.
  assert "an earlier run was interrupted in Pusher.cf; resuming" in (
      replayed.resumed_console)
  assert _whole_versions(config)
  versions = pusher.pushed_versions(config.serving_model_dir("cf"))
  assert _serving_folders(config, "cf") == sorted(versions) and versions[0] == version
  serving_cf = pathlib.Path(config.serving_model_dir("cf"))
  assert [_files(serving_cf / v) for v in versions] == [
      _files(folder) for folder in _served_model_dirs(config, "cf")]
  assert (serving_cf / "model_card.md").read_text().startswith("# Model card: CF (TFRS)")


def test_a_replay_shows_only_its_progress_lines(replayed):
  # TFX's, Beam's and TensorFlow's logs and warnings, Python's and C++'s, go to the
  # log file; a replay that ran through a span and a half printed none of them.
  lines = replayed.in_pusher.console.splitlines()
  assert len(lines) > 50 and all(re.match(r"\[recsys \d\d:\d\d:\d\d\] ", line)
                                 for line in lines), lines


def test_a_killed_replay_resumes_in_the_span_it_was_in(replayed):
  config, resumed, console = replayed.config, replayed.resumed, replayed.resumed_console
  assert [r["span"] for r in replayed.timeline_at_kill["spans"]] == [2]
  assert "replay: 2 spans of 9 months, 2001-10-01 to 2003-03-31" in (
      replayed.in_pusher.console)
  assert ("replay: 2 spans of 9 months, 2001-10-01 to 2003-03-31, on "
          f"{config.output_dir}; 1 done by an earlier replay") in console
  assert "span 2 (2001-10-01" not in console  # not run again
  assert "an earlier run was interrupted in Pusher.cf" in console
  assert [r["span"] for r in resumed.records] == [2, 3]
  assert {r["outcome"] for r in resumed.records} == {"done"}
  # The resumed span reused what its killed run had completed.
  span_three = resumed.records[1]["stages"]
  for node in ("MovieLensExampleGen", "StatisticsGen", "DriftValidator", "Transform",
               "Trainer.cf", "Trainer.deepfm", "Trainer.retrieval", "Evaluator.cf",
               "Evaluator.deepfm", "ServedModelBuilder.cf", "ServedModelBuilder.deepfm",
               "RecommenderBuilder"):
    assert span_three[node]["state"] == "cached", span_three
  for node in ("Pusher.cf", "Pusher.deepfm", "RankingEvaluator"):
    assert span_three[node]["state"] == "done", span_three
  # Started again once everything is done, it has nothing left to run.
  assert replay.replay(config, EVERY, start=SPAN_STARTS[FIRST_JUDGED]).records == (
      resumed.records)


def test_each_span_learns_from_the_spans_before_it_and_is_judged_on_it(replayed):
  config, records = replayed.config, replayed.resumed.records
  counts = _expected_counts(replayed.release)
  for record in records:
    span = record["span"]
    assert record["learned_from"] == [0, span - 1]
    assert record["examples"] == {"window": sum(counts[:span]), "span": counts[span]}
    assert (record["first_day"], record["until"]) == (SPAN_STARTS[span], None)
  # From ML Metadata: spans 0 and 1 were ingested by runs of their own, as the
  # window of span 2's run; then the completed runs of spans 2 and 3.
  assert _spans_read_by(config, "StatisticsGen") == [[0], [1], [2], [3]]
  # Each span was ingested once. The runs that resumed span 2 (two) and span 3
  # (one) found the window's ingestions finished and ran none of them again, not
  # even from the cache; each took its own span's from the cache.
  done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
  assert [[a.properties["span"].int_value for _, a in wrote]
          for _, wrote in _executions(config, "MovieLensExampleGen", done)] == [
              [0], [1], [2], [2], [2], [3], [3]]
  for node in ("Transform", "Trainer.cf", "Trainer.retrieval"):
    assert _spans_read_by(config, node) == [[0, 1], [0, 1, 2]], node
  assert _spans_read_by(config, "Evaluator.deepfm") == [[2], [3]]
  assert _spans_read_by(config, "RankingEvaluator") == [[0, 1, 2], [0, 1, 2, 3]]
  # Drift: each span against the one before it, every compared feature measured.
  for record in records:
    assert record["drift"]["previous_span"] == record["span"] - 1
    assert set(record["drift"]["features"]) == set(drift.THRESHOLDS) - {
        features.RAW_USER_AGE}
    assert record["drift"]["drifted"] == []
  # Warm start: span 3's Trainers start from span 2's models, a like model only
  # if its Evaluator blessed it; retrieval, which has no blessing, always.
  for model in ("cf", "deepfm", "retrieval"):
    started_from = [bool([a for kind, a in read if kind == "Model"])
                    for read, _ in _executions(config, f"Trainer.{model}")]
    blessed = model == "retrieval" or records[0]["models"][model]["blessed"]
    assert started_from == [False, blessed], model


def test_the_timeline_records_every_verdict_and_push(replayed):
  config, resumed = replayed.config, replayed.resumed
  report = pathlib.Path(config.output_dir) / "report"
  on_disk = json.loads((report / timeline.TIMELINE_FILE).read_text())
  assert on_disk["spans"] == resumed.records
  assert on_disk["settings"]["every"] == EVERY
  pushed = {model: [] for model in MODELS}
  for record in resumed.records:
    for model in MODELS:
      entry = record["models"][model]
      assert entry["reason"], entry
      if model == "recommender":  # each check it failed is marked
        assert ("(failed)" in entry["reason"]) == (not entry["blessed"]), entry
      assert 0 < entry["ndcg@10" if model == "recommender" else "auc"] <= 1
      assert bool(entry["pushed"]) == entry["blessed"], entry
      if entry["pushed"] and entry["pushed"] not in pushed[model]:
        pushed[model].append(entry["pushed"])
    assert 0 < record["baselines"]["popularity"]["ndcg@10"] < 1
  # One version per blessed span, all kept on disk; TF Serving loads the last two.
  for model in MODELS:
    assert pusher.pushed_versions(config.serving_model_dir(model)) == pushed[model]
  assert pushed["recommender"], "the recommender was never blessed"
  assert "num_versions: 2" in (pathlib.Path(config.serving_dir) / "models.config").read_text()
  # The latest run's report sits beside the timeline, which it did not replace.
  assert (report / "metrics.json").is_file()
  assert (report / timeline.FIGURE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = timeline.table(resumed)
  for record in resumed.records:
    assert f"{record['models']['cf']['auc']:.4f}" in table


def test_tensorboard_shows_each_span_once(replayed):
  config, records = replayed.config, replayed.resumed.records
  logdir = pathlib.Path(config.output_dir) / "report" / timeline.TENSORBOARD_DIR
  for system, tag, values in (
      ("cf", "timeline/auc", [r["models"]["cf"]["auc"] for r in records]),
      ("popularity", "timeline/ndcg@10",
       [r["baselines"]["popularity"]["ndcg@10"] for r in records])):
    events = event_accumulator.EventAccumulator(
        str(logdir / system), size_guidance={event_accumulator.TENSORS: 0}).Reload()
    logged = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
    assert [step for step, _ in logged] == [2, 3]  # the resumed span logged once
    assert [value for _, value in logged] == pytest.approx(values)
  assert tensorboard.logdirs(config.output_dir)[tensorboard.TIMELINE_RUN] == str(logdir)


def test_a_span_run_may_not_go_back_in_time_in_its_folder(replayed, capsys):
  release, config = replayed.release, replayed.config
  run = ["run", "--dataset", "1m", "--data-dir", release.folder,
         "--output-dir", config.output_dir]
  assert cli_error(capsys, *run, "--span-months", "9", "--span", "2") == (
      f"error: {config.output_dir} already holds span 3, after span 2 (2001-10-01 to "
      "2002-06-30): a run learns from every span its folder holds before the newest "
      "one, so it would learn from what it is judged on. Runs go forward in time in a "
      "folder; run an earlier span in another --output-dir")
  assert cli_error(capsys, *run, "--span-months", "6") == (
      f"error: {config.output_dir} holds spans of 9 months, not spans of 6 months: each "
      "folder keeps one cut of the ratings; use another --output-dir")
  with pytest.raises(timeline.TimelineError,
                     match=r"other settings \(every: '9m' there, '1m' now"):
    replay.replay(config, "1m", start=SPAN_STARTS[FIRST_JUDGED])
