"""Drift between spans: which features a new span's statistics are compared on.

With continuous training, ratings arrive in spans (a week, a month). A span
whose data moved far from the previous span's stops the run before training: TFDV
compares the two spans' statistics feature by feature through the schema's
`drift_comparator`, L-infinity distance for categorical features (the largest
change in one value's share) and Jensen-Shannon divergence for numeric ones (of
their histograms), and reports an anomaly naming the feature and the distance when
it is above the feature's threshold.

What the comparison needs from whoever runs it (the thresholds assume both):
- the statistics computed with the schema (StatisticsGen's `schema` input). Without
  it TFDV describes the int categorical features (gender, age bucket, like) as
  numbers, with no value counts, and their L-infinity distance is 0 whatever the data;
- `tfdv.validate_statistics(statistics, schema, previous_statistics=...)`. TFX
  1.16's ExampleValidator never passes previous statistics to TFDV, and without
  them the drift comparators check nothing.

How the thresholds were set: `bench/drift_thresholds.py` cuts the real MovieLens
ratings into spans as the pipeline does and measures, as TFDV computes it, each
feature's distance between every pair of consecutive spans (docs/data.md, "Drift
between spans", has the numbers). Each threshold is THRESHOLD_MARGIN times the
largest distance measured on real data between consecutive spans of that length,
rounded up to two significant digits: every real span passes, and a shift a
quarter larger than the largest MovieLens itself showed stops the run. THRESHOLDS
are for calendar months (and longer spans); the features of the ratings have
looser WEEKLY_THRESHOLDS for spans shorter than 28 days (`thresholds_for`).
Measured on MovieLens 100K only (MovieLens 1M's ratings were not at hand): rerun
the script on 1M and take the larger.

A span with few users moves the user features (gender, age, occupation) far by
chance alone: every rating of a user carries the same value, so their sample is
the span's users, not its ratings. Between two spans, such a feature's threshold
is its calibrated one or, if larger, the distance that two samples with the spans'
effective numbers of users, drawn from the two spans pooled, exceed one time in a
thousand (`sampling_thresholds`). That is what lets any span length and any number
of users through without a threshold per length (bench/drift_gate.py measures it
on real weekly, four-weekly and monthly spans).

Features not compared, and why, are in NOT_COMPARED.
"""
import math
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

from models import features

# The two comparators, by their field name in tensorflow_metadata's FeatureComparator.
INFINITY_NORM = "infinity_norm"  # categorical features
JENSEN_SHANNON = "jensen_shannon_divergence"  # numeric features

# A threshold is this many times the largest month-to-month distance of real MovieLens.
THRESHOLD_MARGIN = 1.25

# Feature -> (comparator, threshold); see the module docstring for how they were set.
THRESHOLDS: Dict[str, Tuple[str, float]] = {
    features.USER_GENDER: (INFINITY_NORM, 0.13),
    features.AGE_BUCKET: (INFINITY_NORM, 0.25),
    features.OCCUPATION_LABEL: (INFINITY_NORM, 0.2),
    features.MOVIE_GENRES: (INFINITY_NORM, 0.019),
    features.LABEL: (INFINITY_NORM, 0.075),
    features.USER_RATING: (JENSEN_SHANNON, 0.007),
    features.RAW_USER_AGE: (JENSEN_SHANNON, 0.082),
}

# The features of the ratings themselves, measured between consecutive 7-day spans
# of MovieLens 100K (`bench/drift_thresholds.py --every 1w`). The user features keep
# THRESHOLDS for any span length: how far a span's few users move them by chance is
# the spans' own sampling threshold (`sampling_thresholds`).
WEEKLY_THRESHOLDS: Dict[str, Tuple[str, float]] = {
    features.MOVIE_GENRES: (INFINITY_NORM, 0.057),
    features.LABEL: (INFINITY_NORM, 0.19),
    features.USER_RATING: (JENSEN_SHANNON, 0.065),
}
# Spans at least this long are compared with THRESHOLDS, shorter ones with
# WEEKLY_THRESHOLDS for the features it has.
MONTHLY_MIN_DAYS = 28


def thresholds_for(span_days: int, span_months: int,
                   dataset: str = features.DEFAULT_DATASET) -> Dict[str, Tuple[str, float]]:
  """The calibrated thresholds of spans like these (`--span-days`, `--span-months`),
  for the features `dataset` has."""
  thresholds = dict(THRESHOLDS)
  if not span_months and span_days < MONTHLY_MIN_DAYS:
    thresholds.update(WEEKLY_THRESHOLDS)
  return {name: threshold for name, threshold in thresholds.items()
          if features.in_release(name, dataset)}


