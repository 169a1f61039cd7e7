"""Which query tower ranks best on the eval split: today's, a GRU or self-attention
over the user's history.

On a finished run of the temporal split (whose examples carry histories,
docs/data.md#history): for each variant and seed, the retrieval model is trained
on the train split alone, exported as the Trainer exports it (each user's stored
history: their latest train ratings), and each eval user's top 50 is read through
the exported `recommend` signature, as RankingEvaluator reads test lists; NDCG@10,
recall@10 and MRR@10 against the eval movies each user liked. Popularity and EASE
(its L2 chosen on the same users) on the same candidates are the yardsticks. Test
is never read. Writes every cell and the seeds' means as JSON.

  python bench/sequence_retrieval.py runs/movielens-100k-temporal \\
      --output bench/results/sequence_retrieval.json
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top,wrong-import-position
import tune_recommender  # pylint: disable=g-import-not-at-top,wrong-import-position

from evaluation import ranking  # pylint: disable=g-import-not-at-top,wrong-import-position
from export import saved_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import features  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import hparams as hp  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import retrieval  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from pipeline import run_store  # pylint: disable=g-import-not-at-top,wrong-import-position
from serving import contract  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> changes to the `best` preset; _NO_HISTORY resets every history setting,
# so that a variant is what its name says whatever the preset holds.
_NO_HISTORY = {"history_encoder": "none", "history_ages": False, "user_dropout": 0.0,
               "history_dropout": 0.0, "history_weight": 1.0}
VARIANTS = {
    "towers-1": {**_NO_HISTORY, "towers": 1},
    "towers-3": _NO_HISTORY,
    "mean": {**_NO_HISTORY, "towers": 1, "history_encoder": "mean"},
    "mean-ages": {**_NO_HISTORY, "towers": 1, "history_encoder": "mean", "history_ages": True},
    "gru": {**_NO_HISTORY, "towers": 1, "history_encoder": "gru"},
    "gru-ages": {**_NO_HISTORY, "towers": 1, "history_encoder": "gru", "history_ages": True},
    "attention": {**_NO_HISTORY, "towers": 1, "history_encoder": "attention"},
    "attention-ages": {**_NO_HISTORY, "towers": 1, "history_encoder": "attention",
                       "history_ages": True},
    "gru-ages-50": {**_NO_HISTORY, "towers": 1, "history_encoder": "gru",
                    "history_ages": True, "history_length": 50},
    "gru-ages-dropout": {**_NO_HISTORY, "towers": 1, "history_encoder": "gru",
                         "history_ages": True, "user_dropout": 0.2},
    "mean-ages-50": {**_NO_HISTORY, "towers": 1, "history_encoder": "mean",
                     "history_ages": True, "history_length": 50},
    "mean-ages-dropout": {**_NO_HISTORY, "towers": 1, "history_encoder": "mean",
                          "history_ages": True, "user_dropout": 0.2},
    "mean-ages-towers-3": {**_NO_HISTORY, "history_encoder": "mean", "history_ages": True},
    # The preset as it is.
    "preset": {},
}
SEEDS = (0, 1, 2)
METRICS = ("ndcg@10", "recall@10", "mrr@10")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dir", help="a finished run's output folder (temporal split)")
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="a retrieval hyperparameter for every variant, e.g. epochs=5")
  parser.add_argument("--output", required=True)
  args = parser.parse_args(argv)
  common = {}
  for setting in args.set:
    name, _, value = setting.partition("=")
    try:
      common[name] = json.loads(value)
    except json.JSONDecodeError:
      common[name] = value
  store = run_store.RunStore(args.run_dir)
  examples = store.require("Examples", "MovieLensExampleGen", what="examples")
  transform_graph = store.require("TransformGraph", "Transform", what="Transform graph")
  patterns = {s: os.path.join(examples, f"Split-{s}", "*") for s in features.SPLIT_NAMES}
  tf_transform_output = tft.TFTransformOutput(transform_graph)
  splits = tune_recommender.eval_as_test(patterns)
  users = ranking.test_users(splits)
  train = data.load_examples([patterns["train"]], tf_transform_output)
  held_out = data.load_examples([patterns["eval"]], tf_transform_output)
  if features.HISTORY_INPUTS[0] not in train:
    raise SystemExit(f"{args.run_dir}: its examples carry no histories; run it again")
  yardsticks = {"popularity": ranking.evaluate(
      ranking.popularity_lists(splits, users, ("train",)), splits, users).metrics}
  yardsticks["ease"] = max(
      (ranking.evaluate(ranking.ease_lists(splits, users, ("train",), l2), splits,
                        users).metrics for l2 in ranking.EASE_L2_GRID),
      key=lambda metrics: metrics["ndcg@10"])
  results = {"run_dir": os.path.abspath(args.run_dir), "eval_users": len(users),
             "common": common, "yardsticks": {name: {m: metrics[m] for m in METRICS}
                                              for name, metrics in yardsticks.items()},
             "cells": []}
  print(f"{len(users)} eval users; " + ", ".join(
      f"{name} NDCG@10 {metrics['ndcg@10']:.4f}" for name, metrics in yardsticks.items()),
        flush=True)
  work = tempfile.mkdtemp(prefix="sequence-retrieval-")
  for variant in args.variants:
    for seed in args.seeds:
      started = time.monotonic()
      hparams = dataclasses.replace(hp.preset("retrieval", "best"),
                                    **{**VARIANTS[variant], **common})
      name = f"{variant}-seed-{seed}"
      model, _ = training.fit(tf.distribute.get_strategy(), "retrieval", retrieval.build,
                              data.vocabulary_sizes(tf_transform_output), hparams, train,
                              held_out, os.path.join(work, f"run-{name}"), seed)
      seconds = time.monotonic() - started
      model_dir = os.path.join(work, f"model-{name}")
      saved_model.export(model, tf_transform_output, features.RETRIEVAL_RAW_FEATURES,
                         model_dir, train)
      recommend = tf.saved_model.load(model_dir).signatures[contract.RECOMMEND]
      metrics = ranking.evaluate(ranking.lists_from_signature(recommend, splits, users),
                                 splits, users).metrics
      cell = {"variant": variant, "seed": seed, "train_seconds": round(seconds, 1),
              **{m: metrics[m] for m in METRICS}}
      results["cells"].append(cell)
      print(f"{variant}, seed {seed}: " + ", ".join(f"{m} {cell[m]:.4f}" for m in METRICS)
            + f" ({seconds:.0f} s training)", flush=True)
  results["means"] = {}
  for variant in args.variants:
    cells = [c for c in results["cells"] if c["variant"] == variant]
    results["means"][variant] = {
        **{m: float(np.mean([c[m] for c in cells])) for m in METRICS},
        "ndcg@10_range": [min(c["ndcg@10"] for c in cells), max(c["ndcg@10"] for c in cells)],
        "seeds": len(cells)}
    print(f"{variant}, mean over {len(cells)} seeds: " + ", ".join(
        f"{m} {results['means'][variant][m]:.4f}" for m in METRICS))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
