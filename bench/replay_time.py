"""A replay's time per span against a full run on the same data, and its timeline.

Continuous training's promise is that once the first span is done, each new span
costs a fraction of a full run: its ingestion is one span, the earlier spans and
their statistics come from the cache, and the Trainers start from the last models.
This measures it, in one process (TensorFlow imported once, for both):

1. a full `recsys run` of the release (no spans) in a fresh folder: its wall time;
2. `recsys replay --every EVERY` in another folder (resumed if it holds an earlier,
   interrupted replay of the same settings): each span's wall time, from its run's
   start to its timeline record, and its stages' times.

Reports, per span, its seconds and their ratio to the full run; over the spans
after the first, the median and the largest ratio (the issue's target: under 0.4);
and the timeline (test AUC, NDCG@10 against popularity, blessings, pushes). Writes
JSON.

  python bench/replay_time.py --data-dir ../shared/data/movielens/ml-100k --every 1w \
      --output bench/results/replay_100k_1w.json

At 1M scale, on the synthetic release `make bench` uses (written once into
`--data-dir`), monthly spans and a bounded window:

  python bench/replay_time.py --synthetic-1m --data-dir runs/bench-1m/data/ml-1m --every 1m \
      --window-spans 6 --from 2002-09-01 --output bench/results/replay_1m_1m.json
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common import progress  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top
from pipeline import local_runner  # pylint: disable=g-import-not-at-top
from pipeline import replay  # pylint: disable=g-import-not-at-top
from pipeline import timeline  # pylint: disable=g-import-not-at-top

TARGET_RATIO = 0.4
DEFAULT_DATA_DIR = os.environ.get(
    "MOVIELENS_REAL_DATA", os.path.join(os.path.dirname(REPO), "shared", "data",
                                        "movielens")) + "/ml-100k"


def _full_run_seconds(config: configs.PipelineConfig) -> dict:
  progress.report("bench", f"full run (no spans) in {config.output_dir}")
  started = time.monotonic()
  summary = local_runner.run(config)
  seconds = time.monotonic() - started
  return {"seconds": round(seconds, 1), "output_dir": config.output_dir,
          "stages": {c.node_id: round(c.seconds, 1) for c in summary.components}}


def _span_row(record: dict, full_seconds: float) -> dict:
  row = {"span": record["span"], "first_day": record["first_day"],
         "outcome": record["outcome"], "seconds": record["seconds"],
         "ratio_to_full_run": round(record["seconds"] / full_seconds, 3),
         "examples": record["examples"], "learned_from": record["learned_from"],
         "stages": {node: s["seconds"] for node, s in record["stages"].items()
                    if s["state"] != "cached"}}
  if record["outcome"] == "stopped":
    row["stopped"] = record["stopped"]
    return row
  row["models"] = {name: {k: v for k, v in entry.items() if k != "reason"}
                   for name, entry in record["models"].items()}
  row["baselines"] = record["baselines"]
  row["drifted"] = record.get("drift", {}).get("drifted", [])
  return row


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
  parser.add_argument("--dataset", default="100k", choices=["100k", "1m"])
  parser.add_argument("--synthetic-1m", action="store_true", help="write the MovieLens-1M-"
                      "shaped synthetic release of bench/pipeline_1m.py into --data-dir "
                      "(once) and replay it")
  parser.add_argument("--every", default="1w")
  parser.add_argument("--window-spans", type=int, default=0,
                      help="learn from the last W spans (default: all before)")
  parser.add_argument("--from", dest="start")
  parser.add_argument("--to", dest="end")
  parser.add_argument("--work-dir", default=os.path.join(REPO, "runs", "bench-replay"),
                      help="holds the full run's and the replay's folders")
  parser.add_argument("--full-run-seconds", type=float, help="skip the full run and "
                      "compare with this time (of an earlier measurement)")
  parser.add_argument("--output", default=os.path.join(REPO, "bench", "results",
                                                       "replay_100k_1w.json"))
  args = parser.parse_args(argv)
  if args.synthetic_1m:
    import pipeline_1m  # pylint: disable=g-import-not-at-top
    args.dataset = "1m"
    pipeline_1m.write_data(args.data_dir, seed=0)

  def config(name, **settings):
    return configs.PipelineConfig(dataset=args.dataset, data_dir=args.data_dir,
                                  output_dir=os.path.join(args.work_dir, name), **settings)

  if args.full_run_seconds:
    full = {"seconds": args.full_run_seconds, "given": True}
  else:
    full = _full_run_seconds(config(f"full-{datetime.datetime.now():%Y%m%d-%H%M%S}"))
  length = replay.span_length(args.every)
  replay_config = config(f"replay-{args.dataset}-{args.every}"
                         + (f"-window-{args.window_spans}" if args.window_spans else ""),
                         span_days=length.days, span_months=length.months,
                         window_spans=args.window_spans)
  started = time.monotonic()
  result = replay.replay(replay_config, args.every, args.start, args.end)
  rows = [_span_row(r, full["seconds"]) for r in result.records]
  later = [r["ratio_to_full_run"] for r in rows[1:] if r["outcome"] == "done"]
  summary = {
      "date": datetime.date.today().isoformat(), "dataset": args.dataset,
      "data_dir": args.data_dir, "every": args.every,
      "window_spans": args.window_spans or "all", "cores": configs.available_cores(),
      "full_run": full, "replay_seconds_this_invocation": round(
          time.monotonic() - started, 1),
      "spans": rows,
      "after_the_first_span": {
          "spans": len(later),
          "median_ratio": round(statistics.median(later), 3) if later else None,
          "max_ratio": max(later) if later else None,
          "target_ratio": TARGET_RATIO},
      "stopped": [r["span"] for r in rows if r["outcome"] == "stopped"],
      "timeline": os.path.join(replay_config.output_dir, "report", timeline.TIMELINE_FILE)}
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(summary, f, indent=1)
  print(timeline.table(result))
  print(f"\nfull run {full['seconds']:.0f} s; after the first span: median "
        f"{summary['after_the_first_span']['median_ratio']} and at most "
        f"{summary['after_the_first_span']['max_ratio']} of it (target < {TARGET_RATIO}); "
        f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
