"""RankingEvaluator: the top-k lists each model's `recommend` serves, against baselines.

TFMA judges the like probability example by example; this judges the list a user
receives. For each trained model it loads the SavedModel and calls its
`recommend` signature, the one TF Serving runs, for every test user (a fixed
sample of them above `ranking.MAX_SCORED_USERS`); popularity and EASE rank the same
candidates (evaluation/ranking.py). The served
recommender is also asked about each test user as a visitor it knows nothing of,
through `recommend_for_history` with their earlier ratings ("visitor"). The result,
ranking.json in the artifact, is one entry per system with NDCG@10, recall@10,
hit rate@10, MAP@10, MRR@10 (each with its 95% confidence interval over users),
coverage, the share of already-rated movies served, and NDCG@k and recall@k for
k = 1..50. ModelReport puts it beside TFMA's metrics.

It also blesses the served recommender (components/recommender_builder.py), which
has no like probability of its own for TFMA to judge: on its lists (`judge`).
"""
import json
import os
import time
from typing import Dict, List, Sequence

import tensorflow as tf
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from common import progress
from evaluation import ranking
from models import features
from serving import contract

RESULTS_FILE = "ranking.json"
# The recommending model this component blesses, and the name its last blessed
# version is evaluated under, on the same split, as the change threshold's baseline.
JUDGED = "recommender"
LAST_BLESSED = "last_blessed"
JUDGED_METRIC = "ndcg@10"
# The JUDGED model asked about each test user as a visitor in no table: their
# ratings before the test split as the history, their identity left out.
VISITOR = "visitor"


class RankingEvaluation(types.Artifact):
  """A folder holding ranking.json: top-k metrics of each model and baseline."""
  TYPE_NAME = "recsys.RankingEvaluation"


def evaluate_models(split_patterns: Dict[str, List[str]], model_dirs: Dict[str, str]) -> Dict:
  """Top-k results of each SavedModel in `model_dirs` and of the baselines, as JSON."""
  splits = ranking.read_splits(split_patterns)
  every_user = ranking.test_users(splits)
  users = ranking.sample_users(every_user)
  if len(users) < len(every_user):
    progress.report("rank", f"{len(users):,} of the {len(every_user):,} test users, a fixed "
                    "random sample, are scored")
  systems = {}
  for name, model_dir in model_dirs.items():
    started = time.monotonic()
    signatures = tf.saved_model.load(model_dir).signatures
    lists = ranking.lists_from_signature(signatures[contract.RECOMMEND], splits, users)
    systems[name] = ranking.evaluate(lists, splits, users).to_json()
    progress.report("rank", f"{name}: {len(users):,} test users' lists through its "
                    f"`recommend` signature in {time.monotonic() - started:.1f} s")
    if name == JUDGED:
      started = time.monotonic()
      lists = ranking.lists_from_history_signature(
          signatures[contract.RECOMMEND_FOR_HISTORY], splits, users, ("train", "eval"))
      systems[VISITOR] = ranking.evaluate(lists, splits, users).to_json()
      progress.report("rank", f"{VISITOR}: the same users as visitors, their train and eval "
                      f"ratings through `recommend_for_history` in "
                      f"{time.monotonic() - started:.1f} s")
  started = time.monotonic()
  seen = ("train", "eval")
  systems["popularity"] = ranking.evaluate(
      ranking.popularity_lists(splits, users, seen), splits, users).to_json()
  l2 = ranking.choose_ease_l2(splits)
  systems["ease"] = ranking.evaluate(
      ranking.ease_lists(splits, users, seen, l2), splits, users).to_json()
  systems["ease"]["l2"] = l2
  systems["next_movie"] = ranking.evaluate(
      ranking.next_movie_lists(splits, users, seen), splits, users).to_json()
  progress.report("rank", f"baselines: popularity, EASE with L2 {l2:g} chosen on eval, "
                  f"and the next movie, in {time.monotonic() - started:.1f} s")
  return {"users": len(users), "test_users": len(every_user),
          "movies": len(splits.movie_ids), "models": list(model_dirs), "systems": systems}


def scored_users(results: Dict) -> str:
  """Whom `evaluate_models`' results score, in words: every test user, or the fixed
  sample of them."""
  if results.get("test_users", results["users"]) > results["users"]:
    return (f"a fixed random sample of {results['users']:,} of the "
            f"{results['test_users']:,} test users")
  return f"the {results['users']:,} test users"


