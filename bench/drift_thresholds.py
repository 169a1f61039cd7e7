"""Month-to-month drift of the real MovieLens ratings, as TFDV measures it.

What components/drift.py's thresholds rest on. Each release's ratings, parsed as
MovieLensExampleGen parses them, are cut into calendar months (UTC, by the
`timestamp` feature); each month gets the statistics StatisticsGen computes with
the schema (TFDV's generators, run in memory rather than on Beam); and for every
pair of consecutive months, each feature's drift distance is the one TFDV's
`validate_statistics(..., previous_statistics=...)` reports with the feature's
comparator at threshold 0: L-infinity for categorical features, Jensen-Shannon
divergence for numeric ones. Every feature is measured, compared in the pipeline
or not (components/drift.py says which and why). The distances are read from the
anomalies' drift measurements and checked against the numbers in the anomaly
descriptions, and, recomputed here from the statistics, against TFDV's formula
(every L-infinity; each Jensen-Shannon divergence whose two histograms share
their buckets).

A month with fewer than --min-ratings ratings is skipped (listed with its count),
and so is any pair it belongs to. Writes every distance and, per feature, the
largest and the 95th percentile over the month pairs, as JSON; prints them.

  .venv/bin/python bench/drift_thresholds.py  # writes bench/results/drift_thresholds.json
"""
import argparse
import json
import math
import os
import re
import sys
import time
from typing import Dict, List, Optional, Tuple

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's modules (its thresholds), even when the virtualenv's editable
# install points at another checkout.
sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=g-import-not-at-top
import pyarrow as pa  # pylint: disable=g-import-not-at-top
import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
from tensorflow_data_validation.statistics import stats_impl  # pylint: disable=g-import-not-at-top
from tensorflow_metadata.proto.v0 import anomalies_pb2  # pylint: disable=g-import-not-at-top
from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=g-import-not-at-top
from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top

from components import drift  # pylint: disable=g-import-not-at-top
from components.movielens_example_gen import parsing  # pylint: disable=g-import-not-at-top
from components.movielens_example_gen import spans  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import replay  # pylint: disable=g-import-not-at-top
from testing import examples  # pylint: disable=g-import-not-at-top

# The real GroupLens files live beside the repository, never in it (as in tests/conftest.py).
DEFAULT_DATA_DIR = os.environ.get("MOVIELENS_REAL_DATA",
                                  os.path.join(os.path.dirname(REPO), "shared", "data",
                                               "movielens"))
DEFAULT_OUTPUT = os.path.join(REPO, "bench", "results", "drift_thresholds.json")
# Below this many ratings a month's shares are a handful of users' tastes.
DEFAULT_MIN_RATINGS = 1000
# "...is 0.0123457 (up to six significant digits)...", in TFDV's anomaly descriptions.
_DESCRIBED_DISTANCE = re.compile(r" is (\S+) \(up to six significant digits\)")


def load_schema() -> schema_pb2.Schema:
  return tfdv.load_schema_text(configs.SCHEMA_FILE)


def measuring_schema(schema: schema_pb2.Schema) -> schema_pb2.Schema:
  """The schema with every feature's comparator at threshold 0: TFDV measures them all."""
  return drift.with_drift_comparators(
      schema, {f.name: (drift.comparator_for(f), 0.0) for f in schema.feature})


def span_batches(table: pa.Table, length: spans.SpanLength
                 ) -> Dict[int, Tuple[str, pa.RecordBatch]]:
  """The release's examples by span, cut as MovieLensExampleGen cuts them (UTC):
  span number -> (its first day, its examples), oldest first."""
  seconds = pc.list_flatten(table.column(features.TIMESTAMP)).to_numpy()
  cutter = spans.SpanCutter.starting_at(length, int(seconds.min()))
  numbers = cutter.numbers(seconds)
  batches = {}
  for number in np.unique(numbers):
    rows = table.take(pa.array(np.flatnonzero(numbers == number)))
    batches[int(number)] = (cutter.span(int(number)).first_day,
                            rows.combine_chunks().to_batches()[0])
  return batches


def statistics(batch: pa.RecordBatch, schema: schema_pb2.Schema
               ) -> statistics_pb2.DatasetFeatureStatisticsList:
  """What StatisticsGen computes with the schema as input (default options otherwise)."""
  return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def linf_from_counts(current, previous) -> float:
  """TFDV's L-infinity: the largest change in one value's share of its rank histogram."""
  shares = []
  for stats in (current, previous):
    counts = {b.label: b.sample_count for b in stats.string_stats.rank_histogram.buckets}
    total = sum(counts.values())
    shares.append({label: count / total for label, count in counts.items()})
  labels = set(shares[0]) | set(shares[1])
  return max((abs(shares[0].get(v, 0.0) - shares[1].get(v, 0.0)) for v in labels),
             default=0.0)


