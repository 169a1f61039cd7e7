"""Should the request time be an input of the like model? Time-aware features on the next span.

Serving knows when a request comes, so the like model (P(like), a rating of 4 or 5)
could take the time as an input: the hour of day, the day of week, or the user's
recency, which serving knows from the user's history. This measures whether any of
them helps on the next span, the test the continuous-training pipeline judges
models by. It needs no TensorFlow: a logistic regression written in numpy stands
in for the like model, on the per-id statistics the production model already
reads (`use_id_statistics`, models/preprocessing.py) plus one time feature.

Spans. The ratings are cut into spans of `--span-days` days (7) from the UTC day of
the first rating, as `recsys run --span-days` cuts them. Each of the last
`--test-spans` spans (8) that hold at least `--min-ratings` ratings (200) is a next
span; its history is every rating before it.

Fit without leaking. The per-id statistics of a row must come from ratings before
it, as the model's Transform constants do. So, for a test span starting at S:
- the regression is fitted on the ratings of the `--fit-days` days (28) before S,
  with the statistics computed on the history before S - fit-days;
- on the test span it scores with the statistics recomputed on all history (< S),
  the constants a model trained up to S would carry.
The gap between statistics and rows is thus 0-28 days in the fit and 0-7 days in
the test, the same for every model compared.

Base features (standardised on the fit rows): logit of the smoothed user like rate
and of the smoothed movie like rate ((likes + 10 * global rate) / (ratings + 10),
global rate of the history, as models/preprocessing.py smooths them),
log(1 + user ratings), log(1 + movie ratings).

Candidates, each added on its own to the base, then all together:
- hour: sin and cos of the hour of day (local time, below);
- weekday: one-hot day of week (Monday the reference);
- since_previous: log(1 + seconds since the user's latest earlier rating), and an
  indicator for "no earlier rating"; ratings of the same second (MovieLens saves a
  page of ratings at once) count as one request, so "earlier" is strictly earlier;
- since_first: log(1 + days since the user's first rating);
- first_session: whether the rating is within 1 day of the user's first rating.
The recency features read the user's whole timeline up to the rating, earlier
ratings of the same span included: serving knows them from the user's history.

Local time. MovieLens timestamps are UTC and users' time zones are unknown; 100K's
users are mostly in the US (zip codes), so hours and weekdays are shifted by
`--utc-offset-hours` (-6, US Central, no daylight saving). A constant shift changes
nothing for the sin/cos of the hour (a rotation), only where weekdays start; the
spread of users over US zones (3-4 hours) blurs any hourly signal either way.

The model: L2-penalised logistic regression (penalty 1.0 on the summed log loss,
intercept free), fitted by Newton's method (IRLS) with step halving until the
largest step is below 1e-8; a fit that does not converge is an error.

The measure: AUC on the next span, pooled over its ratings (ties count one half),
per span and its mean over spans; each candidate's gain over the base with a
paired 95% t interval over the spans and, as a check, a bootstrap over users
(resampling the test spans' users, fits fixed, `--bootstrap` draws). Log loss is
reported too. A feature helps if its mean AUC gain is > 0.002 and the interval
over spans excludes 0. Also reported, the raw signal on the whole release: like
rate by local hour, weekday, time since the previous rating and since the first,
and the same minus each user's own like rate (the signal within users).

  nice -n 10 .venv/bin/python bench/time_features.py  # writes bench/results/time_features.json
  # MovieLens-1M ends sparse (most ratings are from 2000): monthly spans. Its real
  # ratings.dat is not in ../shared/data/movielens (its README says why).
  .venv/bin/python bench/time_features.py --dataset 1m --span-days 30 \
      --output bench/results/time_features_1m.json
"""
import argparse
import datetime
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=g-import-not-at-top
import pandas as pd  # pylint: disable=g-import-not-at-top
from scipy import stats  # pylint: disable=g-import-not-at-top

from models import features  # pylint: disable=g-import-not-at-top

# The real GroupLens files live beside the repository, never in it (tests/conftest.py).
DATA_ROOT = os.environ.get("MOVIELENS_REAL_DATA",
                           os.path.join(os.path.dirname(REPO), "shared", "data", "movielens"))
