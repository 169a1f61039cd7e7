"""Which movies are watched together: EASE's item-item weights, served with stock TF ops.

EASE (Steck, 2019) scores movie c for a user as the sum, over the movies j they
rated, of an item-item weight B[j, c] fitted in closed form on who rated what
(evaluation/topk.py fits it). Served, B is held whole over the most rated movies
(RecommenderBuilder chooses them): kept to each movie's largest weights only, the
lists lose much of what EASE ranks (docs/experiments.md), since its negative
weights carry as much as its positive ones. A user's scores are the sum of their
movies' rows: a sparse-dense product, whose cost grows with their ratings.
"""
import numpy as np
import tensorflow as tf


class CoOccurrence(tf.Module):
  """`scores(rated)`: each movie's EASE score for users given the movies they rated."""

  def __init__(self, catalogue_size: int, movies: np.ndarray, weights: np.ndarray):
    """
    Args:
      catalogue_size: n, the movies scored (the served models' movie vocabulary).
      movies: the catalogue index of each row and column of `weights`, [m].
      weights: EASE's B, [m, m]: row j, what rating movie movies[j] says of each movie.
    """
    super().__init__(name="co_occurrence")
    self.catalogue_size = int(catalogue_size)
    self.size = len(movies)
    # Catalogue index -> row of `weights`; a movie without one (and index n, "no
    # movie") -> m, a row and column of zeros.
    position = np.full(catalogue_size + 1, len(movies), np.int64)
    position[np.asarray(movies, np.int64)] = np.arange(len(movies))
    self.position = tf.constant(position)
    # A variable rather than a graph constant: saved in the checkpoint, it keeps the
    # graph small and under protobuf's 2 GB however large the catalogue.
    self.weights = tf.Variable(np.pad(np.asarray(weights, np.float32), [(0, 1), (0, 1)]),
                               trainable=False, name="weights")

  def scores(self, rated: tf.RaggedTensor) -> tf.Tensor:
    """Scores [batch, n + 1] for histories `rated` ([batch, None] catalogue indices,
    n for a movie outside the catalogue), each movie counted once; the last column
    is 0."""
    columns = self.size + 1
    batch = rated.nrows()
    keys, _ = tf.unique(rated.value_rowids() * columns
                        + tf.gather(self.position, tf.cast(rated.flat_values, tf.int64)))
    history = tf.sparse.reorder(tf.SparseTensor(
        tf.stack([keys // columns, keys % columns], axis=1),
        tf.ones_like(keys, tf.float32), tf.stack([batch, columns])))
    return tf.gather(tf.sparse.sparse_dense_matmul(history, self.weights), self.position,
                     axis=1)
