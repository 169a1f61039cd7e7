"""`recsys replay`: the pipeline span after span on one folder, as the ratings arrived.

Each span from `--from` to `--to` is one `recsys run` of that span on the same
output folder (pipeline/local_runner.py): it ingests the span, checks its drift
from the span before, learns from the spans before it (warm-started from the last
models), is judged on the span itself and pushes what is blessed. What each run
did goes to the timeline (pipeline/timeline.py) as soon as it ends.

A replay resumes like a run: started again with the same settings after a kill,
it skips the spans its timeline holds and reruns the span it was in, whose run
reuses every stage that completed. A span stopped by its data (drift, anomalies)
is recorded with the reason and the replay goes on: the next span learns from the
stopped one too, as a pipeline that keeps running would. Any other error stops
the replay.
"""
import dataclasses
import json
import os
import re
import time
from typing import Dict, List, Optional, Tuple

from common import errors
from common import progress
from components.movielens_example_gen import parsing
from components.movielens_example_gen import spans
from pipeline import configs
from pipeline import local_runner
from pipeline import timeline as timeline_lib

_EVERY = re.compile(r"^(?P<count>[1-9]\d*)(?P<unit>[dwm])$")


def span_length(every: str) -> spans.SpanLength:
  """"7d", "1w" or "1m" as a span length (days, weeks of 7 days, calendar months)."""
  match = _EVERY.match(every)
  if not match:
    raise ValueError(f"--every expects a number and d, w or m (e.g. 1w, 14d, 1m), "
                     f"got {every!r}")
  count = int(match["count"])
  if match["unit"] == "m":
    return spans.SpanLength(months=count)
  return spans.SpanLength(days=count * (7 if match["unit"] == "w" else 1))


def spans_to_replay(plan: spans.SpanPlan, start: Optional[str], end: Optional[str]
                    ) -> List[Tuple[spans.Span, Optional[str]]]:
  """The spans with ratings from the one holding day `start` to the one holding day
  `end`, each with the `until` of its run (`end`, for the span it cuts short).

  The first span with ratings is never among them: it has nothing before it to
  learn from, and is ingested by the first run as the start of its window.
  """
  start_second = spans.end_of_day(start) - 86_400 if start else None
  end_second = spans.end_of_day(end)
  chosen = []
  for number in plan.with_ratings[1:]:
    span = plan.cutter.span(number)
    if start_second is not None and span.end <= start_second:
      continue
    if end_second is not None and span.start >= end_second:  # starts after day `end`
      break
    cut = end if end_second is not None and end_second < span.end else None
    chosen.append((span, cut))
  return chosen


def _settings(config: configs.PipelineConfig, every: str) -> Dict:
  """What every span of one replay shares (a timeline records them and refuses others)."""
  return {"dataset": config.dataset, "every": every, "span_length": str(
      spans.SpanLength(config.span_days, config.span_months)),
      "window_spans": config.window_spans, "split_seed": config.seed}


def _record_of_run(summary, span: spans.Span, until: Optional[str], seconds: float) -> Dict:
  """The timeline record of a span whose run finished."""
  # pylint: disable=g-import-not-at-top
  from components import drift_validator
  from components import model_report
  from pipeline import run_store
  # pylint: enable=g-import-not-at-top
  record = _record(span, until, seconds, summary.components)
  report = model_report.load(os.path.dirname(summary.report_path))
  models = {}
  for name in timeline_lib.LIKE_MODELS:
    result = report["models"][name]
    models[name] = {"auc": result["auc"], "blessed": result["blessed"],
                    "reason": result["blessing_reason"]}
  ranking = report["ranking"]
  systems = ranking["systems"]
  models[timeline_lib.RECOMMENDER] = {
      **{m: systems[timeline_lib.RECOMMENDER]["metrics"][m]
         for m in timeline_lib.RANKING_METRICS},
      "blessed": ranking["blessing"]["blessed"],
      "reason": model_report.ranking_checks(ranking["blessing"])}
  for name, entry in models.items():
    entry["pushed"] = summary.pushed.get(f"Pusher.{name}")
  record["models"] = models
  record["baselines"] = {name: {m: systems[name]["metrics"][m]
                                for m in timeline_lib.RANKING_METRICS}
                         for name in timeline_lib.BASELINES if name in systems}
  store = run_store.RunStore(summary.output_dir)
  drift_dir = store.require(drift_validator.DriftReport.TYPE_NAME, "DriftValidator")
  drift = _read_json(os.path.join(drift_dir, drift_validator.REPORT_FILE))
  if drift["span"] == span.number:
    record["drift"] = {
        "previous_span": drift["previous_span"], "accepted": drift["accepted"],
        "features": {name: d["distance"] for name, d in drift["features"].items()},
        "drifted": sorted(name for name, d in drift["features"].items() if d["drifted"])}
  return record


