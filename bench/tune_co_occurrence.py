"""Chooses how the served recommender mixes in co-occurrence (EASE), on eval, never on test.

On a finished run, with its DeepFM, a retrieval model trained on the train split
alone for each seed (as bench/tune_recommender.py trains it), and EASE fitted on
train (its L2 chosen as RecommenderBuilder chooses it), for the eval split's
users, relevant = the eval movies each liked:

- a user the models know: retrieval's candidates (every movie they did not rate in
  train), ordered by every blend of the grid

    engagement + like_weight * log P(like) + popularity_weight * log(1 + ratings)
      + co_occurrence_weight * EASE score

  NDCG@10 averaged over the seeds;
- a visitor, with the user's identity hidden and their train ratings as the
  history (what `recommend_for_history` is asked): EASE's best candidates, ordered
  by EASE score + visitor_like_weight * log P(like) for an unknown user; and EASE
  alone with each movie's weights cut to its largest, what serving only the top
  neighbours per movie would cost.

With a history in the query tower (the `best` preset's), each trained model is
exported once per `--history-weights` value (how much of the history the served
query keeps, RetrievalHparams.history_weight), and that weight is part of the grid.

Every score goes through the exported code: the retrieval model's `candidates`,
DeepFM's `predict` signature and export/co_occurrence.py's scores. Writes every
cell, and the choices, as JSON.

  python bench/tune_co_occurrence.py runs/movielens-100k-temporal \
    --history-weights 0.25 0.5 0.75 1 --output bench/results/tune_history.json
  python bench/tune_co_occurrence.py runs/movielens-100k-temporal \
    --set retrieval.history_encoder=none --output bench/results/tune_no_history.json
"""
import argparse
import dataclasses
import glob
import itertools
import json
import os
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Last, so that bench/engines.py does not hide the engines package pipeline.cli imports.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top,wrong-import-position
import tune_recommender  # pylint: disable=g-import-not-at-top,wrong-import-position

from components import recommender_builder  # pylint: disable=g-import-not-at-top,wrong-import-position
from evaluation import ranking  # pylint: disable=g-import-not-at-top,wrong-import-position
from export import co_occurrence  # pylint: disable=g-import-not-at-top,wrong-import-position
from export import recommend  # pylint: disable=g-import-not-at-top,wrong-import-position
from export import saved_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from export import served  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import features  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import hparams as hp  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import retrieval  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from pipeline import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from pipeline import run_store  # pylint: disable=g-import-not-at-top,wrong-import-position
from serving import contract  # pylint: disable=g-import-not-at-top,wrong-import-position

# A known user's blend: each signal's weights. The recency signals (issue 37's
# time-aware ranking) are computed at each user's own cutoff, their latest train
# rating: how often each candidate was rated in the `recent_days` before it, and
# the EASE score of the user's last LAST_MOVIES movies alone.
KNOWN_GRID = {
    "like_weight": (1.0, 2.0, 4.0),
    "popularity_weight": (0.0, 0.2),
    "co_occurrence_weight": (0.0, 2.0, 4.0, 8.0),
    "recent_days": (7, 30),
    "recent_popularity_weight": (0.0, 0.25, 0.5, 1.0),
    "recent_co_occurrence_weight": (0.0, 2.0, 4.0),
}
LAST_MOVIES = 5
VISITOR_LIKE_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
TRUNCATED_NEIGHBOURS = (100, 200, 400)
_KEY_SPAN = 1 << 32  # above every timestamp, in seconds


def _ndcg(order, index, splits, users):
  """NDCG@10 of each row's best by `order`, over candidates `index` (-1: none)."""
  order = np.where(index < 0, -np.inf, order)
  best = np.argsort(-order, axis=1, kind="stable")[:, :ranking.LIST_LENGTH]
  lists = [[int(index[u, j]) for j in row if index[u, j] >= 0 and np.isfinite(order[u, j])]
           for u, row in enumerate(best)]
  return ranking.evaluate(lists, splits, users).metrics["ndcg@10"]


def _histories(splits, users, catalogue):
  """Each user's train movies as catalogue indices, a ragged batch."""
  rated = splits.rated("train")
  to_catalogue = served.indices_in(catalogue, splits.movie_ids)
  rows = [sorted(int(to_catalogue[m]) for m in rated[u]) for u in users]
  return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)


