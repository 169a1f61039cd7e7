"""Drift between spans (components/drift.py): TFDV's statistics of two spans compared
through the schema's drift comparators and the chosen thresholds.

Synthetic spans are a synthetic release cut in two at its median rating time (its
ratings' times are drawn independently of everything else, so the halves differ by
sampling alone); a planted shift is made on the later half. Real spans are two
consecutive months, or weeks, of MovieLens 100K.
"""
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.types import standard_artifacts

from components import drift
from components import drift_validator
from components.movielens_example_gen import parsing
from components.movielens_example_gen import spans
from models import features
from pipeline import configs
from testing import examples
from tests.conftest import REAL_100K
from tests.conftest import requires

L_INFTY_HIGH = anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH
_DESCRIBED_DISTANCE = re.compile(r" is (\S+) \(up to six significant digits\)")


@pytest.fixture(scope="module")
def schema() -> schema_pb2.Schema:
  return tfdv.load_schema_text(configs.SCHEMA_FILE)


@pytest.fixture(scope="module")
def drift_schema(schema) -> schema_pb2.Schema:
  return drift.with_drift_comparators(schema)


def _statistics(table: pa.Table, schema=None):
  """A span's statistics as StatisticsGen computes them (with the schema, unless None),
  of its ratings with their histories, as ingested."""
  batch = examples.with_histories(table).combine_chunks().to_batches()[0]
  return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def _values(table: pa.Table, name: str) -> np.ndarray:
  return pc.list_flatten(table.column(name)).to_numpy()


def _halves(folder: str, layout: str):
  """A release's ratings before and after its median rating time."""
  table = parsing.read_release(folder, parsing.LAYOUTS[layout])
  times = _values(table, features.TIMESTAMP)
  later = times > np.median(times)
  return table.filter(pa.array(~later)), table.filter(pa.array(later))


@pytest.fixture(scope="module")
def synthetic_spans(synthetic_100k, schema):
  """(earlier, later, earlier's statistics) of the synthetic 100K-layout release."""
  earlier, later = _halves(synthetic_100k.folder, "100k")
  return earlier, later, _statistics(earlier, schema)


def _shares(values: np.ndarray) -> dict:
  labels, counts = np.unique(values, return_counts=True)
  return dict(zip(labels.tolist(), (counts / counts.sum()).tolist()))


def _linf(before: np.ndarray, after: np.ndarray) -> float:
  """The largest change of one value's share: L-infinity, computed without TFDV."""
  a, b = _shares(before), _shares(after)
  return max(abs(a.get(v, 0.0) - b.get(v, 0.0)) for v in set(a) | set(b))


def _drift_measurements(anomalies) -> dict:
  return {".".join(info.path.step): [(m.type, m.value, m.threshold)
                                     for m in info.drift_measurements]
          for info in anomalies.drift_skew_info}


def _described_distance(anomalies, name: str) -> float:
  (reason,) = anomalies.anomaly_info[name].reason
  assert reason.type == L_INFTY_HIGH, reason
  return float(_DESCRIBED_DISTANCE.search(reason.description).group(1))


@pytest.mark.parametrize("layout", ["100k", "1m"])
def test_clean_synthetic_spans_pass_and_every_comparator_runs(layout, request, schema,
                                                              drift_schema):
  release = request.getfixturevalue(f"synthetic_{layout}")
  earlier, later = _halves(release.folder, layout)
  anomalies = tfdv.validate_statistics(_statistics(later, schema), drift_schema,
                                       previous_statistics=_statistics(earlier, schema))
  assert not anomalies.anomaly_info, anomalies
  measured = _drift_measurements(anomalies)
  # 1M has no raw ages: that comparator has nothing to compare, and says nothing.
  expected = {name for name in drift.THRESHOLDS
              if layout == "100k" or name != features.RAW_USER_AGE}
  assert set(measured) == expected
  for name, [(kind, value, threshold)] in measured.items():
    comparator, chosen = drift.THRESHOLDS[name]
    assert threshold == pytest.approx(chosen)
    assert kind == {drift.INFINITY_NORM: anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY,
                    drift.JENSEN_SHANNON: anomalies_pb2.DriftSkewInfo.Measurement
                    .JENSEN_SHANNON_DIVERGENCE}[comparator]
    assert 0 < value <= threshold, (name, value)  # sampling noise, never exactly 0


