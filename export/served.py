"""What is pushed: models that never recommend a movie their user has rated.

Every model is built twice, identical but for the ratings it holds: those its
`recommend` leaves out, and from which the two-stage recommender also reads each
user's history (export/two_stage.py). The variant that is evaluated holds the
splits the models learned from (train and eval): the test split is the future it
is judged on, so its movies must stay candidates. The variant that is pushed holds
every rating ingested, test included (components/recommender_builder.py builds
both): nobody is offered a film they have already rated.

`UserRatings` holds them, shared by the two-stage recommender
(export/two_stage.py) and `ServedLikeModel`, the pushed form of a like model (CF,
DeepFM): the Trainer's SavedModel, loaded and held, with a `recommend` that
retrieves deeper through the model's own `candidates` and drops the rated movies.
Its other signatures are the Trainer's, unchanged.
"""
from typing import Dict

import numpy as np
import tensorflow as tf

from export import recommend
from serving import contract


def indices_in(catalogue: np.ndarray, ids: np.ndarray) -> np.ndarray:
  """Each of `ids`' index in `catalogue` (ids as bytes or str), len(catalogue) if absent."""
  catalogue, ids = catalogue.astype(bytes), np.asarray(ids).astype(bytes)
  if not len(catalogue):
    return np.zeros(len(ids), np.int64)
  order = np.argsort(catalogue)
  place = np.minimum(np.searchsorted(catalogue[order], ids), len(catalogue) - 1)
  found = catalogue[order][place] == ids
  return np.where(found, order[place], len(catalogue))


class UserRatings(tf.Module):
  """The movies each user rated, by user: what a model never recommends them, and
  the history it recommends from. A ragged table of catalogue indices per user
  (as compact as the ratings), looked up by user id."""

  def __init__(self, user_ids: np.ndarray, movie_ids: np.ndarray, catalogue: np.ndarray):
    """
    Args:
      user_ids, movie_ids: one (user id, movie id) per rating.
      catalogue: the movie ids a model can recommend, by index; ratings of other
        movies are left out, as nothing could be excluded by them.
    """
    super().__init__(name="user_ratings")
    self.catalogue_size = len(catalogue)
    movies = indices_in(catalogue, movie_ids)
    users, user_index = np.unique(np.asarray(user_ids).astype(bytes), return_inverse=True)
    known = movies < len(catalogue)
    pairs = np.unique(user_index[known].astype(np.int64) * (len(catalogue) + 1)
                      + movies[known])
    counts = np.bincount(pairs // (len(catalogue) + 1), minlength=len(users) + 1)
    self.user_lookup = recommend.id_lookup(users)  # an unknown user: the last row, empty
    self.movie_lookup = recommend.id_lookup(np.asarray(catalogue))
    # Index -> id; index n, outside the catalogue, is an empty place ("").
    self.catalogue_ids = tf.constant(np.append(np.asarray(catalogue).astype(bytes), b""))
    # Variables rather than graph constants: saved in the checkpoint, they keep the
    # graph small and under protobuf's 2 GB however many ratings there are.
    self.movies = tf.Variable((pairs % (len(catalogue) + 1)).astype(np.int32),
                              trainable=False, name="movies")
    self.row_splits = tf.Variable(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                                  trainable=False, name="row_splits")

  def of_users(self, user_id: tf.Tensor) -> tf.RaggedTensor:
    """The catalogue indices each of the users [batch] rated, [batch, None]."""
    table = tf.RaggedTensor.from_row_splits(self.movies.value(), self.row_splits.value(),
                                            validate=False)
    return tf.gather(table, self.user_lookup.lookup(user_id))

  def mask(self, rated: tf.RaggedTensor) -> tf.Tensor:
    """[batch, n + 1] bool: True where a row of `rated` holds the movie (column n
    stands for any movie outside the catalogue, and is False)."""
    positions = tf.stack([rated.value_rowids(), tf.cast(rated.flat_values, tf.int64)], axis=1)
    return tf.scatter_nd(positions, tf.ones_like(rated.flat_values, tf.bool),
                         tf.stack([rated.nrows(), tf.constant(self.catalogue_size + 1,
                                                              tf.int64)]))

  def contains(self, user_id: tf.Tensor, movie_ids: tf.Tensor) -> tf.Tensor:
    """For users [batch] and their lists [batch, n]: which movies they rated, or are
    a list's empty places ("")."""
    return self.among(self.of_users(user_id), movie_ids)

  def among(self, rated: tf.RaggedTensor, movie_ids: tf.Tensor) -> tf.Tensor:
    """For histories `rated` (`of_users`) and lists [batch, n]: which movies are in
    them, or are a list's empty places ("")."""
    return (movie_ids == "") | tf.gather(self.mask(rated), self.movie_lookup.lookup(movie_ids),
                                         batch_dims=1)


class ServedLikeModel(tf.Module):
  """A like model's SavedModel whose `recommend` also leaves out `excluded`.

  The model's own `candidates` (export/recommend.py) already leaves out what it
  was trained on; `deeper` more are retrieved than asked for, the most any one
  user has among `excluded` beyond that, so that k remain once they are dropped.
  The order is the model's: a known user's by like probability, a cold-start list
  by number of likes.
  """

  def __init__(self, model, excluded: UserRatings, deeper: int, catalogue_size: int):
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
