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
quarter larger than the largest MovieLens itself showed stops the run. There are
two sets: THRESHOLDS for calendar months (and longer spans) and WEEKLY_THRESHOLDS
for spans shorter than 28 days, whose fewer users move the per-rating shares of
gender, age and occupation much more from one span to the next
(`thresholds_for`). Measured on MovieLens 100K only (MovieLens 1M's ratings were
not at hand): rerun the script on 1M and take the larger.

Features not compared, and why, are in NOT_COMPARED.
"""
import math
from typing import Dict, Mapping, Tuple

from tensorflow_metadata.proto.v0 import schema_pb2

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

# The same features, measured between consecutive 7-day spans of MovieLens 100K
# (`bench/drift_thresholds.py --every 1w`). A week holds 39 to 129 users, each
# with dozens of ratings, so the user features' shares are a few users' own and
# only a gross break (most of a week's users changed) stands out.
WEEKLY_THRESHOLDS: Dict[str, Tuple[str, float]] = {
    features.USER_GENDER: (INFINITY_NORM, 0.48),
    features.AGE_BUCKET: (INFINITY_NORM, 0.64),
    features.OCCUPATION_LABEL: (INFINITY_NORM, 0.41),
    features.MOVIE_GENRES: (INFINITY_NORM, 0.057),
    features.LABEL: (INFINITY_NORM, 0.19),
    features.USER_RATING: (JENSEN_SHANNON, 0.065),
    features.RAW_USER_AGE: (JENSEN_SHANNON, 0.48),
}
# Spans at least this long are compared with THRESHOLDS, shorter ones with
# WEEKLY_THRESHOLDS.
MONTHLY_MIN_DAYS = 28


def thresholds_for(span_days: int, span_months: int,
                   dataset: str = features.DEFAULT_DATASET) -> Dict[str, Tuple[str, float]]:
  """The thresholds measured on spans like these (`--span-days`, `--span-months`),
  for the features `dataset` has."""
  thresholds = (THRESHOLDS if span_months or span_days >= MONTHLY_MIN_DAYS
                else WEEKLY_THRESHOLDS)
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