def _with_share_tripled(table: pa.Table, name: str, value: bytes) -> pa.Table:
  """As many ratings as `table`, drawn from it so that `value`'s share of `name` is
  three times what it was (the rest in proportion)."""
  is_value = _values(table, name) == value
  share = is_value.mean()
  assert share < 1 / 3
  rng = np.random.default_rng(0)
  with_value = round(3 * share * table.num_rows)
  rows = np.concatenate([
      rng.choice(np.flatnonzero(is_value), with_value),
      rng.choice(np.flatnonzero(~is_value), table.num_rows - with_value)])
  return table.take(pa.array(np.sort(rows)))


def test_a_tripled_occupation_share_is_flagged_with_its_distance(synthetic_spans, schema,
                                                                  drift_schema):
  earlier, later, earlier_stats = synthetic_spans
  name = features.OCCUPATION_LABEL
  commonest = max(_shares(_values(later, name)).items(), key=lambda item: item[1])[0]
  shifted = _with_share_tripled(later, name, commonest)
  assert _shares(_values(shifted, name))[commonest] == pytest.approx(
      3 * _shares(_values(later, name))[commonest], rel=1e-3)

  anomalies = tfdv.validate_statistics(_statistics(shifted, schema), drift_schema,
                                       previous_statistics=earlier_stats)
  assert name in anomalies.anomaly_info
  distance = _linf(_values(earlier, name), _values(shifted, name))
  assert distance > drift.THRESHOLDS[name][1]
  assert _described_distance(anomalies, name) == pytest.approx(distance, rel=1e-5)
  [(_, measured, _)] = _drift_measurements(anomalies)[name]
  assert measured == pytest.approx(distance, rel=1e-9)
  # The anomaly names the value that moved.
  assert commonest.decode() in anomalies.anomaly_info[name].reason[0].description


def _with_genders_swapped(table: pa.Table) -> pa.Table:
  swapped = 1 - _values(table, features.USER_GENDER)
  one_each = pa.ListArray.from_arrays(pa.array(np.arange(len(swapped) + 1, dtype=np.int32)),
                                      pa.array(swapped))
  index = table.schema.get_field_index(features.USER_GENDER)
  return table.set_column(index, features.USER_GENDER, one_each)


def test_a_swapped_gender_field_is_flagged_and_nothing_else(synthetic_spans, schema,
                                                            drift_schema):
  earlier, later, earlier_stats = synthetic_spans
  swapped = _with_genders_swapped(later)
  anomalies = tfdv.validate_statistics(_statistics(swapped, schema), drift_schema,
                                       previous_statistics=earlier_stats)
  assert set(anomalies.anomaly_info) == {features.USER_GENDER}
  distance = _linf(_values(earlier, features.USER_GENDER),
                   _values(swapped, features.USER_GENDER))
  assert distance > drift.THRESHOLDS[features.USER_GENDER][1]
  assert _described_distance(anomalies, features.USER_GENDER) == pytest.approx(
      distance, rel=1e-5)


def test_statistics_without_the_schema_hide_a_gender_swap(synthetic_spans, drift_schema):
  """Why StatisticsGen must be given the schema (components/drift.py): without it the
  int gender is described as a number, and its L-infinity distance is always 0."""
  earlier, later, _ = synthetic_spans
  anomalies = tfdv.validate_statistics(_statistics(_with_genders_swapped(later)),
                                       drift_schema,
                                       previous_statistics=_statistics(earlier))
  assert features.USER_GENDER not in anomalies.anomaly_info
  [(_, value, _)] = _drift_measurements(anomalies)[features.USER_GENDER]
  assert value == 0


@requires(REAL_100K)
def test_two_real_consecutive_months_pass(schema, drift_schema):
  table = parsing.read_release(str(REAL_100K), parsing.LAYOUTS["100k"])
  months = _values(table, features.TIMESTAMP).astype("datetime64[s]").astype(
      "datetime64[M]")
  # The pair where the like rate and the ratings moved most (bench/drift_thresholds.py).
  pair = [table.filter(pa.array(months == np.datetime64(month)))
          for month in ("1997-12", "1998-01")]
  anomalies = tfdv.validate_statistics(_statistics(pair[1], schema), drift_schema,
                                       previous_statistics=_statistics(pair[0], schema))
  assert not anomalies.anomaly_info, anomalies
  measured = _drift_measurements(anomalies)
  assert set(measured) == set(drift.THRESHOLDS)
  assert all(0 < value <= threshold for [(_, value, threshold)] in measured.values())


