"""What is pushed: models that never recommend a movie their user has rated.

Every model is built twice, identical but for the ratings its `recommend` leaves
out. The variant that is evaluated leaves out the splits the models learned from
(train and eval): the test split is the future it is judged on, so its movies must
stay candidates. The variant that is pushed leaves out every rating ingested, test
included (components/recommender_builder.py builds both): nobody is offered a film
they have already rated.

`ExcludedPairs` is that exclusion, shared by the two-stage recommender
(export/two_stage.py) and `ServedLikeModel`, the pushed form of a like model (CF,
DeepFM): the Trainer's SavedModel, loaded and held, with a `recommend` that
retrieves deeper through the model's own `candidates` and drops the excluded pairs.
Its other signatures are the Trainer's, unchanged.
"""
from typing import Dict

import numpy as np
import tensorflow as tf

from export import recommend
from serving import contract

_PAIR_SEPARATOR = "\x1f"  # between user and movie id in the table's keys


def _pair_keys(user_ids: tf.Tensor, movie_ids: tf.Tensor) -> tf.Tensor:
  return tf.strings.join([user_ids, movie_ids], separator=_PAIR_SEPARATOR)


class ExcludedPairs(tf.Module):
  """The (user id, movie id) pairs a model never recommends: a hash table of both ids."""

  def __init__(self, user_ids: np.ndarray, movie_ids: np.ndarray):
    super().__init__(name="excluded_pairs")
    keys = _pair_keys(tf.constant(user_ids.astype(bytes)), tf.constant(movie_ids.astype(bytes)))
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int64)),
        default_value=0)

  def contains(self, user_id: tf.Tensor, movie_ids: tf.Tensor) -> tf.Tensor:
    """For users [batch] and their lists [batch, n]: which (user, movie) are excluded,
    or are a list's empty places ("")."""
    users = tf.broadcast_to(user_id[:, tf.newaxis], tf.shape(movie_ids))
    return (movie_ids == "") | (self.table.lookup(_pair_keys(users, movie_ids)) > 0)


class ServedLikeModel(tf.Module):
  """A like model's SavedModel whose `recommend` also leaves out `excluded`.

  The model's own `candidates` (export/recommend.py) already leaves out what it
  was trained on; `deeper` more are retrieved than asked for, the most any one
  user has among `excluded` beyond that, so that k remain once they are dropped.
  The order is the model's: a known user's by like probability, a cold-start list
  by number of likes.
  """

  def __init__(self, model, excluded: ExcludedPairs, deeper: int, catalogue_size: int):
    """
    Args:
      model: the like model's SavedModel, loaded (`tf.saved_model.load`).
      excluded: what this variant never recommends.
      deeper: how many more candidates than k to retrieve.
      catalogue_size: the number of movies the model can recommend.
    """
    super().__init__(name="served_like_model")
    self.model = model
    self.excluded = excluded
    self.deeper = int(deeper)
    self.catalogue_size = int(catalogue_size)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.USER_ID),
                                tf.TensorSpec([], tf.int32, name=contract.K)], autograph=False)
  def recommend(self, user_id: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The k best movies (ids and like probabilities) for each user, best first."""
    k = recommend.checked_k(k, min(contract.MAX_K, self.catalogue_size))
    depth = tf.minimum(k + self.deeper, self.catalogue_size)
    retrieved = self.model.recommender.candidates(user_id, depth)
    movie_ids, scores = retrieved[contract.MOVIE_IDS], retrieved[contract.SCORES]
    # The model's own order, by position: a cold-start list is ordered by likes, and
    # served with another score.
    order = -tf.cast(tf.range(tf.shape(movie_ids)[1]), tf.float32)[tf.newaxis, :]
    order = tf.where(self.excluded.contains(user_id, movie_ids), -np.inf, order)
    top = tf.math.top_k(order, k=k)
    empty = tf.math.is_inf(top.values)
    return {contract.MOVIE_IDS: tf.where(empty, "", tf.gather(movie_ids, top.indices,
                                                              batch_dims=1)),
            contract.SCORES: tf.where(empty, 0.0, tf.gather(scores, top.indices,
                                                            batch_dims=1))}


def export_like_model(served: ServedLikeModel, export_dir: str) -> None:
  """Saves `served` with the like model's signatures and this `recommend`."""
  signatures = {name: function for name, function in served.model.signatures.items()
                if name != contract.RECOMMEND}
  signatures[contract.RECOMMEND] = served.recommend.get_concrete_function()
  tf.saved_model.save(served, export_dir, signatures=signatures)
