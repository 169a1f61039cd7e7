"""RecommenderBuilder: the served recommender from the retrieval and like models.

Composes the two Trainers' SavedModels and EASE's item-item weights, fitted here
(export/co_occurrence.py), into one (export/two_stage.py) and writes it twice,
identical but for the ratings it holds: never recommended, and the users'
histories, whole and their latest (export/served.py):
- `model`: what RankingEvaluator judges. It excludes the train and eval splits'
  ratings, the history the models learned from; the test split is the future.
- `served_model`: what the Pusher pushes. It excludes every rating ingested,
  test included, so nobody is offered a film they have already rated.
Both retrieve the same number of candidates per user (`candidates` plus the most
ratings any user has outside train and eval), so that excluding more movies does
not run a list short. The served model also reads each user's EASE score from
every rating, so its order can differ beyond the excluded movies.
"""
import json
import time
from typing import List

import numpy as np
import scipy.sparse
import tensorflow as tf
import tensorflow_transform as tft
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from common import progress
from components import ranking_evaluator
from evaluation import ranking
from evaluation import topk
from export import co_occurrence
from export import served
from export import two_stage
from models import features
from models import hparams as hp

# The splits the Trainers learned from: the evaluated model excludes these.
HISTORY_SPLITS = ("train", "eval")


def retrieve_depth(splits: ranking.Splits, candidates: int, catalogue_size: int) -> int:
  """Candidates per user, so that `candidates` remain when the pushed model
  drops the most ratings any one user has outside the history splits."""
  later = [n for n in splits.splits if n not in HISTORY_SPLITS]
  return min(candidates + ranking.most_ratings(splits, later), catalogue_size)


def co_occurrence_weights(splits: ranking.Splits, catalogue: np.ndarray, l2: float,
                          max_movies: int):
  """EASE fitted on the history splits over the `max_movies` most rated movies of
  `catalogue`: (their catalogue indices [m], B [m, m])."""
  users = np.concatenate([splits.splits[n].users for n in HISTORY_SPLITS])
  movies = served.indices_in(catalogue, splits.movie_ids)[
      np.concatenate([splits.splits[n].movies for n in HISTORY_SPLITS])]
  ratings = np.bincount(movies, minlength=len(catalogue) + 1)[:len(catalogue)]
  kept = np.sort(np.argsort(-ratings, kind="stable")[:max_movies])
  kept = kept[ratings[kept] > 0]
  column = np.full(len(catalogue) + 1, -1)
  column[kept] = np.arange(len(kept))
  rows = column[movies] >= 0
  interactions = scipy.sparse.csr_matrix(
      (np.ones(rows.sum(), np.float32), (users[rows], column[movies[rows]])),
      shape=(len(splits.user_ids), len(kept)))
  interactions.data[:] = 1.0  # a user who rated a movie twice (spans) counts once
  gram = (interactions.T @ interactions).toarray()
  return kept, topk.ease_weights(gram, l2)


def build(split_patterns, retrieval_dir: str, ranking_dir: str,
          tf_transform_output: tft.TFTransformOutput,
          hparams: hp.RecommenderHparams, evaluated_dir: str, served_dir: str) -> None:
  """Writes the evaluated and the served two-stage SavedModels."""
  splits = ranking.read_splits(split_patterns)
  known_users = np.array(tf_transform_output.vocabulary_by_name(features.USER_ID), object)
  catalogue = np.array(tf_transform_output.vocabulary_by_name(features.MOVIE_ID), object)
  depth = retrieve_depth(splits, hparams.candidates, len(catalogue))
  # Popularity as the models learned it: ratings in the history splits.
  movie_ratings = np.bincount(np.concatenate([splits.splits[n].movies for n in HISTORY_SPLITS]),
                              minlength=len(splits.movie_ids))
  started = time.monotonic()
  l2 = ranking.choose_ease_l2(splits)
  movies, weights = co_occurrence_weights(splits, catalogue, l2, hparams.co_occurrence_movies)
  cooccurrence = co_occurrence.CoOccurrence(len(catalogue), movies, weights)
  progress.report("recommender", f"co-occurrence: EASE over the {len(movies):,} most rated "
                  f"movies, L2 {l2:g} chosen on eval, in {time.monotonic() - started:.1f} s")
  # Loaded once: both variants hold the same two models.
  retrieval = tf.saved_model.load(retrieval_dir)
  like_model = tf.saved_model.load(ranking_dir)
  for name, folder, exclude in (("evaluated", evaluated_dir, HISTORY_SPLITS),
                                ("served", served_dir, tuple(splits.splits))):
    started = time.monotonic()
    users, rated_movies = ranking.rated_pairs(splits, exclude)
    latest = served.UserRatings(*ranking.latest_pairs(splits, exclude, hparams.recent_movies),
                                catalogue)
    recommender = two_stage.TwoStageRecommender(
        retrieval, like_model, known_users, served.UserRatings(users, rated_movies, catalogue),
        latest, cooccurrence, splits.movie_ids, movie_ratings, retrieve_k=depth,
        like_weight=hparams.like_weight, popularity_weight=hparams.popularity_weight,
        co_occurrence_weight=hparams.co_occurrence_weight,
        recent_co_occurrence_weight=hparams.recent_co_occurrence_weight,
        visitor_like_weight=hparams.visitor_like_weight)
    two_stage.export(recommender, folder)
    progress.report("recommender", f"{name} model: {depth} candidates per user, "
                    f"{len(users):,} ratings of {'+'.join(exclude)} excluded, written in "
                    f"{time.monotonic() - started:.1f} s")


@component
def RecommenderBuilder(examples: InputArtifact[standard_artifacts.Examples],
                       transform_graph: InputArtifact[standard_artifacts.TransformGraph],
                       retrieval_model: InputArtifact[standard_artifacts.Model],
                       ranking_model: InputArtifact[standard_artifacts.Model],
                       model: OutputArtifact[standard_artifacts.Model],
                       served_model: OutputArtifact[standard_artifacts.Model],
                       recommender_hparams: Parameter[str],
                       code_fingerprint: Parameter[str],
                       history: InputArtifact[List[standard_artifacts.Examples]] = None):
  """The two-stage recommender, as evaluated (`model`) and as pushed (`served_model`).

  `recommender_hparams`: models.hparams.RecommenderHparams, as JSON.
  `code_fingerprint` (common.code_fingerprint) only keys the cache. `history`: with
  spans, the spans the models learned from (ranking_evaluator.split_patterns).
  """
  del code_fingerprint
  build(ranking_evaluator.split_patterns(examples, history or ()),
        path_utils.serving_model_path(retrieval_model.uri),
        path_utils.serving_model_path(ranking_model.uri),
        tft.TFTransformOutput(transform_graph.uri),
        hp.RecommenderHparams(**json.loads(recommender_hparams)),
        path_utils.serving_model_dir(model.uri),
        path_utils.serving_model_dir(served_model.uri))