@pytest.mark.parametrize("span_days, span_months, expected", [
    (7, 0, "weekly"), (14, 0, "weekly"), (27, 0, "weekly"),
    (28, 0, "monthly"), (0, 1, "monthly"), (0, 3, "monthly")])
def test_thresholds_follow_the_span_length(span_days, span_months, expected):
  chosen = drift.thresholds_for(span_days, span_months)
  assert chosen == {"weekly": {**drift.THRESHOLDS, **drift.WEEKLY_THRESHOLDS},
                    "monthly": drift.THRESHOLDS}[expected]


def test_weekly_thresholds_compare_the_ratings_features_more_loosely():
  # The user features' thresholds follow the spans' users (sampling_thresholds).
  assert not set(drift.WEEKLY_THRESHOLDS) & set(drift.USER_LEVEL_FEATURES)
  assert set(drift.WEEKLY_THRESHOLDS) | set(drift.USER_LEVEL_FEATURES) == set(drift.THRESHOLDS)
  for name, (comparator, weekly) in drift.WEEKLY_THRESHOLDS.items():
    assert comparator == drift.THRESHOLDS[name][0]
    assert weekly > drift.THRESHOLDS[name][1], name


@requires(REAL_100K)
def test_two_real_consecutive_weeks_pass_through_their_few_users(schema):
  table = parsing.read_release(str(REAL_100K), parsing.LAYOUTS["100k"])
  seconds = _values(table, features.TIMESTAMP)
  cutter = spans.SpanCutter.starting_at(spans.SpanLength(days=7), int(seconds.min()))
  numbers = cutter.numbers(seconds)
  # The pair of weeks whose gender share moved most (bench/drift_thresholds.py
  # --every 1w): 1998-03-07 and 1998-03-14, spans 24 and 25 of the release.
  assert [cutter.span(n).first_day for n in (24, 25)] == ["1998-03-07", "1998-03-14"]
  earlier, later = (_statistics(table.filter(pa.array(numbers == n)), schema)
                    for n in (24, 25))
  weekly = drift_validator.compare(later, earlier, schema, drift.thresholds_for(7, 0))
  assert not drift_validator.describe(weekly), weekly
  # Gender and age moved past their calibrated thresholds; the few users of these
  # weeks move them that far by chance.
  for name in (features.USER_GENDER, features.AGE_BUCKET):
    moved = weekly[name]
    assert moved["calibrated_threshold"] < moved["distance"] <= moved["chance_distance"]
    assert moved["effective_users"][0] < 20 and moved["effective_users"][1] < 30
  # The ratings' features keep the weekly thresholds: the monthly ones stop these weeks.
  monthly = drift_validator.compare(later, earlier, schema, drift.THRESHOLDS)
  assert {name for name, d in monthly.items() if d["drifted"]} - set(
      drift.USER_LEVEL_FEATURES)


def test_with_drift_comparators_changes_only_the_drift_comparators(schema):
  before = schema_pb2.Schema()
  before.CopyFrom(schema)
  drifted = drift.with_drift_comparators(schema)
  assert schema == before  # the argument is left as it was
  assert not any(f.HasField("drift_comparator") for f in schema.feature)
  for feature in drifted.feature:
    if feature.name in drift.THRESHOLDS:
      comparator, threshold = drift.THRESHOLDS[feature.name]
      assert [(field.name, value.threshold)
              for field, value in feature.drift_comparator.ListFields()] == [
                  (comparator, pytest.approx(threshold))]
    else:
      assert not feature.HasField("drift_comparator"), feature.name
  stripped = schema_pb2.Schema()
  stripped.CopyFrom(drifted)
  for feature in stripped.feature:
    feature.ClearField("drift_comparator")
  assert stripped == schema


def test_an_existing_drift_comparator_is_replaced(schema):
  with_old = schema_pb2.Schema()
  with_old.CopyFrom(schema)
  gender = next(f for f in with_old.feature if f.name == features.USER_GENDER)
  gender.drift_comparator.infinity_norm.threshold = 0.9
  gender.drift_comparator.normalized_abs_difference.threshold = 0.9
  replaced = next(f for f in drift.with_drift_comparators(with_old).feature
                  if f.name == features.USER_GENDER)
  assert [field.name for field, _ in replaced.drift_comparator.ListFields()] == [
      drift.INFINITY_NORM]
  assert replaced.drift_comparator.infinity_norm.threshold == pytest.approx(
      drift.THRESHOLDS[features.USER_GENDER][1])


