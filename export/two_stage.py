"""The served recommender: retrieval's candidates, re-ranked by the like model.

A like model ranking the whole catalogue answers "if this user watched this
movie, would they like it?", and puts obscure films with a few high ratings first.
The retrieval model answers "what will this user watch next?". `recommend` here
asks both, as production recommenders do:

1. retrieve: the retrieval SavedModel's `candidates` (its BruteForce index over
   the whole catalogue, movies it was trained on as rated left out);
2. exclude: every movie the user rated among the ratings this model holds
   (`rated`): the Trainers' splits for the evaluated model, every split for the
   pushed one. The ratings held are the only difference between the two
   (export/served.py): they are also each user's history for the EASE score;
3. rank: the like SavedModel's `predict` for each candidate, ordered by
   engagement logit + like_weight * log P(like) + popularity_weight *
   log(1 + the movie's ratings) + co_occurrence_weight * EASE score (the sum of
   EASE's item-item weights from every movie the user rated, export/co_occurrence.py)
   + recent_co_occurrence_weight * the EASE score of the user's latest movies alone
   (`latest`: what they watched last says more about the next one), and the k best
   returned with their like probabilities. Retrieval's training
   corrects for popularity (logQ); part of it is given back here, as much as
   helped on the eval split (docs/experiments.md).

`recommend_for_history(history, k)` serves a visitor in no table from the movies
they rated, through the same two stages: EASE's best candidates for those movies
(none of them), ranked by EASE score + visitor_like_weight * log P(like), where
P(like) is the like model's for a user it never saw. `recommend` serves a user
id the models do not know, but whose ratings this model holds, the same way.
Anyone else (and a history of no known movie) gets retrieval's cold-start list
(the most-liked movies, in its order), with its smoothed like rates as scores.
The like model's own signatures (`predict`, `predict_raw`, `serving_default`,
`transform_features`) are served unchanged, so a client of either model can
call this one.

Both SavedModels are loaded and held by this module, so their variables, tables
and Transform assets are saved with it: one SavedModel, loaded by stock TF
Serving (only stock ops: hash tables, a sparse-dense product, top_k, gathers).
"""
from typing import Dict

import numpy as np
import tensorflow as tf

from export import co_occurrence
from export import recommend
from export import served
from serving import contract

_SMALLEST_PROBABILITY = 1e-6  # log P(like) stays finite
# The user id the like model is asked about for a visitor: in no table, so it
# answers from the movie's side alone.
_VISITOR = recommend.UNSEEN_STRING