# Features whose month-to-month distance says nothing about the data's health.
NOT_COMPARED: Dict[str, str] = {
    features.USER_ID: "a different set of users rates each month by construction; over "
                      "thousands of ids L-infinity is one heavy rater's share, not a shift "
                      "of the population, which gender, age and occupation measure",
    features.MOVIE_ID: "thousands of values (more than TFDV's 1,000-value rank histogram "
                       "at 1M scale); L-infinity is one title's share and misses a shift "
                       "spread over many titles, which genres measure",
    features.MOVIE_TITLE: "one title per movie id: the same as movie_id",
    features.ZIP_CODE: "a near-unique value per user: the same as user_id",
    features.OCCUPATION_TEXT: "the occupation before harmonisation, worded differently "
                              "in 100K and 1M; user_occupation_label is compared",
    features.TIMESTAMP: "moves by a month every span by construction",
    features.HISTORY_MOVIE_IDS: "the movie ids of the user's earlier ratings: as "
                                "movie_id, one title's share among thousands",
    features.HISTORY_AGE_SECONDS: "how long before each rating the user's earlier "
                                  "ones were made: grows with the span's place in "
                                  "the data, earlier spans being part of each history",
}


def is_categorical(feature: schema_pb2.Feature) -> bool:
  """Whether TFDV keeps value counts for `feature` (statistics computed with the schema).

  Those counts are what L-infinity compares; a numeric feature has a histogram,
  which Jensen-Shannon divergence compares.
  """
  if feature.type == schema_pb2.BYTES:
    return True
  return feature.type == schema_pb2.INT and feature.int_domain.is_categorical


def comparator_for(feature: schema_pb2.Feature) -> str:
  """The comparator TFDV can apply to `feature`'s statistics."""
  return INFINITY_NORM if is_categorical(feature) else JENSEN_SHANNON


def with_drift_comparators(
    schema: schema_pb2.Schema,
    thresholds: Mapping[str, Tuple[str, float]] = THRESHOLDS) -> schema_pb2.Schema:
  """A copy of `schema` with a drift comparator on each feature of `thresholds`.

  Any drift comparator the schema already had on those features is replaced;
  nothing else changes. A comparator other than the feature's kind calls for is an
  error: TFDV 1.16 reports an L-infinity distance of 0 for a numeric feature, a
  check that could never fail, and the thresholds were measured with L-infinity on
  categorical features only.
  """
  drifted = schema_pb2.Schema()
  drifted.CopyFrom(schema)
  by_name = {feature.name: feature for feature in drifted.feature}
  for name, (comparator, threshold) in thresholds.items():
    if name not in by_name:
      raise ValueError(f"drift threshold for '{name}', which the schema does not have")
    feature = by_name[name]
    if comparator not in (INFINITY_NORM, JENSEN_SHANNON):
      raise ValueError(f"feature '{name}': unknown drift comparator '{comparator}' "
                       f"(expected {INFINITY_NORM} or {JENSEN_SHANNON})")
    if comparator != comparator_for(feature):
      kind = "categorical" if is_categorical(feature) else "numeric"
      raise ValueError(f"feature '{name}' is {kind}: its drift comparator must be "
                       f"{comparator_for(feature)}, not {comparator}")
    if not (math.isfinite(threshold) and threshold >= 0):
      raise ValueError(f"feature '{name}': drift threshold {threshold} is not a "
                       "distance (a finite number, 0 or more)")
    feature.drift_comparator.Clear()
    getattr(feature.drift_comparator, comparator).threshold = threshold
  return drifted


# Features whose every value is the user's own (a user's ratings all carry it): a
# span's sample of them is its users, weighted by how many ratings each made, not
# its ratings. A span with few users moves them far by chance alone.
USER_LEVEL_FEATURES = (features.USER_GENDER, features.AGE_BUCKET, features.OCCUPATION_LABEL,
                       features.RAW_USER_AGE)
# A user feature's threshold between two spans is at least the distance that two
# samples of the spans' sizes, drawn from one population (the two spans pooled),
# exceed with probability 1 - SAMPLING_QUANTILE (`sampling_thresholds`).
SAMPLING_QUANTILE = 0.999
SAMPLING_DRAWS = 4000


def feature_statistics(statistics: statistics_pb2.DatasetFeatureStatistics, name: str
                       ) -> Optional[statistics_pb2.FeatureNameStatistics]:
  """The statistics of feature `name`, or None where the dataset has none."""
  return next((f for f in statistics.features if ".".join(f.path.step) == name), None)