@pytest.mark.parametrize("thresholds, complaint", [
    ({features.USER_RATING: (drift.INFINITY_NORM, 0.1)}, "is numeric"),
    ({features.USER_GENDER: (drift.JENSEN_SHANNON, 0.1)}, "is categorical"),
    ({"user_mood": (drift.INFINITY_NORM, 0.1)}, "does not have"),
    ({features.USER_GENDER: ("normalized_abs_difference", 0.1)}, "unknown drift comparator"),
    ({features.USER_GENDER: (drift.INFINITY_NORM, -0.1)}, "not a distance"),
    ({features.USER_GENDER: (drift.INFINITY_NORM, float("nan"))}, "not a distance"),
])
def test_a_comparator_tfdv_would_not_apply_is_refused(schema, thresholds, complaint):
  with pytest.raises(ValueError, match=complaint):
    drift.with_drift_comparators(schema, thresholds)


def test_every_feature_is_compared_or_left_out_with_a_reason(schema):
  names = {feature.name for feature in schema.feature}
  assert set(drift.THRESHOLDS) | set(drift.NOT_COMPARED) == names
  assert not set(drift.THRESHOLDS) & set(drift.NOT_COMPARED)
  assert all(reason.strip() for reason in drift.NOT_COMPARED.values())


def test_the_drift_validator_reports_every_distance_and_names_the_drifted_feature(
    synthetic_spans, schema):
  earlier, later, earlier_stats = synthetic_spans
  swapped = _with_genders_swapped(later)
  distances = drift_validator.compare(_statistics(swapped, schema), earlier_stats, schema)
  assert set(distances) == set(drift.THRESHOLDS)
  assert [name for name, d in distances.items() if d["drifted"]] == [features.USER_GENDER]
  gender = distances[features.USER_GENDER]
  assert gender["distance"] == pytest.approx(
      _linf(_values(earlier, features.USER_GENDER), _values(swapped, features.USER_GENDER)))
  # The synthetic spans' few users set the threshold above the calibrated one.
  assert gender["threshold"] == gender["chance_distance"] > gender["calibrated_threshold"]
  (line,) = drift_validator.describe(distances)
  previous_users, current_users = gender["effective_users"]
  assert line == (f"feature '{features.USER_GENDER}': L-infinity distance "
                  f"{gender['distance']:.4g} above its threshold {gender['threshold']:.4g} "
                  f"(what spans of {previous_users} and then {current_users} effective "
                  f"users show by chance; calibrated "
                  f"{drift.THRESHOLDS[features.USER_GENDER][1]:g})")
  clean = drift_validator.compare(_statistics(later, schema), earlier_stats, schema)
  assert not drift_validator.describe(clean)
  assert all(0 < d["distance"] <= d["threshold"] for d in clean.values()), clean


def test_the_previous_span_is_the_latest_before_the_newest():
  def statistics(span, artifact_id):
    artifact = standard_artifacts.ExampleStatistics()
    artifact.span, artifact.id = span, artifact_id
    return artifact
  newest = statistics(5, 10)
  # Span 4 ingested twice (the later one counts), span 3 once, and the newest itself.
  every = [statistics(3, 1), statistics(4, 2), statistics(4, 7), newest]
  assert drift_validator.previous_span(newest, every).id == 7
  assert drift_validator.previous_span(statistics(3, 1), every) is None


def _span_statistics(user_counts, gender_counts=None, unique_users=None, ages=None):
  """Hand-made statistics of a span: user_id's rank histogram of `user_counts`
  ratings per user (of `unique_users` users), and the given genders or ages."""
  span = statistics_pb2.DatasetFeatureStatistics(num_examples=int(sum(user_counts)))
  user = span.features.add()
  user.path.step.append(features.USER_ID)
  user.string_stats.unique = unique_users or len(user_counts)
  for rank, count in enumerate(user_counts):
    user.string_stats.rank_histogram.buckets.add(label=str(rank), sample_count=count)
  if gender_counts:
    gender = span.features.add()
    gender.path.step.append(features.USER_GENDER)
    for label, count in gender_counts.items():
      gender.string_stats.rank_histogram.buckets.add(label=label, sample_count=count)
  if ages:
    age = span.features.add()
    age.path.step.append(features.RAW_USER_AGE)
    histogram = age.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
    for low, high, count in ages:
      histogram.buckets.add(low_value=low, high_value=high, sample_count=count)
  return span