RELEASES = {"100k": ("ml-100k", "u.data"), "1m": ("ml-1m", "ratings.dat")}
DAY = 86_400
# 1970-01-01, day 0 of Unix time, was a Thursday (Monday = 0).
EPOCH_WEEKDAY = 3
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
CANDIDATES = ("hour", "weekday", "since_previous", "since_first", "first_session")
BASE_COLUMNS = ("user_rate_logit", "movie_rate_logit", "user_count_log", "movie_count_log")
L2_PENALTY = 1.0
# The decision rule of issue 17: a gain worth a model input, and not noise.
MIN_GAIN = 0.002


def read_ratings(dataset: str, data_dir: str) -> pd.DataFrame:
  """user, movie, rating, timestamp (UTC seconds) and like, sorted by user and time."""
  path = os.path.join(data_dir, RELEASES[dataset][1])
  if dataset == "100k":
    table = pd.read_csv(path, sep="\t", header=None, usecols=[0, 1, 2, 3])
  else:
    # "user::movie::rating::time": split on single colons, which leaves empty
    # columns between the fields, and keeps pandas' fast C parser.
    table = pd.read_csv(path, sep=":", header=None, usecols=[0, 2, 4, 6])
  table.columns = ["user", "movie", "rating", "timestamp"]
  table = table.astype("int64").sort_values(["user", "timestamp"], kind="stable")
  table["like"] = (table["rating"] >= features.LIKE_MIN_RATING).astype(float)
  return table.reset_index(drop=True)


def add_time_facts(table: pd.DataFrame, utc_offset_hours: float) -> None:
  """Adds each rating's local hour and weekday and its user's recency (in place).

  Expects the table sorted by user and time. A rating's recency reads only the
  user's ratings strictly before it: what serving would know at that moment.
  """
  users = table["user"].to_numpy()
  seconds = table["timestamp"].to_numpy()
  local = seconds + int(utc_offset_hours * 3600)
  table["hour"] = (local % DAY) / 3600.0  # fractional hour, for sin/cos
  table["weekday"] = (local // DAY + EPOCH_WEEKDAY) % 7
  # The first row of each run of equal (user, second): its previous row, if of the
  # same user, is the latest strictly earlier rating of every row in the run.
  new_run = np.ones(len(table), bool)
  new_run[1:] = (users[1:] != users[:-1]) | (seconds[1:] != seconds[:-1])
  run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(table)), 0))
  before = run_start - 1
  has_earlier = (before >= 0) & (users[np.maximum(before, 0)] == users)
  table["seconds_since_previous"] = np.where(
      has_earlier, seconds - seconds[np.maximum(before, 0)], np.nan)
  first_time = table.groupby("user")["timestamp"].transform("min").to_numpy()
  table["days_since_first"] = (seconds - first_time) / DAY


def time_block(table: pd.DataFrame, candidate: str) -> np.ndarray:
  """One candidate's input columns for every row of `table`."""
  if candidate == "hour":
    angle = 2 * np.pi * table["hour"].to_numpy() / 24
    return np.column_stack([np.sin(angle), np.cos(angle)])
  if candidate == "weekday":
    weekday = table["weekday"].to_numpy()
    return np.column_stack([(weekday == day).astype(float) for day in range(1, 7)])
  if candidate == "since_previous":
    gap = table["seconds_since_previous"].to_numpy()
    no_earlier = np.isnan(gap)
    return np.column_stack([np.where(no_earlier, 0.0, np.log1p(np.nan_to_num(gap))),
                            no_earlier.astype(float)])
  if candidate == "since_first":
    return np.log1p(table["days_since_first"].to_numpy())[:, None]
  if candidate == "first_session":
    return (table["days_since_first"].to_numpy() < 1.0).astype(float)[:, None]
  raise ValueError(candidate)


def _logit(p: np.ndarray) -> np.ndarray:
  return np.log(p) - np.log1p(-p)


