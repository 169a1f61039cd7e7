"""Collaborative filtering with TensorFlow Recommenders: a ranking model over ids only."""
from typing import Dict, List, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from models import features
from models import hparams as hp
from models import layers

USER = features.transformed_name(features.USER_ID)
MOVIE = features.transformed_name(features.MOVIE_ID)


class CollaborativeFiltering(layers.ChunkedTrainStep, tfrs.Model):
  """Ranking model: the probability that a user likes a movie, from their embeddings.

  With `scoring="cosine"` (the reference study's model) the probability is
  (cos(user, movie) + 1) / 2; with `scoring="dot"` it is
  sigmoid(user . movie + user bias + movie bias + global bias). Trained with
  `tfrs.tasks.Ranking` on binary cross-entropy, with AUC as its metric.
  """

  def __init__(self, num_users: int, num_movies: int, hparams: hp.CFHparams):
    super().__init__()
    self.hparams = hparams
    initializer = tf.keras.initializers.RandomNormal(stddev=hparams.init_stddev)
    self.user_embedding = tf.keras.layers.Embedding(
        num_users, hparams.embedding_dim, embeddings_initializer=initializer)
    self.movie_embedding = tf.keras.layers.Embedding(
        num_movies, hparams.embedding_dim, embeddings_initializer=initializer)
    self.use_biases = hparams.scoring == "dot" and hparams.use_biases
    if self.use_biases:
      self.user_bias = tf.keras.layers.Embedding(num_users, 1, embeddings_initializer="zeros")
      self.movie_bias = tf.keras.layers.Embedding(num_movies, 1, embeddings_initializer="zeros")
      self.global_bias = tf.Variable(0.0, name="global_bias")
    self.use_id_statistics = hparams.scoring == "dot" and hparams.use_id_statistics
    if self.use_id_statistics:
      self.statistics_linear = tf.keras.layers.Dense(1, use_bias=False,
                                                     name="statistics_linear")
    self.rating_head = (layers.RatingHead(hparams.rating_loss_weight)
                        if hparams.scoring == "dot" and hparams.rating_loss_weight else None)
    self.task = layers.ranking_task()

  def _score(self, inputs: Dict[str, tf.Tensor]):
    """(probabilities, logits (None for cosine scoring), user and movie embeddings)."""
    user = self.user_embedding(inputs[USER])
    movie = self.movie_embedding(inputs[MOVIE])
    if self.hparams.scoring == "cosine":
      cosine = tf.reduce_sum(tf.math.l2_normalize(user, -1, 1e-6)
                             * tf.math.l2_normalize(movie, -1, 1e-6), -1, keepdims=True)
      return (cosine + 1) / 2, None, user, movie
    logits = tf.reduce_sum(user * movie, -1, keepdims=True)
    if self.use_biases:
      logits += (self.user_bias(inputs[USER]) + self.movie_bias(inputs[MOVIE])
                 + self.global_bias)
    if self.use_id_statistics:
      logits += self.statistics_linear(layers.id_statistics(inputs))
    return tf.sigmoid(logits), logits, user, movie

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Like probabilities, shape [batch, 1]."""
    return self._score(inputs)[0]

  def vocabulary_tables(self) -> List[layers.VocabularyTable]:
    """The tables indexed by the user and the movie vocabulary (models/warm_start.py)."""
    tables = [layers.VocabularyTable(self.user_embedding.embeddings, (features.USER_ID,)),
              layers.VocabularyTable(self.movie_embedding.embeddings, (features.MOVIE_ID,))]
    if self.use_biases:
      tables += [layers.VocabularyTable(self.user_bias.embeddings, (features.USER_ID,)),
                 layers.VocabularyTable(self.movie_bias.embeddings, (features.MOVIE_ID,))]
    return tables

  # The same score factorised for retrieval: logit = query . candidate + offset,
  # so a TFRS BruteForce index over the candidates ranks every movie at once. (The
  # optional statistics term is left to pair-by-pair scoring.)

  @property
  def factorizes(self) -> bool:
    return not self.use_id_statistics

  def query_vectors(self, inputs: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per user: the query vector [batch, dim + 1] and the score offset [batch]."""
    user = self.user_embedding(inputs[USER])
    if self.hparams.scoring == "cosine":
      user = tf.math.l2_normalize(user, -1, 1e-6)
    ones = tf.ones_like(user[:, :1])
    offset = tf.zeros_like(user[:, 0])
    if self.use_biases:
      offset = self.user_bias(inputs[USER])[:, 0] + self.global_bias
    return tf.concat([user, ones], -1), offset

  def candidate_vectors(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Per movie: the candidate vector [movies, dim + 1] (embedding, then movie bias)."""
    movie = self.movie_embedding(inputs[MOVIE])
    if self.hparams.scoring == "cosine":
      movie = tf.math.l2_normalize(movie, -1, 1e-6)
    bias = (self.movie_bias(inputs[MOVIE]) if self.use_biases
            else tf.zeros_like(movie[:, :1]))
    return tf.concat([movie, bias], -1)

  def probability(self, scores: tf.Tensor) -> tf.Tensor:
    """query . candidate + offset -> like probability."""
    if self.hparams.scoring == "cosine":
      return (scores + 1) / 2
    return tf.sigmoid(scores)

  def compute_loss(self, inputs: Tuple[Dict[str, tf.Tensor], tf.Tensor],
                   training: bool = False) -> tf.Tensor:
    features_, labels = inputs
    probabilities, logits, user, movie = self._score(features_)
    loss = self.task(labels=labels, predictions=probabilities)
    if self.rating_head is not None:
      loss += self.rating_head(features_, logits)
    if self.hparams.l2:  # on the rows of this batch, the usual choice for sparse ids
      loss += self.hparams.l2 * tf.reduce_mean(
          tf.reduce_sum(tf.square(user), -1) + tf.reduce_sum(tf.square(movie), -1))
    return loss


def build(vocabulary_sizes: Dict[str, int], hparams: hp.CFHparams) -> CollaborativeFiltering:
  return CollaborativeFiltering(vocabulary_sizes[features.USER_ID],
                                vocabulary_sizes[features.MOVIE_ID], hparams)

