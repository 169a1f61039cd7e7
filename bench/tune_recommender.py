"""Chooses the recommender's settings on the eval split, never on test.

On a finished run (`make run DATASET=100k ... SPLIT=temporal`): the retrieval model
is trained on the train split alone, for each liked_weight tried; each eval user's
candidates (every movie they did not rate in train) are retrieved through the
exported `candidates` function, scored by the run's DeepFM through its `predict`
signature, and ordered by every blend of the grid:

  engagement logit + like_weight * log P(like) + popularity_weight * log(1 + ratings)

NDCG@10 against the eval movies each user liked, averaged over several training
seeds (one seed's choice carries its noise), picks the settings that
models/hparams.py then holds (RetrievalHparams.towers and liked_weight,
RecommenderHparams.like_weight and popularity_weight). Writes every cell, and the
seeds' means, as JSON.

  python bench/tune_recommender.py runs/movielens-100k --output bench/results/tune_recommender.json
"""
import argparse
import dataclasses
import glob
import json
import os
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top

from evaluation import ranking  # pylint: disable=g-import-not-at-top
from export import saved_model  # pylint: disable=g-import-not-at-top
from models import data  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from models import hparams as hp  # pylint: disable=g-import-not-at-top
from models import retrieval  # pylint: disable=g-import-not-at-top
from models import training  # pylint: disable=g-import-not-at-top
from pipeline import run_store  # pylint: disable=g-import-not-at-top
from serving import contract  # pylint: disable=g-import-not-at-top

LIKED_WEIGHTS = (1.0,)  # 2 and 4 did worse once blended (docs/experiments.md)
TOWERS = (1, 2, 3)
LIKE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
POPULARITY_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 1.0)
SEEDS = (0, 1, 2)


def eval_as_test(split_patterns):
  """The splits with eval in test's place, and no eval: history is train alone."""
  full = ranking.read_splits(split_patterns)
  none = ranking.Ratings(*(np.zeros(0, np.int64) for _ in range(4)))
  return ranking.Splits(full.user_ids, full.movie_ids, {
      "train": full.splits["train"], "eval": none, "test": full.splits["eval"]})