def _blend(results, candidates, rows, ease_scores, recency, predict, splits, catalogue,
           from_catalogue, log_popularity, cell):
  """Appends to results["known"] the NDCG@10 of every blend of `candidates` for `rows`."""
  ids, engagement = candidates
  like = predict(user_id=tf.constant(np.repeat(splits.user_ids[rows].astype(bytes),
                                               ids.shape[1])),
                 movie_id=tf.constant(ids.reshape(-1)))[contract.LIKE_PROBABILITY]
  log_like = np.log(np.maximum(like.numpy().reshape(ids.shape), 1e-6))
  in_catalogue = served.indices_in(catalogue, ids.reshape(-1)).reshape(ids.shape)
  index = np.where(in_catalogue < len(catalogue),
                   from_catalogue[np.minimum(in_catalogue, len(catalogue) - 1)], -1)
  index[index >= len(splits.movie_ids)] = -1
  ease = np.take_along_axis(ease_scores, in_catalogue, axis=1)
  last_ease = np.take_along_axis(recency.last_ease, in_catalogue, axis=1)
  recent = {days: recency.popularity(rows, index, days) for days in KNOWN_GRID["recent_days"]}
  for weights in itertools.product(*KNOWN_GRID.values()):
    weights = dict(zip(KNOWN_GRID, weights))
    if weights["recent_days"] != KNOWN_GRID["recent_days"][0] and not weights[
        "recent_popularity_weight"]:
      continue  # the same blend as with the first window
    order = (engagement + weights["like_weight"] * log_like
             + weights["popularity_weight"] * log_popularity[np.maximum(index, 0)]
             + weights["co_occurrence_weight"] * ease
             + weights["recent_popularity_weight"] * recent[weights["recent_days"]]
             + weights["recent_co_occurrence_weight"] * last_ease)
    results["known"].append({**cell, **weights, "ndcg@10": _ndcg(order, index, splits, rows)})