def jsd_if_aligned(current, previous) -> Optional[float]:
  """TFDV's Jensen-Shannon divergence (base 2) of two standard histograms with the
  same buckets; None when the buckets differ (TFDV then re-buckets them)."""
  histograms = [drift.standard_histogram(s) for s in (current, previous)]
  if None in histograms:
    return None
  edges = [[(b.low_value, b.high_value) for b in h.buckets] for h in histograms]
  if edges[0] != edges[1] or any(h.num_nan for h in histograms):
    return None
  p, q = (np.array([[b.sample_count for b in h.buckets]]) for h in histograms)
  return float(drift.distances(p / p.sum(), q / q.sum(), drift.JENSEN_SHANNON)[0])


def drift_distances(current, previous, schema_at_zero: schema_pb2.Schema,
                    checks: Dict[str, int]) -> Dict[str, float]:
  """Each feature's distance between two months, as TFDV's validate_statistics reports it."""
  anomalies = tfdv.validate_statistics(current, schema_at_zero, previous_statistics=previous)
  distances = {}
  for info in anomalies.drift_skew_info:
    name = ".".join(info.path.step)
    (measurement,) = info.drift_measurements
    distances[name] = measurement.value
  drift_types = {anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
                 anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH}
  for name, info in anomalies.anomaly_info.items():
    for reason in info.reason:
      if reason.type not in drift_types:
        raise RuntimeError(f"feature '{name}': not a drift anomaly: {reason.description}")
      described = float(_DESCRIBED_DISTANCE.search(reason.description).group(1))
      if not math.isclose(described, distances[name], rel_tol=1e-5, abs_tol=1e-12):
        raise RuntimeError(f"feature '{name}': described distance {described} is not "
                           f"the measured {distances[name]}")
      checks["description_agrees"] += 1
  for feature in schema_at_zero.feature:
    now, before = (drift.feature_statistics(s.datasets[0], feature.name)
                   for s in (current, previous))
    if now is None or before is None:
      continue
    if drift.is_categorical(feature):
      own = linf_from_counts(now, before)
      checks["linf_recomputed"] += 1
    else:
      own = jsd_if_aligned(now, before)
      if own is None:
        continue
      checks["jsd_recomputed"] += 1
    if not math.isclose(own, distances[feature.name], rel_tol=1e-9, abs_tol=1e-12):
      raise RuntimeError(f"feature '{feature.name}': TFDV's distance "
                         f"{distances[feature.name]} but recomputed {own}")
  return distances


def summarize(pairs: List[dict]) -> Dict[str, dict]:
  """Per feature: the largest distance, where it was, and the 95th percentile."""
  summary = {}
  names = sorted({name for pair in pairs for name in pair["distances"]})
  for name in names:
    measured = [(pair["distances"][name], f"{pair['previous']} -> {pair['current']}")
                for pair in pairs if name in pair["distances"]]
    values = np.array([value for value, _ in measured])
    largest = max(measured)
    summary[name] = {"max": float(largest[0]), "max_between": largest[1],
                     "p95": float(np.percentile(values, 95)), "pairs": len(values)}
  return summary


def measure_release(name: str, data_dir: str, length: spans.SpanLength, min_ratings: int,
                    schema: schema_pb2.Schema, checks: Dict[str, int]) -> dict:
  layout = parsing.LAYOUTS[name]
  folder = parsing.find_folder(os.path.join(data_dir, f"ml-{name}"), layout)
  if folder is None:
    where = os.path.join(data_dir, f"ml-{name}")
    missing = [f for f in layout.files if not os.path.isfile(os.path.join(where, f))]
    return {"missing": f"{where} lacks {', '.join(missing) or 'the release'}"}
  started = time.time()
  table = examples.with_histories(parsing.read_release(folder, layout))
  by_span = span_batches(table, length)
  months = {day: batch for day, batch in by_span.values()}
  counts = {month: batch.num_rows for month, batch in months.items()}
  users = {month: len(pc.unique(pc.list_flatten(batch.column(features.USER_ID))))
           for month, batch in months.items()}
  skipped = {month: n for month, n in counts.items() if n < min_ratings}
  print(f"ml-{name}: {table.num_rows:,} ratings in {len(months)} spans of {length}"
        + (f"; skipped (fewer than {min_ratings:,} ratings): "
           + ", ".join(f"{m} ({n:,})" for m, n in skipped.items()) if skipped else ""),
        file=sys.stderr)
  month_stats = {month: statistics(batch, schema) for month, batch in months.items()
                 if month not in skipped}
  schema_at_zero = measuring_schema(schema)
  pairs = []
  numbers = list(by_span)
  for previous_number, current_number in zip(numbers, numbers[1:]):
    previous, current = by_span[previous_number][0], by_span[current_number][0]
    consecutive = current_number == previous_number + 1
    if not consecutive or previous in skipped or current in skipped:
      continue
    distances = drift_distances(month_stats[current], month_stats[previous],
                                schema_at_zero, checks)
    pairs.append({"previous": previous, "current": current, "distances": distances})
  return {"folder": folder, "ratings": table.num_rows, "ratings_per_span": counts,
          "users_per_span": users, "skipped_spans": skipped, "pairs": pairs,
          "summary": summarize(pairs), "seconds": round(time.time() - started, 1)}