def _candidates(retrieval_dir, splits, users, depth):
  recommender = tf.saved_model.load(retrieval_dir).recommender
  answer = recommender.candidates(tf.constant(splits.user_ids[users].astype(bytes)),
                                  tf.constant(depth))
  return answer[contract.MOVIE_IDS].numpy(), answer[contract.SCORES].numpy()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dir", help="a finished run's output folder")
  parser.add_argument("--candidates", type=int, default=hp.RecommenderHparams().candidates)
  parser.add_argument("--towers", type=int, nargs="+", default=TOWERS)
  parser.add_argument("--liked-weights", type=float, nargs="+", default=LIKED_WEIGHTS)
  parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
  parser.add_argument("--embedding-dim", type=int,
                      default=hp.preset("retrieval", "best").embedding_dim,
                      help="each tower's width")
  parser.add_argument("--output", required=True)
  args = parser.parse_args(argv)
  store = run_store.RunStore(args.run_dir)
  examples = store.require("Examples", "MovieLensExampleGen", what="examples")
  transform_graph = store.require("TransformGraph", "Transform", what="Transform graph")
  deepfm_dir = glob.glob(os.path.join(
      store.require("Model", "Trainer.deepfm", what="DeepFM"), "Format-Serving"))[0]
  patterns = {s: os.path.join(examples, f"Split-{s}", "*") for s in features.SPLIT_NAMES}
  tf_transform_output = tft.TFTransformOutput(transform_graph)
  splits = eval_as_test(patterns)
  users = ranking.test_users(splits)
  train = data.load_examples([patterns["train"]], tf_transform_output)
  held_out = data.load_examples([patterns["eval"]], tf_transform_output)
  predict = tf.saved_model.load(deepfm_dir).signatures[contract.PREDICT]
  index_of = {movie: i for i, movie in enumerate(splits.movie_ids)}
  log_popularity = np.log1p(np.bincount(splits.splits["train"].movies,
                                        minlength=len(splits.movie_ids)))
  popularity = ranking.evaluate(ranking.popularity_lists(splits, users, ("train",)),
                                splits, users).metrics["ndcg@10"]
  # EASE's L2 weight chosen on these same users: a bound the blend is measured against.
  ease = max(ranking.evaluate(ranking.ease_lists(splits, users, ("train",), l2), splits,
                              users).metrics["ndcg@10"] for l2 in ranking.EASE_L2_GRID)
  results = {"run_dir": os.path.abspath(args.run_dir), "eval_users": len(users),
             "embedding_dim": args.embedding_dim,
             "candidates": args.candidates, "popularity_ndcg@10": popularity,
             "ease_ndcg@10": ease, "cells": []}
  print(f"{len(users)} eval users; NDCG@10 of popularity {popularity:.4f}, of EASE "
        f"{ease:.4f}", flush=True)
  work = tempfile.mkdtemp(prefix="tune-recommender-")
  depth = min(args.candidates, len(splits.movie_ids))
  for towers in args.towers:
    for liked_weight in args.liked_weights:
      for seed in args.seeds:
        started = time.monotonic()
        hparams = dataclasses.replace(hp.preset("retrieval", "best"), towers=towers,
                                      liked_weight=liked_weight,
                                      embedding_dim=args.embedding_dim)
        tf.keras.utils.set_random_seed(seed)
        name = f"towers-{towers}-liked-{liked_weight:g}-seed-{seed}"
        model, _ = training.fit(tf.distribute.get_strategy(), "retrieval", retrieval.build,
                                data.vocabulary_sizes(tf_transform_output), hparams, train,
                                held_out, os.path.join(work, f"run-{name}"), seed)
        model_dir = os.path.join(work, f"model-{name}")
        saved_model.export(model, tf_transform_output, features.RETRIEVAL_RAW_FEATURES,
                           model_dir, train)
        ids, engagement = _candidates(model_dir, splits, users, depth)
        like = predict(user_id=tf.constant(np.repeat(splits.user_ids[users].astype(bytes),
                                                     depth)),
                       movie_id=tf.constant(ids.reshape(-1)))[contract.LIKE_PROBABILITY]
        like = like.numpy().reshape(ids.shape)
        index = np.array([[index_of.get(m, -1) for m in row] for row in ids])
        cells = []
        for like_weight in LIKE_WEIGHTS:
          for popularity_weight in POPULARITY_WEIGHTS:
            order = (engagement + like_weight * np.log(np.maximum(like, 1e-6))
                     + popularity_weight * log_popularity[np.maximum(index, 0)])
            order[index < 0] = -np.inf
            best = np.argsort(-order, axis=1)[:, :ranking.LIST_LENGTH]
            lists = [[int(index[u, j]) for j in row if index[u, j] >= 0]
                     for u, row in enumerate(best)]
            cells.append({"towers": towers, "liked_weight": liked_weight, "seed": seed,
                          "like_weight": like_weight, "popularity_weight": popularity_weight,
                          "ndcg@10": ranking.evaluate(lists, splits, users).metrics["ndcg@10"]})
        results["cells"] += cells
        top = max(cells, key=lambda c: c["ndcg@10"])
        print(f"towers {towers}, liked_weight {liked_weight:g}, seed {seed}: retrieval alone "
              f"{cells[0]['ndcg@10']:.4f}, best {top['ndcg@10']:.4f} at like_weight "
              f"{top['like_weight']:g}, popularity_weight {top['popularity_weight']:g} "
              f"({time.monotonic() - started:.0f} s)", flush=True)
  settings = ("towers", "liked_weight", "like_weight", "popularity_weight")
  means = {}
  for cell in results["cells"]:
    means.setdefault(tuple(cell[k] for k in settings), []).append(cell["ndcg@10"])
  results["means"] = [dict(zip(settings, key), **{"ndcg@10": float(np.mean(v)),
                                                  "ndcg@10_std": float(np.std(v)),
                                                  "seeds": len(v)})
                      for key, v in means.items()]
  for towers in args.towers:
    row = [m for m in results["means"] if m["towers"] == towers]
    alone = [m for m in row if m["like_weight"] == 0 and m["popularity_weight"] == 0]
    top = max(row, key=lambda m: m["ndcg@10"])
    print(f"towers {towers}, mean over seeds: retrieval alone "
          f"{max(m['ndcg@10'] for m in alone):.4f}, best {top['ndcg@10']:.4f} "
          f"(std {top['ndcg@10_std']:.4f}) at {top}")
  results["chosen"] = max(results["means"], key=lambda m: m["ndcg@10"])
  print(f"chosen on eval: {results['chosen']}")
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
