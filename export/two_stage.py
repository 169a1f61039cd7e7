"""The served recommender: retrieval's candidates, re-ranked by the like model.

A like model ranking the whole catalogue answers "if this user watched this
movie, would they like it?", and puts obscure films with a few high ratings first.
The retrieval model answers "what will this user watch next?". `recommend` here
asks both, as production recommenders do:

1. retrieve: the retrieval SavedModel's `candidates` (its BruteForce index over
   the whole catalogue, movies it was trained on as rated left out);
2. exclude: every (user, movie) in `excluded`, the ratings this model is told
   about: the Trainers' splits for the evaluated model, every split for the
   pushed one. It is the only difference between the two (export/served.py);
3. rank: the like SavedModel's `predict` for each candidate, ordered by
   engagement logit + like_weight * log P(like) + popularity_weight *
   log(1 + the movie's ratings), and the k best returned with their like
   probabilities. Retrieval's training corrects for popularity (logQ); part of it
   is given back here, as much as helped on the eval split (docs/experiments.md).
A user the models never saw gets retrieval's cold-start list (the most-liked
movies, in its order), with its smoothed like rates as scores. The like model's
own signatures (`predict`, `predict_raw`, `serving_default`, `transform_features`)
are served unchanged, so a client of either model can call this one.

Both SavedModels are loaded and held by this module, so their variables, tables
and Transform assets are saved with it: one SavedModel, loaded by stock TF
Serving (only stock ops: a hash table, top_k, gathers).
"""
from typing import Dict

import numpy as np
import tensorflow as tf

from export import recommend
from export import served
from serving import contract

_SMALLEST_PROBABILITY = 1e-6  # log P(like) stays finite


class TwoStageRecommender(tf.Module):
  """`recommend(user_id, k)`: retrieve, exclude, rank; see the module's docstring."""

  def __init__(self, retrieval, ranking, known_user_ids: np.ndarray,
               excluded_users: np.ndarray, excluded_movies: np.ndarray,
               movie_ids: np.ndarray, movie_ratings: np.ndarray,
               retrieve_k: int, like_weight: float, popularity_weight: float):
    """
    Args:
      retrieval: the retrieval model's SavedModel, loaded (`tf.saved_model.load`).
      ranking: the like model's SavedModel (DeepFM), loaded.
      known_user_ids: the users both models were trained on (bytes).
      excluded_users, excluded_movies: the (user, movie) pairs never recommended.
      movie_ids, movie_ratings: each movie's number of ratings the models learned from.
      retrieve_k: candidates retrieved per user: enough that, once this model's
        exclusions are dropped, the number wanted is left
        (components/recommender_builder.py, `retrieve_depth`).
      like_weight: the weight of log P(like) against the engagement logit.
      popularity_weight: the weight of log(1 + ratings) against it.
    """
    super().__init__(name="two_stage_recommender")
    self.retrieval = retrieval
    self.ranking = ranking
    self.retrieve_k = int(retrieve_k)
    self.like_weight = float(like_weight)
    self.popularity_weight = float(popularity_weight)
    self.log_popularity = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(movie_ids.astype(bytes)),
            tf.constant(np.log1p(movie_ratings.astype(np.float64)), tf.float32)),
        default_value=0.0)
    self.known_users = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(known_user_ids.astype(bytes)),
            tf.ones([len(known_user_ids)], tf.int64)), default_value=0)
    self.excluded = served.ExcludedPairs(excluded_users, excluded_movies)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.USER_ID),
                                tf.TensorSpec([], tf.int32, name=contract.K)], autograph=False)
  def recommend(self, user_id: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The k best movies (ids and like probabilities) for each user, best first."""
    k = recommend.checked_k(k, min(contract.MAX_K, self.retrieve_k))
    retrieved = self.retrieval.recommender.candidates(user_id, tf.constant(self.retrieve_k))
    movie_ids, engagement = retrieved[contract.MOVIE_IDS], retrieved[contract.SCORES]
    users = tf.broadcast_to(user_id[:, tf.newaxis], tf.shape(movie_ids))
    excluded = self.excluded.contains(user_id, movie_ids)
    like = tf.reshape(self.ranking.recommender.predict(tf.reshape(users, [-1]),
                                                       tf.reshape(movie_ids, [-1])),
                      tf.shape(movie_ids))
    known = (self.known_users.lookup(user_id) > 0)[:, tf.newaxis]
    # Cold start: retrieval's list is already the most-liked movies, kept in its order.
    retrieved_order = -tf.cast(tf.range(tf.shape(engagement)[1]), engagement.dtype)
    blend = (engagement
             + self.like_weight * tf.math.log(tf.maximum(like, _SMALLEST_PROBABILITY))
             + self.popularity_weight * self.log_popularity.lookup(movie_ids))
    order = tf.where(known, blend, retrieved_order[tf.newaxis, :])
    order = tf.where(excluded, -np.inf, order)
    top = tf.math.top_k(order, k=k)
    scores = tf.where(known, like, engagement)
    empty = tf.math.is_inf(top.values)
    return {contract.MOVIE_IDS: tf.where(empty, "", tf.gather(movie_ids, top.indices,
                                                              batch_dims=1)),
            contract.SCORES: tf.where(empty, 0.0, tf.gather(scores, top.indices,
                                                            batch_dims=1))}


# The like model's signatures served unchanged by the two-stage model.
PASSED_THROUGH = (contract.SERVING_DEFAULT, contract.PREDICT, contract.PREDICT_RAW,
                  contract.TRANSFORM_FEATURES)


def export(recommender: TwoStageRecommender, export_dir: str) -> None:
  """Saves `recommender` with `recommend` and the like model's signatures."""
  signatures = {name: recommender.ranking.signatures[name] for name in PASSED_THROUGH}
  signatures[contract.RECOMMEND] = recommender.recommend.get_concrete_function()
  tf.saved_model.save(recommender, export_dir, signatures=signatures)