def ceil_two_digits(value: float) -> float:
  """`value` rounded up to two significant digits: 0.0412 -> 0.042."""
  if value <= 0:
    return 0.0
  scale = 10 ** (math.floor(math.log10(value)) - 1)
  return round(math.ceil(round(value / scale, 9)) * scale, 12)


def feature_table(schema: schema_pb2.Schema, releases: Dict[str, dict]) -> Dict[str, dict]:
  """Per feature: its comparator, the chosen threshold, what the rule suggests."""
  measured = [r for r in releases.values() if "pairs" in r]
  rows = {}
  for feature in schema.feature:
    largest = max((r["summary"][feature.name]["max"] for r in measured
                   if feature.name in r["summary"]), default=None)
    comparator, threshold = drift.THRESHOLDS.get(feature.name, (None, None))
    row = {"comparator": drift.comparator_for(feature), "compared": comparator is not None,
           "threshold": threshold, "max_over_releases": largest}
    if largest is not None:
      row["rule_suggests"] = ceil_two_digits(drift.THRESHOLD_MARGIN * largest)
      if threshold is not None:
        row["pairs_over_threshold"] = [
            f"ml-{name}: {p['previous']} -> {p['current']}"
            for name, r in releases.items() if "pairs" in r for p in r["pairs"]
            if p["distances"].get(feature.name, 0.0) > threshold]
    if comparator is None:
      row["why_not_compared"] = drift.NOT_COMPARED.get(feature.name, "")
    rows[feature.name] = row
  return rows


def _short(comparator: str) -> str:
  return {drift.INFINITY_NORM: "L-inf", drift.JENSEN_SHANNON: "JSD"}[comparator]


def print_tables(result: dict) -> None:
  releases = result["releases"]
  for name, release in releases.items():
    if "missing" in release:
      print(f"\nml-{name}: not measured: {release['missing']}")
      continue
    compared = [f for f in result["features"] if f in drift.THRESHOLDS]
    print(f"\nml-{name}: distance between consecutive months (compared features)")
    print(f"{'months':<20}" + "".join(f"{f[:14]:>15}" for f in compared))
    for pair in release["pairs"]:
      print(f"{pair['previous'] + ' -> ' + pair['current']:<20}"
            + "".join(f"{pair['distances'].get(f, float('nan')):>15.4f}" for f in compared))
  measured = [n for n, r in releases.items() if "pairs" in r]
  print("\nper feature: max / p95 over the month pairs; threshold (components/drift.py); "
        f"the rule ({drift.THRESHOLD_MARGIN} x max, 2 digits up)")
  header = f"{'feature':<24}{'comp.':>7}" + "".join(
      f"{'ml-' + n + ' max':>13}{'p95':>9}" for n in measured) + f"{'threshold':>11}{'rule':>8}"
  print(header)
  for feature, row in result["features"].items():
    cells = ""
    for n in measured:
      s = releases[n]["summary"].get(feature)
      cells += f"{s['max']:>13.4f}{s['p95']:>9.4f}" if s else f"{'-':>13}{'-':>9}"
    threshold = f"{row['threshold']:>11g}" if row["compared"] else f"{'(not)':>11}"
    rule = f"{row.get('rule_suggests', float('nan')):>8g}"
    print(f"{feature:<24}{_short(row['comparator']):>7}{cells}{threshold}{rule}")
    if row.get("pairs_over_threshold"):
      print(f"  over the threshold: {', '.join(row['pairs_over_threshold'])}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                      help="folder holding ml-100k/ and ml-1m/ (default: %(default)s)")
  parser.add_argument("--releases", nargs="+", default=["100k", "1m"],
                      choices=sorted(parsing.LAYOUTS))
  parser.add_argument("--min-ratings", type=int, default=DEFAULT_MIN_RATINGS,
                      help="skip months with fewer ratings (default: %(default)s)")
  parser.add_argument("--every", default="1m", help="span length, as recsys replay "
                      "takes it: 1m (calendar months, default), 1w, 14d")
  parser.add_argument("--output", default=DEFAULT_OUTPUT)
  args = parser.parse_args(argv)
  schema = load_schema()
  checks = {"description_agrees": 0, "linf_recomputed": 0, "jsd_recomputed": 0}
  length = replay.span_length(args.every)
  releases = {name: measure_release(name, args.data_dir, length, args.min_ratings, schema,
                                    checks)
              for name in args.releases}
  result = {
      "what": "drift distance between consecutive calendar months (UTC) of real MovieLens, "
              "as TFDV's validate_statistics computes it: L-infinity for categorical "
              "features, Jensen-Shannon divergence for numeric ones",
      "command": "python bench/drift_thresholds.py " + " ".join(
          argv if argv is not None else sys.argv[1:]),
      "tfdv_version": tfdv.__version__,
      "every": args.every,
      "min_ratings": args.min_ratings,
      "threshold_margin": drift.THRESHOLD_MARGIN,
      "checks": checks,
      "features": feature_table(schema, releases),
      "releases": releases,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=1)
  print_tables(result)
  print(f"\nchecks: {checks}\nwritten: {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