def test_effective_users_weigh_each_user_by_their_ratings():
  assert drift.effective_users(_span_statistics([5, 5, 5, 5])) == pytest.approx(4)
  # One heavy rater makes the span as informative as fewer users: 36 / (9 + 1 + 1 + 1).
  assert drift.effective_users(_span_statistics([3, 1, 1, 1])) == pytest.approx(3)
  # Users past TFDV's rank histogram share the rest of the ratings equally.
  span = _span_statistics([3, 1], unique_users=4)
  span.num_examples = 6
  assert drift.effective_users(span) == pytest.approx(36 / (9 + 1 + 2 * 1))


@pytest.mark.parametrize("name", [features.USER_GENDER, features.RAW_USER_AGE])
def test_the_chance_distance_shrinks_as_the_spans_hold_more_users(name):
  def span(users):
    ages = [(18.0, 30.0, 40 * users), (30.0, 45.0, 40 * users), (45.0, 70.0, 20 * users)]
    return _span_statistics([100] * users, {"0": 30 * users, "1": 70 * users}, ages=ages)

  thresholds = {name: drift.THRESHOLDS[name]}
  chance = {users: drift.sampling_thresholds(span(users), span(users), thresholds)[name]
            for users in (10, 100, 1000)}
  assert [chance[u]["effective_users"] for u in (10, 100, 1000)] == [[10, 10], [100, 100],
                                                                      [1000, 1000]]
  distances = [chance[u]["chance_distance"] for u in (10, 100, 1000)]
  assert distances[0] > distances[1] > distances[2] > 0
  if name == features.USER_GENDER:
    # Two shares of 0.3 from 1,000 users each differ by N(0, sqrt(0.21 * 2 / 1000)):
    # its 99.9% quantile in absolute value is 3.29 standard deviations, 0.067.
    assert distances[2] == pytest.approx(3.29 * np.sqrt(0.21 * 2 / 1000), rel=0.15)
  # The same statistics give the same thresholds.
  assert drift.sampling_thresholds(span(10), span(10), thresholds)[name] == chance[10]
  # Features of the ratings, not of the users, keep their calibrated thresholds.
  assert not drift.sampling_thresholds(span(10), span(10), {
      features.LABEL: drift.THRESHOLDS[features.LABEL]})


@requires(REAL_100K)
def test_real_four_week_spans_with_few_users_pass_and_a_gender_swap_is_still_caught(schema):
  table = parsing.read_release(str(REAL_100K), parsing.LAYOUTS["100k"])
  seconds = _values(table, features.TIMESTAMP)
  length = spans.SpanLength(days=28)
  cutter = spans.SpanCutter.starting_at(length, int(seconds.min()))
  numbers = cutter.numbers(seconds)
  # The spans where `recsys replay --every 4w` stopped on raw_user_age with the
  # calibrated thresholds alone: 1998-03-07 and 1998-04-04 (spans 6 and 7).
  assert [cutter.span(n).first_day for n in (5, 6, 7)] == [
      "1998-02-07", "1998-03-07", "1998-04-04"]
  span_tables = {n: table.filter(pa.array(numbers == n)) for n in (5, 6, 7)}
  stats = {n: _statistics(t, schema) for n, t in span_tables.items()}
  thresholds = drift.thresholds_for(length.days, length.months, "100k")
  for earlier, later in ((5, 6), (6, 7)):
    distances = drift_validator.compare(stats[later], stats[earlier], schema, thresholds)
    age = distances[features.RAW_USER_AGE]
    assert age["distance"] > age["calibrated_threshold"]  # the stop it was
    assert not drift_validator.describe(distances), distances
    assert age["threshold"] == pytest.approx(age["chance_distance"])
    swapped = drift_validator.compare(_statistics(_with_genders_swapped(span_tables[later]),
                                                  schema), stats[earlier], schema, thresholds)
    (line,) = drift_validator.describe(swapped)
    assert line.startswith(f"feature '{features.USER_GENDER}': L-infinity distance")
