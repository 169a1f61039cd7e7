"""Spans: MovieLens cut into days or months, one span ingested per run, as TFX numbers them."""
import datetime
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2 as pb
from tfx.orchestration import metadata
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components.movielens_example_gen import component
from components.movielens_example_gen import parsing
from components.movielens_example_gen import spans
from models import features
from pipeline import resolvers
from pipeline import run_store
from testing.examples import ingest


def _seconds(day: str, time: str = "00:00:00") -> int:
  moment = datetime.datetime.fromisoformat(f"{day}T{time}").replace(
      tzinfo=datetime.timezone.utc)
  return int(moment.timestamp())


def test_month_spans_start_on_the_first_ratings_month_and_end_at_midnight():
  first = _seconds("2001-01-17", "08:00:00")
  cutter = spans.SpanCutter.starting_at(spans.SpanLength(months=1), first)
  times = np.array([first, _seconds("2001-01-31", "23:59:59"), _seconds("2001-02-01"),
                    _seconds("2001-12-31", "23:59:59"), _seconds("2002-01-01")])
  np.testing.assert_array_equal(cutter.numbers(times), [0, 0, 1, 11, 12])
  february = cutter.span(1)
  assert (february.start, february.end) == (_seconds("2001-02-01"), _seconds("2001-03-01"))
  assert (february.first_day, february.last_day) == ("2001-02-01", "2001-02-28")
  assert cutter.span(0).start == _seconds("2001-01-01")  # the whole first month


def test_day_spans_are_counted_from_the_first_ratings_day():
  first = _seconds("1997-09-20", "13:30:00")
  cutter = spans.SpanCutter.starting_at(spans.SpanLength(days=7), first)
  times = np.array([_seconds("1997-09-20"), _seconds("1997-09-26", "23:59:59"),
                    _seconds("1997-09-27"), _seconds("1997-10-04")])
  np.testing.assert_array_equal(cutter.numbers(times), [0, 0, 1, 2])
  assert cutter.span(1).describe() == "span 1 (1997-09-27 to 1997-10-03)"
  quarter = spans.SpanCutter.starting_at(spans.SpanLength(months=3), first)
  assert quarter.span(1).describe() == "span 1 (1997-12-01 to 1998-02-28)"


def test_counts_report_empty_spans_between_full_ones():
  first = _seconds("2001-01-05")
  cutter = spans.SpanCutter.starting_at(spans.SpanLength(months=1), first)
  times = np.array([first, first + 10, _seconds("2001-03-02"), _seconds("2001-05-30")])
  assert cutter.counts(times) == {0: 2, 1: 0, 2: 1, 3: 0, 4: 1}


def test_a_span_length_is_days_or_months_and_until_a_day():
  with pytest.raises(ValueError, match="not both: got days=7, months=1"):
    spans.SpanLength(days=7, months=1)
  with pytest.raises(ValueError, match="days=-1"):
    spans.SpanLength(days=-1)
  assert not spans.SpanLength().enabled
  assert str(spans.SpanLength(days=1)) == "1 day" and str(spans.SpanLength(months=2)) == (
      "2 months")
  assert spans.end_of_day("1998-01-31") == _seconds("1998-02-01")
  assert spans.end_of_day(None) is None
  with pytest.raises(ValueError, match="until must be a day as YYYY-MM-DD, got '31/01/98'"):
    spans.end_of_day("31/01/98")
  with pytest.raises(ValueError, match="not both"):
    component.MovieLensExampleGen(dataset="100k", span_days=7, span_months=1)


# The ratings' days of the release below: January and March 2001, nothing in February.
_DAYS = ["2001-01-03", "2001-01-31", "2001-03-01", "2001-03-20"]


