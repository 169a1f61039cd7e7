"""Continuous training end to end: spans ingested run by run, models learn from the
spans before the newest one and are judged on it."""
import dataclasses
import json
import pathlib

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from components import drift
from components import drift_validator
from models import features
from pipeline import local_runner
from pipeline import run_store
from testing import synthetic
from tests.conftest import BRIEF_TRAINING
from tests.conftest import E2E_AUC_FLOOR
from tests.conftest import pipeline_config

pytestmark = pytest.mark.e2e

# Yearly spans of the synthetic release's 2000-04 to 2003-02 ratings: spans 0, 1, 2.
SPAN_MONTHS = 12


def _executions(config, node: str):
  """Per execution of `node` (oldest first): (the artifacts it read, those it wrote)."""
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      config.metadata_path)) as m:
    store = m.store
    runs = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
      if run_store.execution_node_ids(store, execution.id) != [node]:
        continue
      events = store.get_events_by_execution_ids([execution.id])
      read, wrote = ([store.get_artifacts_by_id([e.artifact_id])[0] for e in events
                      if e.type == kind]
                     for kind in (metadata_store_pb2.Event.INPUT,
                                  metadata_store_pb2.Event.OUTPUT))
      type_names = {t.id: t.name for t in store.get_artifact_types()}
      runs.append(([(type_names[a.type_id], a) for a in read],
                   [(type_names[a.type_id], a) for a in wrote]))
    return runs


def _spans_read_by(config, node: str):
  """Per execution of `node` (oldest first): the spans of the Examples it read."""
  return [sorted(a.properties["span"].int_value for kind, a in read if kind == "Examples")
          for read, _ in _executions(config, node)]


def _first_blessings(config):
  """Whether each like model's Evaluator blessed the first model it judged."""
  blessings = {}
  for model in ("cf", "deepfm"):
    _, wrote = _executions(config, f"Evaluator.{model}")[0]
    (blessing,) = [a for kind, a in wrote if kind == "ModelBlessing"]
    blessings[model] = bool(blessing.custom_properties["blessed"].int_value)
  return blessings


def _examples_by_span(config):
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      config.metadata_path)) as m:
    examples = m.store.get_artifacts_by_type("Examples")
  by_span = {}
  for artifact in examples:
    by_span.setdefault(artifact.properties["span"].int_value, []).append(artifact)
  return by_span


@pytest.fixture(scope="module")
def span_runs(tmp_path_factory):
  """A run on the newest of three spans, then the same run again on its folder."""
  root = tmp_path_factory.mktemp("spans")
  synthetic.write_release(str(root / "data"), "1m", num_users=150, num_movies=200,
                          num_ratings=6_000, seed=5, watch_affinity=3.0)
  config = pipeline_config(root / "data", root / "run", overrides=BRIEF_TRAINING)
  config = dataclasses.replace(config, span_months=SPAN_MONTHS)
  config.auc_floor = E2E_AUC_FLOOR
  first = local_runner.run(config)
  again = local_runner.run(config)
  return config, first, again


def test_a_run_learns_from_the_spans_before_its_own_and_is_judged_on_it(span_runs):
  config, first, _ = span_runs
  # (The schema was imported by the runs that ingested the earlier spans.)
  assert {c.state for c in first.components if c.node_id != "ImportSchemaGen"} == {
      "done"}, first.table()
  # Spans 0 and 1 were ingested by runs of their own, and found there by the
  # rolling range: Transform and the Trainers read them, the judges span 2. (Each
  # node ran twice: the second run is below.)
  assert _spans_read_by(config, "Trainer.deepfm") == [[0, 1]] * 2
  assert _spans_read_by(config, "Trainer.retrieval") == [[0, 1]] * 2
  assert _spans_read_by(config, "Transform") == [[0, 1]] * 2
  assert _spans_read_by(config, "Evaluator.deepfm") == [[2]] * 2
  assert _spans_read_by(config, "RankingEvaluator") == [[0, 1, 2]] * 2
  assert _spans_read_by(config, "StatisticsGen") == [[0], [1], [2]] * 2
  # The newest span's statistics were compared with span 1's; this release's spans
  # differ by sampling alone, well within the thresholds.
  report = json.loads((pathlib.Path(run_store.RunStore(config.output_dir).require(
      "recsys.DriftReport", "DriftValidator")) / drift_validator.REPORT_FILE).read_text())
  assert (report["span"], report["previous_span"]) == (2, 1)
  assert set(report["features"]) == set(drift.THRESHOLDS) - {features.RAW_USER_AGE}
  assert not any(d["drifted"] for d in report["features"].values()), report


def test_a_span_is_ingested_once_and_a_rerun_starts_from_the_last_models(span_runs):
  config, _, again = span_runs
  # The second run read the spans, their statistics and the Transform graph from
  # the cache; its Trainers started from the first run's models (warm start).
  states = {c.node_id: c.state for c in again.components}
  for node in ("MovieLensExampleGen", "StatisticsGen", "Transform"):
    assert states[node] == "cached", again.table()
  # A like model starts from the latest *blessed* one of its kind; retrieval, which
  # has no blessing of its own, from the latest one.
  blessed = {**_first_blessings(config), "retrieval": True}
  for model, was_blessed in blessed.items():
    (first_read, first_wrote), (second_read, _) = _executions(config, f"Trainer.{model}")
    assert not [a for kind, a in first_read if kind == "Model"]  # nothing to start from
    first_model = [a.id for kind, a in first_wrote if kind == "Model"]
    assert [a.id for kind, a in second_read if kind == "Model"] == (
        first_model if was_blessed else []), model
  by_span = _examples_by_span(config)
  assert {span: len(artifacts) for span, artifacts in by_span.items()} == {0: 1, 1: 1, 2: 1}
  span_one = by_span[1][0]
  assert span_one.custom_properties["span_first_day"].string_value == "2001-04-01"
  assert span_one.custom_properties["span_last_day"].string_value == "2002-03-31"
  assert span_one.custom_properties["span_length"].string_value == "12 months"