class _Recency:
  """What each known user's recent behaviour says, at their own cutoff (their latest
  train rating): the candidates' recent popularity, and the EASE scores of their
  last movies (as RecommenderBuilder picks them)."""

  def __init__(self, splits, rows, catalogue, ease):
    train = splits.splits["train"]
    self.cutoff = np.zeros(len(splits.user_ids), np.int64)
    np.maximum.at(self.cutoff, train.users, train.times)
    # One sorted key per rating, movie first: a window's count is two searches.
    self._keys = np.sort(train.movies * _KEY_SPAN + train.times)
    users, movies = ranking.latest_pairs(splits, ("train",), LAST_MOVIES)
    last = {}
    for user, movie in zip(users, served.indices_in(catalogue, movies)):
      last.setdefault(user, []).append(int(movie))
    self.last_ease = ease.scores(tf.ragged.constant(
        [last.get(splits.user_ids[u], []) for u in rows], dtype=tf.int32,
        ragged_rank=1)).numpy()

  def popularity(self, rows, index, days):
    """log(1 + ratings) of each candidate `index` [rows, candidates] in the `days`
    up to each row's user's cutoff."""
    end = self.cutoff[rows][:, np.newaxis]
    movies = np.maximum(index, 0).astype(np.int64) * _KEY_SPAN
    count = (np.searchsorted(self._keys, movies + end, side="right")
             - np.searchsorted(self._keys, movies + end - days * 86400, side="right"))
    return np.log1p(count)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dir", help="a finished run's output folder")
  parser.add_argument("--seeds", type=int, nargs="+", default=tune_recommender.SEEDS)
  parser.add_argument("--set", action="append", default=[], metavar="retrieval.NAME=VALUE",
                      help="a retrieval hyperparameter, changed from the `best` preset, "
                           "as `recsys run --set` takes it")
  parser.add_argument("--history-weights", type=float, nargs="+", default=None,
                      help="the served query's history weights to try (default: the "
                           "retrieval hyperparameters' own)")
  parser.add_argument("--output", required=True)
  args = parser.parse_args(argv)
  overrides = cli.parse_overrides(args.set)
  hp.check_overrides(overrides)
  if set(overrides) - {"retrieval"}:
    parser.error("--set changes the retrieval model's hyperparameters only")
  retrieval_hparams = dataclasses.replace(hp.preset("retrieval", "best"),
                                          **overrides.get("retrieval", {}))
  history_weights = args.history_weights or [retrieval_hparams.history_weight]
  settings = hp.RecommenderHparams()
  store = run_store.RunStore(args.run_dir)
  examples = store.require("Examples", "MovieLensExampleGen", what="examples")
  transform_graph = store.require("TransformGraph", "Transform", what="Transform graph")
  deepfm_dir = glob.glob(os.path.join(
      store.require("Model", "Trainer.deepfm", what="DeepFM"), "Format-Serving"))[0]
  patterns = {s: os.path.join(examples, f"Split-{s}", "*") for s in features.SPLIT_NAMES}
  full = ranking.read_splits(patterns)
  splits = tune_recommender.eval_as_test(patterns)
  users = ranking.test_users(splits)
  output = tft.TFTransformOutput(transform_graph)
  catalogue = np.array(output.vocabulary_by_name(features.MOVIE_ID), object)
  model_users = set(output.vocabulary_by_name(features.USER_ID))
  from_catalogue = served.indices_in(splits.movie_ids, catalogue)  # catalogue -> splits
  predict = tf.saved_model.load(deepfm_dir).signatures[contract.PREDICT]

  started = time.monotonic()
  l2 = ranking.choose_ease_l2(full)
  kept, weights = recommender_builder.co_occurrence_weights(splits, catalogue, l2,
                                                            settings.co_occurrence_movies)
  histories = _histories(splits, users, catalogue)
  ease = co_occurrence.CoOccurrence(len(catalogue), kept, weights)
  scores = ease.scores(histories).numpy()
  popularity = ranking.evaluate(ranking.popularity_lists(splits, users, ("train",)),
                                splits, users).metrics["ndcg@10"]
  results = {"run_dir": os.path.abspath(args.run_dir), "eval_users": len(users),
             "retrieval": dataclasses.asdict(retrieval_hparams), "ease_l2": l2,
             "popularity_ndcg@10": popularity, "known": [], "visitors": [], "truncated": []}
  print(f"{len(users)} eval users; popularity NDCG@10 {popularity:.4f}; EASE L2 {l2:g} "
        f"({time.monotonic() - started:.0f} s)", flush=True)

  # Known users: candidates of a retrieval model trained on train alone (the run's
  # own also leaves out the eval split's movies), blended.
  known = np.array([splits.user_ids[u] in model_users for u in users])
  known_rows = users[known]
  depth = min(settings.candidates, len(catalogue))
  train = data.load_examples([patterns["train"]], output)
  held_out = data.load_examples([patterns["eval"]], output)
  log_popularity = np.log1p(np.bincount(splits.splits["train"].movies,
                                        minlength=len(splits.movie_ids)))
  recency = _Recency(splits, known_rows, catalogue, ease)
  work = tempfile.mkdtemp(prefix="tune-co-occurrence-")
  for seed in args.seeds:
    started = time.monotonic()
    tf.keras.utils.set_random_seed(seed)
    model, _ = training.fit(tf.distribute.get_strategy(), "retrieval", retrieval.build,
                            data.vocabulary_sizes(output), retrieval_hparams, train, held_out,
                            os.path.join(work, f"run-{seed}"), seed)
    for history_weight in history_weights:
      # The served query is traced at export, from the model's hyperparameters.
      model.hparams = dataclasses.replace(retrieval_hparams, history_weight=history_weight)
      model_dir = os.path.join(work, f"model-{seed}-{history_weight:g}")
      saved_model.export(model, output, features.RETRIEVAL_RAW_FEATURES, model_dir, train)
      _blend(results, tune_recommender._candidates(  # pylint: disable=protected-access
          model_dir, splits, known_rows, depth), known_rows, scores[known], recency,
             predict, splits, catalogue, from_catalogue, log_popularity,
             {"seed": seed, "history_weight": history_weight})
    print(f"seed {seed}: retrieval trained and blended in {time.monotonic() - started:.0f} s",
          flush=True)
  grid = ("history_weight",) + tuple(KNOWN_GRID)
  means = {}
  for cell in results["known"]:
    means.setdefault(tuple(cell[key] for key in grid), []).append(cell["ndcg@10"])
  results["known_means"] = [dict(zip(grid, key), **{"ndcg@10": float(np.mean(values)),
                                                    "ndcg@10_range": [min(values),
                                                                      max(values)]})
                            for key, values in means.items()]
  results["known_users"] = int(known.sum())

  # Visitors: EASE's candidates from their train history, ranked with P(like).
  rated = splits.rated("train")
  unknown_user = recommend.UNSEEN_STRING.encode()
  masked = scores[:, :len(catalogue)].copy()
  for row, user in enumerate(users):
    seen = served.indices_in(catalogue, splits.movie_ids[list(rated[user])])
    masked[row, seen[seen < len(catalogue)]] = -np.inf
  top = np.argsort(-masked, axis=1, kind="stable")[:, :depth]
  top_scores = np.take_along_axis(masked, top, axis=1)
  like = predict(user_id=tf.constant(np.full(top.size, unknown_user)),
                 movie_id=tf.constant(catalogue[top.reshape(-1)].astype(bytes)))
  log_like = np.log(np.maximum(like[contract.LIKE_PROBABILITY].numpy().reshape(top.shape),
                               1e-6))
  index = from_catalogue[top]
  index[(index >= len(splits.movie_ids)) | ~np.isfinite(top_scores)] = -1
  for weight in VISITOR_LIKE_WEIGHTS:
    results["visitors"].append({"visitor_like_weight": weight,
                                "ndcg@10": _ndcg(top_scores + weight * log_like, index,
                                                 splits, users)})
  # What keeping each movie's largest weights only would cost: EASE alone, for
  # visitors, with each row of the weights cut to its `kept` largest (in value, or
  # in magnitude) before the history's rows are summed.
  history = np.zeros((len(users), len(kept)), np.float32)
  history_rows = histories.to_list()
  position = {movie: i for i, movie in enumerate(kept)}
  for row, movies in enumerate(history_rows):
    history[row, [position[m] for m in movies if m in position]] = 1.0
  for neighbours in TRUNCATED_NEIGHBOURS:
    for name, key in (("largest", -weights), ("largest_magnitude", -np.abs(weights))):
      largest = np.argpartition(key, neighbours - 1, axis=1)[:, :neighbours]
      truncated = np.zeros_like(weights)
      np.put_along_axis(truncated, largest, np.take_along_axis(weights, largest, axis=1),
                        axis=1)
      truncated_scores = np.full(masked.shape, -np.inf, np.float32)
      truncated_scores[:, kept] = history @ truncated
      truncated_scores[~np.isfinite(masked)] = -np.inf
      index = np.where(from_catalogue < len(splits.movie_ids), from_catalogue, -1)
      results["truncated"].append({
          "neighbours": neighbours, "kept_by": name,
          "ndcg@10": _ndcg(truncated_scores, np.broadcast_to(index, masked.shape), splits,
                           users)})
  print("visitors, EASE alone, each movie's weights cut to its largest: " + ", ".join(
      f"{c['neighbours']} by {c['kept_by']}: {c['ndcg@10']:.4f}" for c in results["truncated"]))
  def best(cells):
    cell = max(cells, key=lambda c: c["ndcg@10"])
    return (f"{cell['ndcg@10']:.4f} at " + ", ".join(f"{key} {cell[key]:g}" for key in grid
                                                      if key != "history_weight"))
  for history_weight in history_weights:
    cells = [c for c in results["known_means"] if c["history_weight"] == history_weight]
    print(f"known users, history weight {history_weight:g}: best without recency "
          + best([c for c in cells if not (c["recent_popularity_weight"]
                                           or c["recent_co_occurrence_weight"])])
          + "; best of all " + best(cells))
  print("visitors, by visitor_like_weight: " + ", ".join(
      f"{c['visitor_like_weight']:g}: {c['ndcg@10']:.4f}" for c in results["visitors"]))
  results["chosen"] = {"known": max(results["known_means"], key=lambda c: c["ndcg@10"]),
                       "visitors": max(results["visitors"], key=lambda c: c["ndcg@10"])}
  print(f"chosen on eval: {results['chosen']}")
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
