"""The replay's plan and its timeline (JSON, table, figure), without running a pipeline."""
import json
import warnings

import matplotlib.image
import numpy as np
import pytest

from components.movielens_example_gen import spans
from pipeline import replay
from pipeline import timeline


def _day(text: str) -> int:
  return int(np.datetime64(text).astype("datetime64[s]").astype(np.int64))


# Ratings on five Mondays-to-Sundays of 1997 (weeks from Monday 1997-09-22), none
# in the third week.
_TIMESTAMPS = np.array([_day(d) for d in (
    "1997-09-22", "1997-09-28", "1997-09-30", "1997-10-12", "1997-10-20", "1997-10-26")]
                       + [_day("1997-10-26") + 86_399])


def test_every_reads_days_weeks_and_months():
  assert replay.span_length("1w") == spans.SpanLength(days=7)
  assert replay.span_length("14d") == spans.SpanLength(days=14)
  assert replay.span_length("1m") == spans.SpanLength(months=1)
  for bad in ("w", "0w", "1y", "1 w", "-1d"):
    with pytest.raises(ValueError, match="--every expects a number and d, w or m"):
      replay.span_length(bad)


def test_the_replay_runs_every_span_with_ratings_after_the_first():
  plan = spans.SpanPlan.of(_TIMESTAMPS, spans.SpanLength(days=7))
  assert plan.counts == {0: 2, 1: 1, 2: 1, 3: 0, 4: 3}
  chosen = replay.spans_to_replay(plan, None, None)
  # Span 0 has nothing before it; span 3 holds no ratings.
  assert [(span.number, until) for span, until in chosen] == [(1, None), (2, None), (4, None)]
  assert chosen[0][0].first_day == "1997-09-29"


def test_from_and_to_pick_the_spans_holding_those_days_and_cut_the_last():
  plan = spans.SpanPlan.of(_TIMESTAMPS, spans.SpanLength(days=7))
  # From the Sunday ending span 1 (it is still in), to the Wednesday of span 4.
  chosen = replay.spans_to_replay(plan, "1997-10-05", "1997-10-22")
  assert [(span.number, until) for span, until in chosen] == [
      (1, None), (2, None), (4, "1997-10-22")]
  # A `to` on a span's last day cuts nothing; a `from` after it leaves it out.
  chosen = replay.spans_to_replay(plan, "1997-10-06", "1997-10-12")
  assert [(span.number, until) for span, until in chosen] == [(2, None)]
  # Nor does it reach into the next span, which starts the day after.
  chosen = replay.spans_to_replay(plan, None, "1997-10-05")
  assert [(span.number, until) for span, until in chosen] == [(1, None)]
  assert replay.spans_to_replay(plan, "1997-10-27", None) == []


def _record(span, cf_auc, blessed, outcome="done"):
  if outcome == "stopped":
    return {"span": span, "first_day": "1997-10-06", "last_day": "1997-10-12",
            "until": None, "outcome": "stopped", "seconds": 9.0, "stages": {},
            "stopped": "span 2 against span 1: the data drifted; nothing was trained or "
                       "pushed.\n  feature 'user_gender': L-infinity distance 0.3",
            "learned_from": [0, 1], "examples": {"window": 10, "span": 4}}
  return {"span": span, "first_day": "1997-09-29", "last_day": "1997-10-05",
          "until": None, "outcome": outcome, "seconds": 80.0, "stages": {},
          "learned_from": [0, span - 1], "examples": {"window": 2_000, "span": 400},
          "models": {"cf": {"auc": cf_auc, "blessed": blessed, "reason": "r",
                            "pushed": "17" if blessed else None},
                     "deepfm": {"auc": 0.7, "blessed": True, "reason": "r", "pushed": "18"},
                     "recommender": {"ndcg@10": 0.12, "recall@10": 0.1, "blessed": True,
                                     "reason": "r", "pushed": "19"}},
          "baselines": {"popularity": {"ndcg@10": 0.08, "recall@10": 0.07}},
          "drift": {"previous_span": span - 1, "features": {"user_gender": 0.05},
                    "drifted": []}}


def test_a_timeline_is_saved_whole_and_continued_only_with_its_settings(tmp_path):
  settings = {"dataset": "100k", "every": "1w"}
  line = timeline.load(str(tmp_path), settings)
  assert line.records == []
  line.add(_record(3, 0.71, True))
  line.add(_record(1, 0.69, False))
  line.add(_record(2, 0, False, outcome="stopped"))
  timeline.save(line, str(tmp_path))
  assert [r["span"] for r in json.loads((tmp_path / timeline.TIMELINE_FILE).read_text())[
      "spans"]] == [1, 2, 3]
  again = timeline.load(str(tmp_path), settings)
  assert again.records == line.records
  assert again.record_of(3, None) == line.records[2] and again.record_of(3, "x") is None
  again.add(_record(3, 0.75, True))  # another run of the same span replaces it
  assert [r["models"]["cf"]["auc"] for r in again.records if "models" in r] == [0.69, 0.75]
  with pytest.raises(timeline.TimelineError,
                     match=r"other settings \(every: '1w' there, '1m' now\)"):
    timeline.load(str(tmp_path), {"dataset": "100k", "every": "1m"})
  (tmp_path / timeline.TIMELINE_FILE).write_text("{")
  with pytest.raises(timeline.TimelineError, match="not JSON"):
    timeline.load(str(tmp_path), settings)


def test_the_table_and_figure_show_verdicts_and_stops(tmp_path):
  line = timeline.Timeline({"every": "1w"}, [_record(1, 0.69, False),
                                             _record(2, 0, False, outcome="stopped"),
                                             _record(3, 0.71, True)])
  rows = timeline.table(line).splitlines()
  assert "0.6900x" in rows[1] and "0.7100+" in rows[3]
  assert "deepfm,recommender" in rows[1] and "cf,deepfm,recommender" in rows[3]
  assert "stopped: span 2 against span 1: the data drifted" in rows[2]
  assert "feature 'user_gender'" in rows[2]

  first, second = tmp_path / "a.png", tmp_path / "b.png"
  timeline.figure(line, str(first))
  image = matplotlib.image.imread(str(first))
  assert image.shape[0] > 300 and image.shape[1] > 1000
  # The stopped span's grey band, and the rejected span's hollow marker, are drawn:
  # without them the picture differs.
  timeline.figure(timeline.Timeline({"every": "1w"}, [_record(1, 0.69, True),
                                                     _record(3, 0.71, True)]), str(second))
  assert not np.array_equal(image, matplotlib.image.imread(str(second)))


def test_a_timeline_of_stopped_spans_only_draws_quietly(tmp_path):
  stopped = timeline.Timeline({"every": "1w"}, [_record(1, 0, False, outcome="stopped"),
                                                _record(2, 0, False, outcome="stopped")])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib's warning of a legend with nothing in it
    timeline.figure(stopped, str(tmp_path / "stopped.png"))
  assert (tmp_path / "stopped.png").read_bytes()[:4] == b"\x89PNG"