@pytest.fixture(scope="module")
def release_with_a_gap(synthetic_100k, tmp_path_factory):
  """synthetic_100k's ratings re-timed onto _DAYS (a quarter each, in file order)."""
  folder = tmp_path_factory.mktemp("gap") / "ml-100k"
  shutil.copytree(synthetic_100k.folder, folder)
  path = folder / "u.data"
  lines = path.read_text().splitlines()
  retimed = []
  for i, line in enumerate(lines):
    user, movie, rating, _ = line.split("\t")
    day = _DAYS[i * len(_DAYS) // len(lines)]
    retimed.append(f"{user}\t{movie}\t{rating}\t{_seconds(day, '12:00:00') + i}")
  path.write_text("\n".join(retimed) + "\n")
  per_day = {day: sum(1 for i in range(len(lines))
                      if _DAYS[i * len(_DAYS) // len(lines)] == day) for day in _DAYS}
  return str(folder), per_day


def _timestamps(examples) -> np.ndarray:
  times = []
  for split in features.SPLIT_NAMES:
    pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*.gz")
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), "GZIP"):
      times.append(tf.train.Example.FromString(record.numpy()).features.feature[
          features.TIMESTAMP].int64_list.value[0])
  return np.array(times)


@pytest.mark.slow  # Beam pipelines
def test_a_run_ingests_one_span_and_numbers_it(release_with_a_gap, tmp_path):
  data_dir, per_day = release_with_a_gap
  latest = ingest(data_dir, str(tmp_path / "latest"), span_months=1, span=-1)
  assert latest.span == 2  # March: January is span 0, the empty February span 1
  assert latest.get_string_custom_property("span_first_day") == "2001-03-01"
  assert latest.get_string_custom_property("span_last_day") == "2001-03-31"
  assert latest.get_string_custom_property("span_length") == "1 month"
  times = _timestamps(latest)
  assert len(times) == per_day["2001-03-01"] + per_day["2001-03-20"]
  assert times.min() >= _seconds("2001-03-01") and times.max() < _seconds("2001-04-01")
  assert sum(json.loads(latest.get_string_custom_property("split_counts")).values()) == (
      len(times))

  # --until ends the data: the last span with ratings by then is January's.
  january = ingest(data_dir, str(tmp_path / "january"), span_months=1,
                    until="2001-02-20", split="temporal")
  assert january.span == 0
  assert january.get_string_custom_property("until") == "2001-02-20"
  assert len(_timestamps(january)) == per_day["2001-01-03"] + per_day["2001-01-31"]


@pytest.mark.slow  # Beam pipelines
def test_an_empty_span_is_named_with_the_spans_that_hold_ratings(release_with_a_gap,
                                                                  tmp_path):
  data_dir, _ = release_with_a_gap
  with pytest.raises(parsing.MovieLensDataError) as error:
    ingest(data_dir, str(tmp_path / "february"), span_months=1, span=1)
  assert str(error.value) == (
      f"{data_dir}/u.data: span 1 (2001-02-01 to 2001-02-28) holds no ratings; spans "
      "of 1 month with ratings: 0 to 2, 1 of them empty")
  with pytest.raises(parsing.MovieLensDataError, match="span 7 .* holds no ratings"):
    ingest(data_dir, str(tmp_path / "future"), span_months=1, span=7)
  # Nothing was written for either.
  assert not os.path.exists(tmp_path / "february" / "Split-train")


class _Recorded:
  """An ML Metadata store filled as TFX records runs: executions in node and
  pipeline-run contexts, and the events that tie them to their artifacts."""

  def __init__(self, store):
    self.store = store
    self._node_type = store.put_context_type(pb.ContextType(name="node"))
    self._run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    self._examples_type = store.put_artifact_type(pb.ArtifactType(
        name="Examples", properties={"span": pb.INT}))
    self._model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))
    self._execution_type = store.put_execution_type(pb.ExecutionType(name="run"))
    self._contexts = {}

  def _context(self, type_id, name):
    if name not in self._contexts:
      [self._contexts[name]] = self.store.put_contexts([pb.Context(type_id=type_id,
                                                                   name=name)])
    return self._contexts[name]

  def executed(self, node, state=pb.Execution.COMPLETE, inputs=(), outputs=(), run="run"):
    [execution_id] = self.store.put_executions([pb.Execution(
        type_id=self._execution_type, last_known_state=state)])
    self.store.put_events(
        [pb.Event(execution_id=execution_id, artifact_id=a, type=pb.Event.INPUT)
         for a in inputs] + [pb.Event(execution_id=execution_id, artifact_id=a,
                                      type=pb.Event.OUTPUT) for a in outputs])
    contexts = [self._context(self._node_type, f"movielens.{node}"),
                self._context(self._run_type, run)]
    self.store.put_attributions_and_associations(
        [pb.Attribution(context_id=c, artifact_id=a) for c in contexts for a in outputs],
        [pb.Association(context_id=c, execution_id=execution_id) for c in contexts])

  def span(self, number, run="run", **custom):
    artifact = pb.Artifact(type_id=self._examples_type, state=pb.Artifact.LIVE)
    artifact.properties["span"].int_value = number
    for name, value in {"span_length": "1 month", **custom}.items():
      artifact.custom_properties[name].string_value = value
    [artifact_id] = self.store.put_artifacts([artifact])
    self.executed("MovieLensExampleGen", outputs=[artifact_id], run=run)
    return artifact_id

  def model(self, node, run):
    [artifact_id] = self.store.put_artifacts([pb.Artifact(type_id=self._model_type,
                                                          state=pb.Artifact.LIVE)])
    self.executed(node, outputs=[artifact_id], run=run)
    return artifact_id