def judge(results: Dict, max_drop: float) -> Dict:
  """Whether the JUDGED model may be pushed, and why (added to the results as "blessing").

  Its NDCG@10 must be at least popularity's, and at most `max_drop` below that of
  the last blessed recommender where there is one (evaluated on the same split).
  """
  systems = results["systems"]
  ndcg = {name: system["metrics"][JUDGED_METRIC] for name, system in systems.items()}
  checks = [(f"{JUDGED_METRIC} {ndcg[JUDGED]:.4f} >= popularity's {ndcg['popularity']:.4f}",
             ndcg[JUDGED] >= ndcg["popularity"])]
  if LAST_BLESSED in ndcg:
    floor = ndcg[LAST_BLESSED] - max_drop
    checks.append((f"{JUDGED_METRIC} {ndcg[JUDGED]:.4f} >= the last blessed model's "
                   f"{ndcg[LAST_BLESSED]:.4f} - {max_drop:g}", ndcg[JUDGED] >= floor))
  return {"model": JUDGED, "blessed": all(ok for _, ok in checks),
          "checks": [{"check": text, "passed": ok} for text, ok in checks]}


def split_patterns(examples: standard_artifacts.Examples,
                   history: Sequence[standard_artifacts.Examples] = ()
                   ) -> Dict[str, List[str]]:
  """Split name -> the file patterns of its examples.

  Without `history`, the Examples artifact's own train, eval and test splits. With
  it (continuous training: `history` the spans the models learned from, `examples`
  the span after them), test is every rating of the newer span, train is the
  history's train splits and eval the rest of the history: everything the users
  had rated before the span the models are judged on.
  """
  def patterns(artifacts, splits):
    return [os.path.join(uri, "*") for split in splits
            for uri in artifact_utils.get_split_uris(list(artifacts), split)]

  if not history:
    return {split: patterns([examples], [split]) for split in features.SPLIT_NAMES}
  return {"train": patterns(history, ["train"]),
          "eval": patterns(history, ["eval", "test"]),
          "test": patterns([examples], features.SPLIT_NAMES)}


def load(folder: str) -> Dict:
  """What evaluate_models wrote into a RankingEvaluation folder."""
  with tf.io.gfile.GFile(os.path.join(folder, RESULTS_FILE)) as f:
    return json.load(f)


@component
def RankingEvaluator(examples: InputArtifact[standard_artifacts.Examples],
                     cf_model: InputArtifact[standard_artifacts.Model],
                     deepfm_model: InputArtifact[standard_artifacts.Model],
                     retrieval_model: InputArtifact[standard_artifacts.Model],
                     recommender_model: InputArtifact[standard_artifacts.Model],
                     evaluation: OutputArtifact[RankingEvaluation],
                     blessing: OutputArtifact[standard_artifacts.ModelBlessing],
                     max_ndcg_drop: Parameter[float],
                     code_fingerprint: Parameter[str],
                     baseline_model: InputArtifact[standard_artifacts.Model] = None,
                     history: InputArtifact[List[standard_artifacts.Examples]] = None):
  """Writes ranking.json for every model and the baselines, and blesses the recommender.

  `baseline_model`: the last blessed recommender, if any (a LatestBlessedModelStrategy
  resolver). `history`: with spans, the spans the models learned from, and
  `examples` the span after them (`split_patterns`). The blessing carries the
  custom properties TFX's Pusher and that resolver read ("blessed",
  "current_model_id"). `code_fingerprint`
  (common.code_fingerprint) only keys the cache.
  """
  del code_fingerprint
  patterns = split_patterns(examples, history or ())
  models = {"cf": path_utils.serving_model_path(cf_model.uri),
            "deepfm": path_utils.serving_model_path(deepfm_model.uri),
            "retrieval": path_utils.serving_model_path(retrieval_model.uri),
            JUDGED: path_utils.serving_model_path(recommender_model.uri)}
  same_as_baseline = baseline_model is not None and baseline_model.id == recommender_model.id
  if baseline_model is not None and not same_as_baseline:
    models[LAST_BLESSED] = path_utils.serving_model_path(baseline_model.uri)
  results = evaluate_models(patterns, models)
  if same_as_baseline:  # a cached recommender, judged against itself: listed once
    results["systems"][LAST_BLESSED] = results["systems"][JUDGED]
    results["models"].append(LAST_BLESSED)
  results["blessing"] = judge(results, max_ndcg_drop)
  verdict = "blessed" if results["blessing"]["blessed"] else "NOT blessed"
  progress.report("rank", f"{JUDGED} {verdict}: " + "; ".join(
      f"{c['check']} ({'yes' if c['passed'] else 'no'})" for c in results["blessing"]["checks"]))
  tf.io.gfile.makedirs(evaluation.uri)
  with tf.io.gfile.GFile(os.path.join(evaluation.uri, RESULTS_FILE), "w") as f:
    json.dump(results, f, indent=1)
  blessed = int(results["blessing"]["blessed"])
  blessing.set_int_custom_property("blessed", blessed)
  blessing.set_string_custom_property("current_model", recommender_model.uri)
  blessing.set_int_custom_property("current_model_id", recommender_model.id)
  if baseline_model is not None:
    blessing.set_string_custom_property("baseline_model", baseline_model.uri)
    blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
  with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"),
                         "w") as f:
    f.write("")
