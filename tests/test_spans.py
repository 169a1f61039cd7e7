"""Spans: MovieLens cut into days or months, one span ingested per run, as TFX numbers them."""
import datetime
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import artifact_utils

from components.movielens_example_gen import component
from components.movielens_example_gen import parsing
from components.movielens_example_gen import spans
from models import features
from tests.conftest import ingest


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