def effective_users(statistics: statistics_pb2.DatasetFeatureStatistics) -> float:
  """Kish's effective sample size of a span's users: (sum of their ratings)^2 / the
  sum of squares of their ratings, from user_id's rank histogram. TFDV counts its top
  1,000 values exactly; any users past those are taken to have rated equally."""
  user = feature_statistics(statistics, features.USER_ID)
  if user is None or not user.string_stats.rank_histogram.buckets:
    return float(statistics.num_examples)
  counts = np.array([b.sample_count for b in user.string_stats.rank_histogram.buckets])
  total = float(statistics.num_examples)
  rest_users = user.string_stats.unique - len(counts)
  rest = max(total - counts.sum(), 0.0)
  squares = float(np.square(counts).sum()) + (rest * rest / rest_users if rest_users > 0 else 0.0)
  return total * total / squares


def _value_counts(feature: statistics_pb2.FeatureNameStatistics) -> Dict[str, float]:
  return {b.label: b.sample_count for b in feature.string_stats.rank_histogram.buckets}


def standard_histogram(feature: statistics_pb2.FeatureNameStatistics
                       ) -> Optional[statistics_pb2.Histogram]:
  """A numeric feature's standard (equal-width) histogram, the one TFDV's
  Jensen-Shannon divergence compares; None if it has none."""
  return next((h for h in feature.num_stats.histograms
               if h.type == statistics_pb2.Histogram.STANDARD), None)


def _rebinned(histogram, edges: np.ndarray) -> np.ndarray:
  """A histogram's counts over the buckets between `edges`, each bucket's count
  spread evenly over its range (a bucket of one value counts where the value is)."""
  counts = np.zeros(len(edges) - 1)
  for bucket in histogram.buckets:
    low, high = bucket.low_value, bucket.high_value
    if high <= low:
      counts[min(max(np.searchsorted(edges, low, side="right") - 1, 0), len(counts) - 1)] += (
          bucket.sample_count)
      continue
    overlap = np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, None)
    counts += bucket.sample_count * overlap / (high - low)
  return counts


def _pooled(first: statistics_pb2.FeatureNameStatistics,
            second: statistics_pb2.FeatureNameStatistics, comparator: str) -> np.ndarray:
  """Two spans' values pooled, as shares of one set of categories or buckets."""
  if comparator == INFINITY_NORM:
    a, b = _value_counts(first), _value_counts(second)
    counts = np.array([a.get(v, 0.0) + b.get(v, 0.0) for v in sorted(set(a) | set(b))])
  else:
    histograms = (standard_histogram(first), standard_histogram(second))
    edges = np.unique([edge for h in histograms for bucket in h.buckets
                       for edge in (bucket.low_value, bucket.high_value)])
    if len(edges) < 2:
      return np.ones(1)
    counts = sum(_rebinned(h, edges) for h in histograms)
  return counts / counts.sum() if counts.sum() > 0 else np.ones(1)


def distances(first: np.ndarray, second: np.ndarray, comparator: str) -> np.ndarray:
  """Per row, L-infinity or Jensen-Shannon divergence (base 2) of two share matrices."""
  if comparator == INFINITY_NORM:
    return np.abs(first - second).max(axis=1)
  middle = (first + second) / 2

  def kullback_leibler(p):
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(p > 0, p * np.log2(p / middle), 0.0).sum(axis=1)

  return (kullback_leibler(first) + kullback_leibler(second)) / 2


def sampling_thresholds(current: statistics_pb2.DatasetFeatureStatistics,
                        previous: statistics_pb2.DatasetFeatureStatistics,
                        thresholds: Mapping[str, Tuple[str, float]]) -> Dict[str, Dict]:
  """For each user feature of `thresholds`: the distance two spans with these numbers
  of users would show by chance alone, and those numbers (the previous span's first).

  The chance distance is the SAMPLING_QUANTILE quantile, over SAMPLING_DRAWS draws,
  of the comparator's distance between two samples from the two spans pooled, of
  each span's effective number of users (`effective_users`). Seeded: the same
  statistics give the same numbers.
  """
  sizes = [max(1, round(effective_users(s))) for s in (previous, current)]
  rng = np.random.default_rng(0)
  result = {}
  for name, (comparator, _) in thresholds.items():
    pair = (feature_statistics(previous, name), feature_statistics(current, name))
    if name not in USER_LEVEL_FEATURES or None in pair:
      continue
    shares = _pooled(*pair, comparator)
    samples = [rng.multinomial(size, shares, size=SAMPLING_DRAWS) / size for size in sizes]
    chance = float(np.quantile(distances(*samples, comparator), SAMPLING_QUANTILE))
    result[name] = {"chance_distance": chance, "effective_users": sizes}
  return result