def test_only_spans_ingested_whole_with_their_statistics_are_not_ingested_again(tmp_path):
  """What `recsys run` with spans skips (pipeline/local_runner.py), after three
  ingestions of span 0, 1 and 2."""
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      str(tmp_path / run_store.METADATA_FILE))) as m:
    recorded = _Recorded(m.store)
    whole, killed_before_its_statistics, cut_short = recorded.span(0), recorded.span(
        1), recorded.span(2, until="2001-03-10")
    recorded.executed("StatisticsGen", inputs=[whole])
    recorded.executed("StatisticsGen", pb.Execution.CACHED, inputs=[whole])
    recorded.executed("StatisticsGen", pb.Execution.RUNNING,
                      inputs=[killed_before_its_statistics])
    recorded.executed("StatisticsGen", inputs=[cut_short])

  folder = run_store.RunStore(str(tmp_path))
  assert folder.ingested_spans() == {0: "1 month", 1: "1 month", 2: "1 month"}
  assert folder.spans_with_statistics() == {0}


def test_a_span_run_resolves_models_of_earlier_spans_only(tmp_path):
  """The models a run of span 3 starts from and is judged against: not those of an
  earlier, killed run of span 3, even blessed, nor any of a later span."""
  def blessing(model_id, blessed=1):
    artifact = standard_artifacts.ModelBlessing()
    artifact.set_int_custom_property("current_model_id", model_id)
    artifact.set_int_custom_property("blessed", blessed)
    return artifact

  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      str(tmp_path / run_store.METADATA_FILE))) as m:
    recorded = _Recorded(m.store)
    made = {}
    for run, span in (("span 1", 1), ("span 2", 2), ("span 3, killed", 3),
                      ("span 4", 4)):
      recorded.span(span, run=run)
      made[run] = recorded.model("Trainer.cf", run)
    models = []
    for model_id in made.values():
      model = standard_artifacts.Model()
      model.id = model_id
      models.append(model)
    blessings = [blessing(made["span 1"]), blessing(made["span 2"], blessed=0),
                 blessing(made["span 3, killed"]), blessing(made["span 4"])]
    strategy = resolvers.LatestFromEarlierSpans(span=3)
    latest = strategy.resolve_artifacts(m.store, {"model": list(models)})
    blessed = strategy.resolve_artifacts(m.store, {"model": list(models),
                                                   "model_blessing": blessings})
    first = resolvers.LatestFromEarlierSpans(span=1).resolve_artifacts(
        m.store, {"model": list(models), "model_blessing": blessings})
  assert [a.id for a in latest["model"]] == [made["span 2"]]
  assert [a.id for a in blessed["model"]] == [made["span 1"]]
  assert blessed["model_blessing"][0].get_int_custom_property("current_model_id") == (
      made["span 1"])
  assert first == {"model": [], "model_blessing": []}
