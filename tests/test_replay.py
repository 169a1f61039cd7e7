"""Continuous training end to end: `recsys replay` over four synthetic spans, killed in
the middle of one and resumed.

Each span's run ingests it, learns from the spans before it (warm-started from
the last models) and is judged on it. The replay judges spans 2 and 3 (`--from`);
the first run ingests spans 0 and 1 as its window. It is a real `recsys replay`
process, SIGKILLed while span 3's models are ranked (RankingEvaluator, its last
stage but two), then resumed here.
"""
import contextlib
import dataclasses
import io
import json
import pathlib
import signal

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
from pipeline import run_store
from pipeline import tensorboard
from pipeline import timeline
from testing import synthetic
from tests.conftest import BRIEF_TRAINING
from tests.conftest import E2E_AUC_FLOOR
from tests.conftest import CliProcess
from tests.conftest import cli_error
from tests.conftest import pipeline_config

pytestmark = pytest.mark.e2e

# The synthetic release's ratings run from 2000-04 to 2003-02: four spans of nine
# months, from 2000-04, 2001-01, 2001-10 and 2002-07.
EVERY = "9m"
FIRST_JUDGED = 2
SPAN_STARTS = ["2000-04-01", "2001-01-01", "2001-10-01", "2002-07-01", "2003-04-01"]
RELEASE = {"layout": "1m", "num_users": 150, "num_movies": 200, "num_ratings": 6_000,
           "seed": 5, "watch_affinity": 3.0}
MODELS = ("cf", "deepfm", "recommender")


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


@dataclasses.dataclass
class Replayed:
  release: synthetic.SyntheticRelease
  config: configs.PipelineConfig
  killed_console: str  # the `recsys replay` process, to its kill
  timeline_at_kill: dict
  resumed_console: str
  resumed: timeline.Timeline


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Replayed:
  """A replay SIGKILLed while span 3's RankingEvaluator runs, then resumed here to
  the end."""
  root = tmp_path_factory.mktemp("replay")
  release = synthetic.write_release(str(root / "data"), **RELEASE)
  config = pipeline_config(root / "data", root / "run", overrides=BRIEF_TRAINING)
  config.auc_floor = E2E_AUC_FLOOR
  process = CliProcess("replay", _cli_args(release.folder, config.output_dir),
                       root / "killed.log")
  try:
    process.wait_for(r"replay: span 2 in \d+ s: cf auc", timeout=600)
    process.wait_for(r"replay: span 3 \(2002-07-01 to 2003-03-31\), 2 of 2")
    # Inside RankingEvaluator's executor (so in ML Metadata), with four more models'
    # lists to compute. Late in the span, so that the resumed run has little to do.
    process.wait_for(r"rank: cf: [\d,]+ test users' lists", since=len(process.lines))
    assert process.kill(signal.SIGKILL) == -signal.SIGKILL
  finally:
    if process.popen.poll() is None:
      process.kill(signal.SIGKILL)
  at_kill = json.loads((pathlib.Path(config.output_dir) / "report" /
                        timeline.TIMELINE_FILE).read_text())
  # The same command again, in this process. (Its settings, Beam's included, must be
  # the killed run's: they are part of every stage's cache key.)
  console = io.StringIO()
  with contextlib.redirect_stderr(console), contextlib.redirect_stdout(console):
    assert cli.main(["replay", *_cli_args(release.folder, config.output_dir)]) == 0
  on_disk = json.loads((pathlib.Path(config.output_dir) / "report" /
                        timeline.TIMELINE_FILE).read_text())
  resumed = timeline.Timeline(on_disk["settings"], on_disk["spans"])
  return Replayed(release, config, process.output, at_kill, console.getvalue(), resumed)


def test_a_killed_replay_resumes_in_the_span_it_was_in(replayed):
  config, resumed, console = replayed.config, replayed.resumed, replayed.resumed_console
  assert [r["span"] for r in replayed.timeline_at_kill["spans"]] == [2]
  assert "replay: 2 spans of 9 months, 2001-10-01 to 2003-03-31" in replayed.killed_console
  assert ("replay: 2 spans of 9 months, 2001-10-01 to 2003-03-31, on "
          f"{config.output_dir}; 1 done by an earlier replay") in console
  assert "span 2 (2001-10-01" not in console  # not run again
  assert "an earlier run was interrupted in RankingEvaluator" in console
  assert [r["span"] for r in resumed.records] == [2, 3]
  assert {r["outcome"] for r in resumed.records} == {"done"}
  # The resumed span reused what its killed run had completed.
  span_three = resumed.records[1]["stages"]
  for node in ("MovieLensExampleGen", "StatisticsGen", "DriftValidator", "Transform",
               "Trainer.cf", "Trainer.deepfm", "Trainer.retrieval", "Evaluator.cf",
               "Evaluator.deepfm", "ServedModelBuilder.cf", "ServedModelBuilder.deepfm",
               "RecommenderBuilder", "Pusher.cf", "Pusher.deepfm"):
    assert span_three[node]["state"] == "cached", span_three
  assert span_three["RankingEvaluator"]["state"] == "done"
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
  # Each span was ingested once. Span 3's runs, killed and resumed, found the
  # window's ingestions finished and ran none of them again, not even from the
  # cache; the resumed run took its own span's from the cache.
  done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
  assert [[a.properties["span"].int_value for _, a in wrote]
          for _, wrote in _executions(config, "MovieLensExampleGen", done)] == [
              [0], [1], [2], [3], [3]]
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