def _record(span: spans.Span, until: Optional[str], seconds: float, stages) -> Dict:
  return {"span": span.number, "first_day": span.first_day, "last_day": span.last_day,
          "until": until, "outcome": "done", "seconds": round(seconds, 1),
          "stages": {c.node_id: {"state": c.state, "seconds": round(c.seconds, 1)}
                     for c in stages}}


def _read_json(path: str) -> Dict:
  with open(path) as f:
    return json.load(f)


def replay(config: configs.PipelineConfig, every: str, start: Optional[str] = None,
           end: Optional[str] = None, verbose: bool = False) -> timeline_lib.Timeline:
  """Runs the spans of length `every` from day `start` to day `end` (YYYY-MM-DD,
  inclusive; default: the whole release) on `config.output_dir`; returns the
  timeline, also written to `<output_dir>/report/`."""
  length = span_length(every)
  config = dataclasses.replace(config, span_days=length.days, span_months=length.months,
                               span=-1, until=None)
  ratings_path, plan = local_runner.span_plan(config)
  chosen = spans_to_replay(plan, start, end)
  if not chosen:
    raise parsing.MovieLensDataError(
        f"{ratings_path}: no span of {length} with ratings between "
        f"{start or 'the first rating'} and {end or 'the last'} has an earlier span to "
        f"learn from (spans with ratings: {plan.cutter.span(plan.with_ratings[0]).first_day}"
        f" to {plan.cutter.span(plan.with_ratings[-1]).last_day})")
  report_dir = os.path.join(config.output_dir, "report")
  timeline = timeline_lib.load(report_dir, _settings(config, every))
  done = [span.number for span, until in chosen if timeline.record_of(span.number, until)]
  progress.report("replay", f"{len(chosen)} spans of {length}, {chosen[0][0].first_day} to "
                  f"{chosen[-1][1] or chosen[-1][0].last_day}, on {config.output_dir}"
                  + (f"; {len(done)} done by an earlier replay" if done else ""))
  for position, (span, until) in enumerate(chosen, 1):
    if span.number in done:
      continue
    learned_from = local_runner.window(plan, span.number, config.window_spans)
    progress.report("replay", f"{span.describe()}, {position} of {len(chosen)}: "
                    f"{plan.counts[span.number]:,} ratings")
    started = time.monotonic()
    try:
      summary = local_runner.run(dataclasses.replace(config, span=span.number, until=until),
                                 verbose)
      record = _record_of_run(summary, span, until, time.monotonic() - started)
    except Exception as e:  # pylint: disable=broad-except
      if not _stopped_by_its_data(e):
        raise
      record = _record(span, until, time.monotonic() - started, [])
      record.update(outcome="stopped", stopped=str(errors.known_error(e)))
      progress.report("replay", f"span {span.number} stopped by its data; going on "
                      "with the next one")
    record["learned_from"] = [learned_from[0], learned_from[-1]]
    record["examples"] = {"window": sum(plan.counts[n] for n in learned_from),
                          "span": plan.counts[span.number]}
    timeline.add(record)
    timeline_lib.save(timeline, report_dir)
    progress.report("replay", _outcome(record))
  return timeline


def _stopped_by_its_data(error: BaseException) -> bool:
  """Whether a span's run failed on its data (drift or anomalies), not on the replay."""
  from components import anomalies_gate  # pylint: disable=g-import-not-at-top
  return isinstance(errors.known_error(error), anomalies_gate.DataValidationError)


def _outcome(record: Dict) -> str:
  if record["outcome"] == "stopped":
    return f"span {record['span']}: stopped in {record['seconds']:.0f} s"
  parts = []
  for name, entry in record["models"].items():
    metric = "auc" if "auc" in entry else "ndcg@10"
    verdict = f"pushed as {entry['pushed']}" if entry["pushed"] else (
        "blessed" if entry["blessed"] else "rejected")
    parts.append(f"{name} {metric} {entry[metric]:.4f} {verdict}")
  return f"span {record['span']} in {record['seconds']:.0f} s: " + "; ".join(parts)