class TwoStageRecommender(tf.Module):
  """`recommend(user_id, k)` and `recommend_for_history(history, k)`: retrieve,
  exclude, rank; see the module's docstring."""

  def __init__(self, retrieval, ranking, known_user_ids: np.ndarray,
               rated: served.UserRatings, latest: served.UserRatings,
               cooccurrence: co_occurrence.CoOccurrence, movie_ids: np.ndarray,
               movie_ratings: np.ndarray, retrieve_k: int, like_weight: float,
               popularity_weight: float, co_occurrence_weight: float,
               recent_co_occurrence_weight: float, visitor_like_weight: float):
    """
    Args:
      retrieval: the retrieval model's SavedModel, loaded (`tf.saved_model.load`).
      ranking: the like model's SavedModel (DeepFM), loaded.
      known_user_ids: the users both models were trained on (bytes).
      rated: each user's rated movies: never recommended to them, and their history.
      latest: each user's latest rated movies, among `rated`.
      cooccurrence: EASE's item-item weights over `rated`'s catalogue.
      movie_ids, movie_ratings: each movie's number of ratings the models learned from.
      retrieve_k: candidates retrieved per user: enough that, once this model's
        exclusions are dropped, the number wanted is left
        (components/recommender_builder.py, `retrieve_depth`).
      like_weight: the weight of log P(like) against the engagement logit.
      popularity_weight: the weight of log(1 + ratings) against it.
      co_occurrence_weight: the weight of the EASE score against it.
      recent_co_occurrence_weight: the weight of the latest movies' EASE score.
      visitor_like_weight: for a history without a user, the weight of log P(like)
        against the EASE score.
    """
    super().__init__(name="two_stage_recommender")
    self.retrieval = retrieval
    self.ranking = ranking
    self.retrieve_k = int(retrieve_k)
    self.like_weight = float(like_weight)
    self.popularity_weight = float(popularity_weight)
    self.co_occurrence_weight = float(co_occurrence_weight)
    self.recent_co_occurrence_weight = float(recent_co_occurrence_weight)
    self.visitor_like_weight = float(visitor_like_weight)
    self.log_popularity = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(movie_ids.astype(bytes)),
            tf.constant(np.log1p(movie_ratings.astype(np.float64)), tf.float32)),
        default_value=0.0)
    self.known_users = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(known_user_ids.astype(bytes)),
            tf.ones([len(known_user_ids)], tf.int64)), default_value=0)
    self.rated = rated
    self.latest = latest
    self.co_occurrence = cooccurrence

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.USER_ID),
                                tf.TensorSpec([], tf.int32, name=contract.K)], autograph=False)
  def recommend(self, user_id: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The k best movies (ids and like probabilities) for each user, best first.

    A user the models know: retrieval's candidates, ranked. A user they do not know
    but whose ratings this model holds: as a visitor with that history. Anyone
    else: retrieval's cold-start list.
    """
    k = recommend.checked_k(k, min(contract.MAX_K, self.retrieve_k))
    rated = self.rated.of_users(user_id)
    retrieved = self.retrieval.recommender.candidates(user_id, tf.constant(self.retrieve_k))
    movie_ids, engagement = retrieved[contract.MOVIE_IDS], retrieved[contract.SCORES]
    like = self._like(tf.broadcast_to(user_id[:, tf.newaxis], tf.shape(movie_ids)), movie_ids)
    known = (self.known_users.lookup(user_id) > 0)[:, tf.newaxis]
    # Both EASE scores in one product: the rated movies' rows, then the latest's.
    both = tf.gather(self.co_occurrence.scores(tf.concat([rated, self.latest.of_users(user_id)],
                                                         axis=0)),
                     tf.tile(self.rated.movie_lookup.lookup(movie_ids), [2, 1]), batch_dims=1)
    ease, recent = tf.split(both, 2)
    # Cold start: retrieval's list is already the most-liked movies, kept in its order.
    retrieved_order = -tf.cast(tf.range(tf.shape(engagement)[1]), engagement.dtype)
    blend = (engagement
             + self.like_weight * tf.math.log(tf.maximum(like, _SMALLEST_PROBABILITY))
             + self.popularity_weight * self.log_popularity.lookup(movie_ids)
             + self.co_occurrence_weight * ease
             + self.recent_co_occurrence_weight * recent)
    order = tf.where(known, blend, retrieved_order[tf.newaxis, :])
    excluded = self.rated.among(rated, movie_ids)
    known_list = _top(movie_ids, order, tf.where(known, like, engagement), excluded, k)
    visitor = (~known[:, 0]) & (rated.row_lengths() > 0)
    return _where_any(visitor, lambda: self._for_rated(rated, k), known_list)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None], tf.string, name=contract.HISTORY),
      tf.TensorSpec([], tf.int32, name=contract.K)], autograph=False)
  def recommend_for_history(self, history: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The k best movies for each row of movie ids, none of them, best first.

    For someone in no table, from the movies they rated: "" pads a row, and ids
    outside the catalogue are left out. A row with no movie left gets the cold-start
    list. The scores are like probabilities for an unknown user.
    """
    k = recommend.checked_k(k, min(contract.MAX_K, self.retrieve_k))
    indices = self.rated.movie_lookup.lookup(history)
    rated = tf.ragged.boolean_mask(indices, indices < self.rated.catalogue_size)
    return self._for_rated(rated, k)

  def _like(self, users: tf.Tensor, movie_ids: tf.Tensor) -> tf.Tensor:
    """The like model's P(like) of each (user, movie), both [batch, n]."""
    like = self.ranking.recommender.predict(tf.reshape(users, [-1]), tf.reshape(movie_ids, [-1]))
    return tf.reshape(like, tf.shape(movie_ids))

  def _for_rated(self, rated: tf.RaggedTensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Lists for histories alone ([batch, None] catalogue indices): EASE's candidates,
    ranked by its score and the like model's P(like) for an unknown user."""
    movies = self.rated.catalogue_size
    scores = self.co_occurrence.scores(rated)
    seen = self.rated.mask(rated) | (tf.range(movies + 1) == movies)[tf.newaxis, :]
    candidates = tf.math.top_k(tf.where(seen, -np.inf, scores), k=self.retrieve_k)
    movie_ids = tf.gather(self.rated.catalogue_ids, candidates.indices)
    like = self._like(tf.fill(tf.shape(movie_ids), _VISITOR), movie_ids)
    order = candidates.values + self.visitor_like_weight * tf.math.log(
        tf.maximum(like, _SMALLEST_PROBABILITY))
    visitor_list = _top(movie_ids, order, like, tf.math.is_inf(candidates.values), k)

    def cold_list():
      """No movie to go on: the cold-start list, as for a user in no table."""
      cold = self.retrieval.recommender.candidates(
          tf.fill(tf.shape(rated.row_lengths()), _VISITOR), k)
      return {key: tf.where(cold[contract.MOVIE_IDS] == "", tf.zeros_like(value), value)
              for key, value in cold.items()}

    return _where_any(rated.row_lengths() == 0, cold_list, visitor_list)


def _where_any(rows: tf.Tensor, computed, otherwise: Dict[str, tf.Tensor]
               ) -> Dict[str, tf.Tensor]:
  """`otherwise`, with the `rows` [batch] where True taken from `computed()`'s lists,
  which is only run when some row needs it."""
  def mixed():
    lists = computed()
    return {key: tf.where(rows[:, tf.newaxis], lists[key], otherwise[key]) for key in otherwise}

  return tf.cond(tf.reduce_any(rows), mixed, lambda: otherwise)


def _top(movie_ids: tf.Tensor, order: tf.Tensor, scores: tf.Tensor, excluded: tf.Tensor,
         k: tf.Tensor) -> Dict[str, tf.Tensor]:
  """The k movies of each row best by `order`, excluded ones left out, served with
  `scores`; a row with fewer than k left ends in empty places ("", 0)."""
  top = tf.math.top_k(tf.where(excluded, -np.inf, order), k=k)
  empty = tf.math.is_inf(top.values)
  return {contract.MOVIE_IDS: tf.where(empty, "", tf.gather(movie_ids, top.indices,
                                                            batch_dims=1)),
          contract.SCORES: tf.where(empty, 0.0, tf.gather(scores, top.indices, batch_dims=1))}


# The like model's signatures served unchanged by the two-stage model.
PASSED_THROUGH = (contract.SERVING_DEFAULT, contract.PREDICT, contract.PREDICT_RAW,
                  contract.TRANSFORM_FEATURES)


def export(recommender: TwoStageRecommender, export_dir: str) -> None:
  """Saves `recommender` with `recommend`, `recommend_for_history` and the like
  model's signatures."""
  signatures = {name: recommender.ranking.signatures[name] for name in PASSED_THROUGH}
  signatures[contract.RECOMMEND] = recommender.recommend.get_concrete_function()
  signatures[contract.RECOMMEND_FOR_HISTORY] = (
      recommender.recommend_for_history.get_concrete_function())
  tf.saved_model.save(recommender, export_dir, signatures=signatures)