def base_block(rows: pd.DataFrame, history: pd.DataFrame) -> np.ndarray:
  """The per-id statistics of `rows`' users and movies, computed on `history`."""
  global_rate = history["like"].mean()
  prior = features.LIKE_RATE_PRIOR_COUNT
  columns = []
  for key in ("user", "movie"):
    grouped = history.groupby(key)["like"].agg(["sum", "count"])
    likes = rows[key].map(grouped["sum"]).fillna(0.0).to_numpy()
    counts = rows[key].map(grouped["count"]).fillna(0.0).to_numpy()
    columns.append(_logit((likes + prior * global_rate) / (counts + prior)))
    columns.append(np.log1p(counts))
  # Order as BASE_COLUMNS: both rates, then both counts.
  return np.column_stack([columns[0], columns[2], columns[1], columns[3]])


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def _penalised_loss(x: np.ndarray, y: np.ndarray, w: np.ndarray, penalty: np.ndarray) -> float:
  z = x @ w
  return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * w * w))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2_PENALTY,
                 tolerance: float = 1e-8, max_iterations: int = 100):
  """(weights with the intercept last, facts of the fit): Newton's method on the
  L2-penalised log loss, the intercept unpenalised; raises if it does not converge."""
  x = np.column_stack([x, np.ones(len(x))])
  penalty = np.full(x.shape[1], l2)
  penalty[-1] = 0.0
  w = np.zeros(x.shape[1])
  loss = _penalised_loss(x, y, w, penalty)
  for iteration in range(1, max_iterations + 1):
    p = _sigmoid(x @ w)
    gradient = x.T @ (p - y) + penalty * w
    hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
    step = np.linalg.solve(hessian, gradient)
    # Halve the step until the loss does not rise: Newton's full step can overshoot.
    scale = 1.0
    while True:
      candidate = w - scale * step
      candidate_loss = _penalised_loss(x, y, candidate, penalty)
      if candidate_loss <= loss + 1e-12 or scale < 1e-6:
        break
      scale /= 2
    w, loss = candidate, candidate_loss
    if np.max(np.abs(scale * step)) < tolerance:
      p = _sigmoid(x @ w)
      gradient_norm = float(np.max(np.abs(x.T @ (p - y) + penalty * w)) / len(y))
      return w, {"iterations": iteration, "max_gradient_per_row": gradient_norm}
  raise RuntimeError(f"logistic regression did not converge in {max_iterations} iterations")


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
  return _sigmoid(x @ w[:-1] + w[-1])


def auc(scores: np.ndarray, labels: np.ndarray, weights=None) -> float:
  """Area under the ROC curve, ties counted one half; optional row weights."""
  if weights is None:
    weights = np.ones(len(scores))
  _, group = np.unique(scores, return_inverse=True)
  positives = np.bincount(group, weights * labels)
  negatives = np.bincount(group, weights * (1 - labels))
  negatives_below = np.cumsum(negatives) - negatives
  total = positives.sum() * negatives.sum()
  return float(np.sum(positives * (negatives_below + 0.5 * negatives)) / total)


def log_loss(p: np.ndarray, labels: np.ndarray) -> float:
  p = np.clip(p, 1e-12, 1 - 1e-12)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def model_names():
  return ("base",) + CANDIDATES + ("all",)


def inputs_of(model: str, base: np.ndarray, table: pd.DataFrame) -> np.ndarray:
  if model == "base":
    return base
  added = CANDIDATES if model == "all" else (model,)
  return np.column_stack([base] + [time_block(table, c) for c in added])


def test_spans(table: pd.DataFrame, span_days: int, count: int, min_ratings: int):
  """(span number, start, end) of the last `count` spans with enough ratings."""
  origin = int(table["timestamp"].min()) // DAY * DAY  # the first rating's UTC day
  span = (table["timestamp"].to_numpy() - origin) // (span_days * DAY)
  sizes = np.bincount(span)
  kept = [int(s) for s in np.flatnonzero(sizes >= min_ratings)][-count:]
  return [(s, origin + s * span_days * DAY, origin + (s + 1) * span_days * DAY)
          for s in kept]


def _day(seconds: int) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).date().isoformat()


