"""What to serve a user seen for the first time: the cold-start order, on real next spans.

In a replay of MovieLens-100K most of each span's ratings come from users whose
first rating is in that span: `recommend` knows nothing of them and serves its
cold-start list. This measures, per span of `--span-days` days (7) from the first
rating's UTC day, from the fifth span on:

- the share of the span's ratings by users first seen in it;
- over those users, NDCG@10 of two cold-start lists built from every earlier
  rating, against the movies each user liked in the span: movies by number of
  likes (the popularity baseline's order, `evaluation/topk.py`) and by smoothed
  like rate ((likes + 20 x global rate) / (ratings + 20), the served score,
  `export/recommend.py`).

And, over all of the span's ratings, the AUC of a trivial like predictor, the
movie's smoothed like rate over every earlier rating (the global rate for a movie
never rated): the bar a like model judged on the span must clear to add anything.
With `--timeline` (a replay's `report/timeline.json` with the same spans), each
span's row also shows the replay's CF and DeepFM test AUC, measured through their
exported signatures by the pipeline's Evaluators.

NDCG@10 as `evaluation/topk.py` computes it (binary gains, ideal list of
min(10, liked) movies); users who liked nothing in the span are left out. Writes
JSON.

  .venv/bin/python bench/cold_start.py  # writes bench/results/cold_start.json
"""
import argparse
import datetime
import json
import os
import sys

import numpy as np
import time_features  # bench/, beside this script: its AUC (no TensorFlow either)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(os.environ.get("MOVIELENS_REAL_DATA", os.path.join(
    os.path.dirname(REPO), "shared", "data", "movielens")), "ml-100k")
LIKE_MIN_RATING = 4  # models/features.py, without importing TensorFlow
RATE_PRIOR = 20.0  # export/recommend.py's _COLD_START_PRIOR
LIST_LENGTH = 10


def ndcg_at_10(order: np.ndarray, liked: set) -> float:
  gains = [1.0 / np.log2(i + 2) for i, movie in enumerate(order[:LIST_LENGTH])
           if movie in liked]
  ideal = sum(1.0 / np.log2(i + 2) for i in range(min(LIST_LENGTH, len(liked))))
  return sum(gains) / ideal


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
  parser.add_argument("--span-days", type=int, default=7)
  parser.add_argument("--first-span", type=int, default=4)
  parser.add_argument("--timeline", help="a replay's report/timeline.json, for its AUCs")
  parser.add_argument("--output", default=os.path.join(REPO, "bench", "results",
                                                       "cold_start.json"))
  args = parser.parse_args(argv)
  users, movies, stars, seconds = np.loadtxt(os.path.join(args.data_dir, "u.data"),
                                             dtype=np.int64).T
  liked = stars >= LIKE_MIN_RATING
  first_day = seconds.min() - seconds.min() % 86_400
  spans = (seconds - first_day) // (args.span_days * 86_400)
  first_span_of_user = {}
  for user, span in sorted(zip(users, spans), key=lambda pair: pair[1]):
    first_span_of_user.setdefault(user, span)
  is_new = np.array([first_span_of_user[u] == s for u, s in zip(users, spans)])
  replayed = {}
  if args.timeline:
    with open(args.timeline) as f:
      replayed = {r["span"]: r["models"] for r in json.load(f)["spans"] if r.get("models")}
  per_span, by_order = [], {"likes": [], "smoothed_like_rate": []}
  for span in range(args.first_span, spans.max() + 1):
    before, now = spans < span, spans == span
    likes = np.bincount(movies[before], weights=liked[before], minlength=movies.max() + 1)
    ratings = np.bincount(movies[before], minlength=movies.max() + 1)
    rate = (likes + RATE_PRIOR * liked[before].mean()) / (ratings + RATE_PRIOR)
    orders = {"likes": np.argsort(-likes, kind="stable"),
              "smoothed_like_rate": np.argsort(-rate, kind="stable")}
    new_users = np.unique(users[now & is_new])
    scores = {name: [] for name in orders}
    for user in new_users:
      liked_now = set(movies[now & (users == user) & liked])
      if liked_now:
        for name, order in orders.items():
          scores[name].append(ndcg_at_10(order, liked_now))
    for name in orders:
      by_order[name] += scores[name]
    per_span.append({"span": int(span), "ratings": int(now.sum()),
                     "share_by_new_users": round(float(is_new[now].mean()), 3),
                     "new_users_with_a_like": len(scores["likes"]),
                     **{f"ndcg@10_{name}": round(float(np.mean(v)), 4) if v else None
                        for name, v in scores.items()},
                     "auc_movie_like_rate": round(time_features.auc(rate[movies[now]],
                                                                   liked[now]), 4),
                     **{f"auc_{model}": replayed[span][model]["auc"]
                        for model in ("cf", "deepfm") if span in replayed}})
  result = {"date": datetime.date.today().isoformat(), "data_dir": args.data_dir,
            "span_days": args.span_days, "users": len(by_order["likes"]),
            "ndcg@10": {name: round(float(np.mean(v)), 4) for name, v in by_order.items()},
            "spans": per_span}
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=1)
  shares = [s["share_by_new_users"] for s in per_span]
  print(f"{len(per_span)} spans of {args.span_days} days: {min(shares):.0%} to "
        f"{max(shares):.0%} of a span's ratings by users first seen in it")
  print(f"NDCG@10 of new users ({result['users']}, pooled): " + ", ".join(
      f"by {name} {value:.4f}" for name, value in result["ndcg@10"].items()))
  trivial = [s["auc_movie_like_rate"] for s in per_span]
  print(f"AUC of the movie's like rate on a span's ratings: {min(trivial):.3f} to "
        f"{max(trivial):.3f}, median {np.median(trivial):.3f}")
  for model in ("cf", "deepfm"):
    pairs = [(s[f"auc_{model}"], s["auc_movie_like_rate"]) for s in per_span
             if f"auc_{model}" in s]
    if pairs:
      print(f"{model} (replay, through its signature) above it in "
            f"{sum(a > b for a, b in pairs)} of {len(pairs)} spans; median AUC "
            f"{np.median([a for a, _ in pairs]):.3f}")
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
