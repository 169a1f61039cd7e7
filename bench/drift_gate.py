"""How often the drift gate stops a replay of real MovieLens, and whether it still
catches a planted shift, for spans of several lengths.

Cuts the real ratings into spans of each length as `recsys replay` does, computes
each span's statistics with the schema (as StatisticsGen does; in memory, over the
whole span rather than its train split), and runs DriftValidator's comparison
(`components/drift_validator.compare`, the thresholds `drift.thresholds_for` picks
for the length) on every pair of consecutive spans. Per pair it records whether the
gate stops, with the calibrated thresholds alone (the gate before the spans'
numbers of users counted) and with them (today's), and whether it stops the same
pair with the newer span's gender field swapped. Every pair of real spans is a
pair the gate should let through: a stop there is a false stop.

  .venv/bin/python bench/drift_gate.py [--every 1w 4w 1m]   # bench/results/drift_gate.json
"""
import argparse
import json
import os
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import drift_thresholds  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pyarrow as pa  # pylint: disable=g-import-not-at-top,wrong-import-position
import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top,wrong-import-position

from components import drift  # pylint: disable=g-import-not-at-top,wrong-import-position
from components import drift_validator  # pylint: disable=g-import-not-at-top,wrong-import-position
from components.movielens_example_gen import parsing  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import features  # pylint: disable=g-import-not-at-top,wrong-import-position
from pipeline import replay  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_OUTPUT = os.path.join(REPO, "bench", "results", "drift_gate.json")


def with_genders_swapped(batch: pa.RecordBatch) -> pa.RecordBatch:
  """The batch with every rating's user_gender flipped: a broken feed."""
  index = batch.schema.get_field_index(features.USER_GENDER)
  genders = pc.list_flatten(batch.column(index)).to_numpy()
  offsets = pa.array(np.arange(len(genders) + 1, dtype=np.int32))
  swapped = pa.ListArray.from_arrays(offsets, pa.array(1 - genders))
  columns = list(batch.columns)
  columns[index] = swapped
  return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _stops(distances, calibrated_only: bool):
  """The features over threshold, by the calibrated thresholds alone or by today's."""
  key = "calibrated_threshold" if calibrated_only else "threshold"
  return sorted(name for name, d in distances.items() if d["distance"] > d[key])


def measure(table: pa.Table, every: str, schema, user_floors_monthly: bool = False) -> dict:
  """With `user_floors_monthly`, the user features' calibrated thresholds are the
  monthly ones whatever the span length (the spans' users set the rest)."""
  length = replay.span_length(every)
  thresholds = dict(drift.thresholds_for(length.days, length.months, "100k"))
  if user_floors_monthly:
    thresholds.update({name: drift.THRESHOLDS[name] for name in drift.USER_LEVEL_FEATURES})
  by_span = drift_thresholds.span_batches(table, length)
  stats = {n: drift_thresholds.statistics(batch, schema) for n, (_, batch) in by_span.items()}
  numbers = list(by_span)
  pairs = []
  for previous, current in zip(numbers, numbers[1:]):
    distances = drift_validator.compare(stats[current], stats[previous], schema, thresholds)
    swapped = drift_validator.compare(
        drift_thresholds.statistics(with_genders_swapped(by_span[current][1]), schema),
        stats[previous], schema, thresholds)
    gender = distances[features.USER_GENDER]
    pairs.append({
        "previous": by_span[previous][0], "current": by_span[current][0],
        "ratings": [by_span[n][1].num_rows for n in (previous, current)],
        "effective_users": gender.get("effective_users"),
        "stops_calibrated_only": _stops(distances, calibrated_only=True),
        "stops": _stops(distances, calibrated_only=False),
        "swapped_gender_distance": swapped[features.USER_GENDER]["distance"],
        "swapped_gender_threshold": swapped[features.USER_GENDER]["threshold"],
        "swapped_gender_caught": features.USER_GENDER in _stops(swapped, calibrated_only=False),
        "distances": {name: {k: v for k, v in d.items() if k != "comparator"}
                      for name, d in distances.items()},
    })
  return {
      "spans": len(numbers), "pairs": len(pairs),
      "false_stops_calibrated_only": sum(bool(p["stops_calibrated_only"]) for p in pairs),
      "false_stops": sum(bool(p["stops"]) for p in pairs),
      "swapped_gender_caught": sum(p["swapped_gender_caught"] for p in pairs),
      "pair_list": pairs,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=os.path.join(drift_thresholds.DEFAULT_DATA_DIR,
                                                         "ml-100k"))
  parser.add_argument("--every", nargs="+", default=["1w", "4w", "1m"])
  parser.add_argument("--output", default=DEFAULT_OUTPUT)
  parser.add_argument("--user-floors-monthly", action="store_true",
                      help="the user features' calibrated thresholds are the monthly ones "
                           "for every span length")
  args = parser.parse_args(argv)
  schema = drift_thresholds.load_schema()
  table = parsing.read_release(args.data_dir, parsing.LAYOUTS["100k"])
  result = {"what": "the drift gate on consecutive spans of real MovieLens 100K: false "
                    "stops, and a swapped gender field caught",
            "command": "python bench/drift_gate.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "sampling_quantile": drift.SAMPLING_QUANTILE,
            "user_floors_monthly": args.user_floors_monthly, "span_lengths": {}}
  for every in args.every:
    started = time.time()
    measured = measure(table, every, schema, args.user_floors_monthly)
    measured["seconds"] = round(time.time() - started, 1)
    result["span_lengths"][every] = measured
    print(f"{every}: {measured['pairs']} pairs of consecutive spans; false stops "
          f"{measured['false_stops_calibrated_only']} with the calibrated thresholds alone, "
          f"{measured['false_stops']} counting the spans' users; a swapped gender field "
          f"caught in {measured['swapped_gender_caught']} of {measured['pairs']}", flush=True)
    for pair in measured["pair_list"]:
      print(f"  {pair['previous']} -> {pair['current']}: users {pair['effective_users']}, "
            f"stops {pair['stops_calibrated_only'] or '-'} -> {pair['stops'] or '-'}; "
            f"swapped gender {pair['swapped_gender_distance']:.3f} vs "
            f"{pair['swapped_gender_threshold']:.3f}")
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=1)
  print(f"written: {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