def evaluate_span(table: pd.DataFrame, start: int, end: int, fit_days: int):
  """Fits every model before `start` and scores the span [start, end)."""
  seconds = table["timestamp"]
  fit_start = start - fit_days * DAY
  fit_rows = table[(seconds >= fit_start) & (seconds < start)]
  fit_history = table[seconds < fit_start]
  test_rows = table[(seconds >= start) & (seconds < end)]
  history = table[seconds < start]
  if fit_history.empty or fit_rows["like"].nunique() < 2:
    return None
  fit_base = base_block(fit_rows, fit_history)
  test_base = base_block(test_rows, history)
  y_fit, y_test = fit_rows["like"].to_numpy(), test_rows["like"].to_numpy()
  result = {"fit_rows": len(fit_rows), "test_rows": len(test_rows),
            "test_users": int(test_rows["user"].nunique()),
            # Users the history never saw: their statistics are the prior's.
            "test_rows_of_new_users": round(float(
                (~test_rows["user"].isin(history["user"])).mean()), 3),
            "test_like_rate": round(float(y_test.mean()), 4),
            "models": {}}
  scores = {}
  for model in model_names():
    x_fit = inputs_of(model, fit_base, fit_rows)
    x_test = inputs_of(model, test_base, test_rows)
    mean, scale = x_fit.mean(axis=0), x_fit.std(axis=0)
    scale[scale == 0] = 1.0  # a column constant in the fit rows carries nothing
    w, fit_facts = fit_logistic((x_fit - mean) / scale, y_fit)
    p = predict(w, (x_test - mean) / scale)
    scores[model] = p
    result["models"][model] = {
        "auc": auc(p, y_test), "log_loss": log_loss(p, y_test),
        "fit_auc": auc(predict(w, (x_fit - mean) / scale), y_fit),
        "standardised_weights": [round(float(v), 4) for v in w[:-1]], **fit_facts}
  return result, scores, y_test, test_rows["user"].to_numpy()


def paired_interval(differences) -> dict:
  differences = np.asarray(differences)
  mean = float(differences.mean())
  half = float(stats.t.ppf(0.975, len(differences) - 1) * differences.std(ddof=1)
               / np.sqrt(len(differences)))
  return {"mean": mean, "low": mean - half, "high": mean + half}


def bootstrap_over_users(span_scores, draws: int, seed: int) -> dict:
  """Per model, the 95% percentile interval of its mean AUC gain over the base,
  resampling the test spans' users (the same draw in every span and model)."""
  rng = np.random.default_rng(seed)
  all_users = np.unique(np.concatenate([users for _, _, users in span_scores]))
  index_of = [np.searchsorted(all_users, users) for _, _, users in span_scores]
  gains = {model: np.empty(draws) for model in model_names()[1:]}
  for draw in range(draws):
    times_drawn = np.bincount(rng.integers(0, len(all_users), len(all_users)),
                              minlength=len(all_users)).astype(float)
    per_model = {model: [] for model in model_names()}
    for (scores, labels, _), rows in zip(span_scores, index_of):
      weights = times_drawn[rows]
      if weights[labels > 0.5].sum() == 0 or weights[labels < 0.5].sum() == 0:
        continue  # this draw kept no like (or no dislike) of the span
      for model in model_names():
        per_model[model].append(auc(scores[model], labels, weights))
    base = np.mean(per_model["base"])
    for model in gains:
      gains[model][draw] = np.mean(per_model[model]) - base
  return {model: {"low": float(np.percentile(g, 2.5)), "high": float(np.percentile(g, 97.5))}
          for model, g in gains.items()}


def _bucket_table(table: pd.DataFrame, bucket: pd.Series) -> list:
  """Ratings, users, like rate and like rate minus the user's own, per bucket."""
  user_rate = table.groupby("user")["like"].transform("mean")
  frame = pd.DataFrame({"bucket": bucket, "like": table["like"], "user": table["user"],
                        "within_user": table["like"] - user_rate})
  grouped = frame.groupby("bucket", sort=True)
  return [{"bucket": str(name), "ratings": int(len(group)),
           "users": int(group["user"].nunique()),
           "like_rate": round(float(group["like"].mean()), 4),
           "like_rate_minus_users_own": round(float(group["within_user"].mean()), 4)}
          for name, group in grouped]


def raw_signal(table: pd.DataFrame) -> dict:
  """Like rates by local time and recency over the whole release."""
  hour = table["hour"].astype(int)
  four_hours = (hour // 4 * 4).map(lambda h: f"{h:02d}-{h + 3:02d}h")
  gap = table["seconds_since_previous"]
  # Gaps are to strictly earlier ratings, so at least 1 s.
  gap_edges = [0, 60, 600, 3600, DAY, 7 * DAY, 30 * DAY, np.inf]
  gap_names = ["a: 1 s-1 min", "b: 1-10 min", "c: 10 min-1 h", "d: 1 h-1 day",
               "e: 1-7 days", "f: 7-30 days", "g: > 30 days"]
  gap_bucket = pd.cut(gap, gap_edges, labels=gap_names).astype(object)
  gap_bucket = gap_bucket.where(gap.notna(), "0: no earlier rating")
  days = table["days_since_first"]
  first_edges = [-1, 1, 7, 30, 90, np.inf]
  first_names = ["a: first day", "b: 1-7 days", "c: 7-30 days", "d: 30-90 days",
                 "e: > 90 days"]
  return {
      "overall_like_rate": round(float(table["like"].mean()), 4),
      "by_local_hour": _bucket_table(table, four_hours),
      "by_local_weekday": _bucket_table(
          table, table["weekday"].map(lambda d: f"{d}: {WEEKDAYS[d]}")),
      "by_time_since_previous_rating": _bucket_table(table, gap_bucket),
      "by_time_since_first_rating": _bucket_table(
          table, pd.cut(days, first_edges, labels=first_names).astype(str)),
  }


def summarize(per_span: list) -> dict:
  summary = {}
  base = np.array([span["models"]["base"]["auc"] for span in per_span])
  for model in model_names():
    aucs = np.array([span["models"][model]["auc"] for span in per_span])
    losses = np.array([span["models"][model]["log_loss"] for span in per_span])
    entry = {"auc_mean": round(float(aucs.mean()), 4),
             "auc_sd_over_spans": round(float(aucs.std(ddof=1)), 4),
             "auc_min": round(float(aucs.min()), 4), "auc_max": round(float(aucs.max()), 4),
             "log_loss_mean": round(float(losses.mean()), 4)}
    if model != "base":
      gain = paired_interval(aucs - base)
      entry["auc_gain"] = {k: round(v, 4) for k, v in gain.items()}
      entry["spans_improved"] = int(np.sum(aucs > base))
      entry["log_loss_change_mean"] = round(float(np.mean(
          losses - [span["models"]["base"]["log_loss"] for span in per_span])), 4)
      entry["helps"] = bool(gain["mean"] > MIN_GAIN and gain["low"] > 0)
    summary[model] = entry
  return summary


def print_report(summary: dict, raw: dict) -> None:
  print(f"{'model':<15}{'AUC mean':>9}{'sd':>8}{'min':>8}{'max':>8}{'gain':>9}"
        f"{'95% CI (spans)':>20}{'95% CI (users)':>20}{'better':>8}  helps")
  for model, entry in summary.items():
    line = (f"{model:<15}{entry['auc_mean']:>9.4f}{entry['auc_sd_over_spans']:>8.4f}"
            f"{entry['auc_min']:>8.4f}{entry['auc_max']:>8.4f}")
    if "auc_gain" in entry:
      gain, users = entry["auc_gain"], entry.get("auc_gain_bootstrap_users", {})
      over_spans = "[{:+.4f}, {:+.4f}]".format(gain["low"], gain["high"])
      over_users = "[{:+.4f}, {:+.4f}]".format(users.get("low", np.nan),
                                               users.get("high", np.nan))
      helps = "yes" if entry["helps"] else "no"
      line += (f"{gain['mean']:>+9.4f}{over_spans:>20}{over_users:>20}"
               f"{entry['spans_improved']:>8}  {helps}")
    print(line)
  for key in ("by_local_hour", "by_local_weekday", "by_time_since_previous_rating",
              "by_time_since_first_rating"):
    print(f"\n{key} (overall like rate {raw['overall_like_rate']:.3f})")
    for row in raw[key]:
      print(f"  {row['bucket']:<22}{row['ratings']:>8}{row['like_rate']:>8.3f}"
            f"{row['like_rate_minus_users_own']:>+8.3f}")


def _shown(key: str, value):
  """A per-span number as the report keeps it: 4 decimals, the gradient in 3 digits."""
  if key == "max_gradient_per_row":
    return float(f"{value:.2e}")
  return round(value, 4) if isinstance(value, float) else value


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=sorted(RELEASES), default="100k")
  parser.add_argument("--data-dir", default=None,
                      help="the release's folder (default: $MOVIELENS_REAL_DATA or "
                           "../shared/data/movielens, then ml-100k or ml-1m)")
  parser.add_argument("--span-days", type=int, default=7, help="span length (default 7)")
  parser.add_argument("--test-spans", type=int, default=8,
                      help="how many of the last spans are next spans (default 8)")
  parser.add_argument("--min-ratings", type=int, default=200,
                      help="spans with fewer ratings are not tested (default 200)")
  parser.add_argument("--fit-days", type=int, default=28,
                      help="the regression's rows: the days before the test span (28)")
  parser.add_argument("--utc-offset-hours", type=float, default=-6.0,
                      help="users' assumed local time (default -6, US Central)")
  parser.add_argument("--bootstrap", type=int, default=1000,
                      help="draws of the bootstrap over users (default 1000)")
  parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
  parser.add_argument("--output", default="bench/results/time_features.json")
  args = parser.parse_args()
  data_dir = args.data_dir or os.path.join(DATA_ROOT, RELEASES[args.dataset][0])
  ratings_file = os.path.join(data_dir, RELEASES[args.dataset][1])
  if not os.path.isfile(ratings_file):
    sys.exit(f"no {ratings_file} (--data-dir)")
  started = time.perf_counter()
  table = read_ratings(args.dataset, data_dir)
  add_time_facts(table, args.utc_offset_hours)
  raw = raw_signal(table)
  per_span, span_scores = [], []
  for number, start, end in test_spans(table, args.span_days, args.test_spans,
                                       args.min_ratings):
    evaluated = evaluate_span(table, start, end, args.fit_days)
    if evaluated is None:
      print(f"span {number}: no history before its fit window, skipped", flush=True)
      continue
    result, scores, labels, users = evaluated
    result = {"span": number, "first_day": _day(start), "last_day": _day(end - 1), **result}
    per_span.append(result)
    span_scores.append((scores, labels, users))
    print(f"span {number} ({result['first_day']}): {result['test_rows']} ratings, "
          + ", ".join(f"{m} {v['auc']:.4f}" for m, v in result["models"].items()), flush=True)
  if len(per_span) < 2:
    sys.exit("fewer than 2 test spans: no interval over spans")
  summary = summarize(per_span)
  for model, interval in bootstrap_over_users(span_scores, args.bootstrap,
                                              args.seed).items():
    summary[model]["auc_gain_bootstrap_users"] = {k: round(v, 4) for k, v in interval.items()}
  helping = [model for model in model_names()[1:] if summary[model]["helps"]]
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "settings": {**vars(args), "data_dir": os.path.abspath(data_dir),
                   "l2_penalty": L2_PENALTY, "prior_count": features.LIKE_RATE_PRIOR_COUNT,
                   "like_min_rating": features.LIKE_MIN_RATING,
                   "rule": f"helps: mean AUC gain > {MIN_GAIN} and the paired 95% "
                           "interval over spans excludes 0"},
      "data": {"ratings": len(table), "users": int(table["user"].nunique()),
               "movies": int(table["movie"].nunique()),
               "first_rating": _day(int(table["timestamp"].min())),
               "last_rating": _day(int(table["timestamp"].max()))},
      "base_columns": list(BASE_COLUMNS),
      "summary": summary,
      "decision": {"helping_features": helping,
                   "add_to_model": [m for m in helping if m != "all"]},
      "raw_signal": raw,
      "spans": [{**span, "models": {m: {k: _shown(k, v) for k, v in entry.items()}
                                    for m, entry in span["models"].items()}}
                for span in per_span],
      "seconds": round(time.perf_counter() - started, 1),
  }
  print_report(summary, raw)
  print(f"\nhelps: {', '.join(helping) or 'none'}; {report['seconds']} s")
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
