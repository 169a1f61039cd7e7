"""DeepFM in Keras: FM first- and second-order terms and a DNN over shared field embeddings."""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from models import features
from models import hparams as hp
from models import layers

_GENRES = features.transformed_name(features.MOVIE_GENRES)
# The DNN's input puts the user's fields first, then the movie's (and so does
# `logits_of_every_pair`, which splits the input at that point).
assert features.DEEPFM_FIELDS[:len(features.USER_FIELDS)] == features.USER_FIELDS


class FieldEmbeddings(tf.keras.layers.Layer):
  """Embeds every field to [batch, fields, dim]; genres are mean-pooled into one field.

  All fields share one table, each field owning a block of rows, so a step does two
  gathers instead of one per field, which trains faster (docs/performance.md). The
  model is the same as with a table per field: L2 over one table is the sum of L2
  over its blocks.
  """

  def __init__(self, vocabulary_sizes: Dict[str, int], dim: int, l2: float,
               init_stddev: float, **kwargs):
    super().__init__(**kwargs)
    # The fields the release has: the user's, then the movie's.
    self.fields = features.available(features.DEEPFM_FIELDS, vocabulary_sizes)
    self.user_fields = features.available(features.USER_FIELDS, vocabulary_sizes)
    self.movie_fields = self.fields[len(self.user_fields):]
    sizes = [vocabulary_sizes[f] for f in self.fields]
    self._first_rows = dict(zip(self.fields, np.cumsum([0] + sizes[:-1]).tolist()))
    self.table = tf.keras.layers.Embedding(
        sum(sizes), dim,
        embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=init_stddev),
        embeddings_regularizer=tf.keras.regularizers.l2(l2) if l2 else None)

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    return self.embed(inputs, self.fields)

  def embed(self, inputs: Dict[str, tf.Tensor], fields: Sequence[str]) -> tf.Tensor:
    """[batch, fields, dim]: `fields` (genres, if among them, last) in their order.

    `inputs` needs to hold only those fields: a user's, or a movie's.
    """
    single = [f for f in fields if f != features.MOVIE_GENRES]
    ids = tf.stack([inputs[features.transformed_name(f)] for f in single], axis=1)
    offsets = tf.constant([self._first_rows[f] for f in single], tf.int64)
    embedded = self.table(ids + offsets)  # [batch, single fields, dim]
    if features.MOVIE_GENRES not in fields:
      return embedded
    genre_ids = inputs[_GENRES]
    present = tf.cast(genre_ids >= 0, embedded.dtype)[..., tf.newaxis]
    genres = self.table(tf.maximum(genre_ids, 0)
                        + self._first_rows[features.MOVIE_GENRES]) * present
    pooled = tf.reduce_sum(genres, 1) / tf.maximum(tf.reduce_sum(present, 1), 1.0)
    return tf.concat([embedded, pooled[:, tf.newaxis, :]], axis=1)

  def vocabulary_table(self) -> layers.VocabularyTable:
    return layers.VocabularyTable(self.table.embeddings, self.fields)


class FactorizationMachine(tf.keras.layers.Layer):
  """Second-order FM term: the sum of pairwise dot products of field embeddings."""

  def call(self, fields: tf.Tensor) -> tf.Tensor:
    square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
    sum_of_squares = tf.reduce_sum(tf.square(fields), axis=1)
    return 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)


def _dnn(units: Sequence[int], dropout: float, l2: float) -> tf.keras.Sequential:
  regularizer = tf.keras.regularizers.l2(l2) if l2 else None
  layers = []
  for width in units:
    layers.append(tf.keras.layers.Dense(width, activation="relu",
                                        kernel_regularizer=regularizer))
    if dropout:
      layers.append(tf.keras.layers.Dropout(dropout))
  # The output layer in float32: a bfloat16 logit near 3 is only good to 1/64.
  layers.append(tf.keras.layers.Dense(1, use_bias=False, kernel_regularizer=regularizer,
                                      dtype="float32"))
  return tf.keras.Sequential(layers, name="dnn")


class DeepFM(layers.ChunkedTrainStep, tfrs.Model):
  """Ranking model: P(like) = sigmoid(linear + FM + DNN) over user, movie and their side features.

  The FM's first-order term has its own one-dimensional embeddings; the FM's
  second-order term and the DNN share the field embeddings (Guo et al., 2017).
  Trained with `tfrs.tasks.Ranking` on binary cross-entropy, AUC as its metric.
  """

  def __init__(self, vocabulary_sizes: Dict[str, int], hparams: hp.DeepFMHparams):
    super().__init__()
    self.embeddings = FieldEmbeddings(vocabulary_sizes, hparams.embedding_dim,
                                      hparams.l2_embedding, hparams.init_stddev)
    self.first_order = FieldEmbeddings(vocabulary_sizes, 1, 0.0, hparams.init_stddev)
    self.fm = FactorizationMachine()
    self.dnn = _dnn(hparams.dnn_units, hparams.dropout, hparams.l2_dnn)
    self.bias = tf.Variable(0.0, name="bias")
    self.use_id_statistics = hparams.use_id_statistics
    if self.use_id_statistics:  # a first-order term and DNN inputs
      # Statistics and their linear term stay float32 under bfloat16 compute, else
      # logit(rate) rounds to ~2 digits: the model's float inputs are not autocast.
      self._autocast = False
      self.statistics_linear = tf.keras.layers.Dense(1, use_bias=False, dtype="float32",
                                                     name="statistics_linear")
    self.rating_head = (layers.RatingHead(hparams.rating_loss_weight)
                        if hparams.rating_loss_weight else None)
    self.task = layers.ranking_task()

  def call(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Like probabilities, shape [batch, 1]."""
    return tf.sigmoid(self._logits(inputs, training))

  def vocabulary_tables(self) -> List[layers.VocabularyTable]:
    """The two tables of every field's rows (models/warm_start.py)."""
    return [self.embeddings.vocabulary_table(), self.first_order.vocabulary_table()]

  def _logits(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    fields = self.embeddings(inputs)
    linear = tf.reduce_sum(self.first_order(inputs), axis=1)
    deep_inputs = tf.keras.layers.Flatten()(fields)
    statistics_term = 0.0
    if self.use_id_statistics:
      statistics = layers.id_statistics(inputs)
      statistics_term = self.statistics_linear(statistics)
      # Zero columns keep the DNN's input width a multiple of 16: bfloat16 matmuls
      # of other widths ran markedly slower (docs/performance.md).
      padding = -(deep_inputs.shape[1] + statistics.shape[1]) % 16
      statistics = tf.pad(statistics, [[0, 0], [0, padding]])
      deep_inputs = tf.concat([deep_inputs, tf.cast(statistics, deep_inputs.dtype)], axis=1)
    deep = self.dnn(deep_inputs, training=training)
    # In the order the seed preset's reference numbers were measured with.
    return (tf.cast(linear + self.fm(fields), tf.float32) + deep + self.bias
            + statistics_term)

  def logits_of_every_pair(self, users: Dict[str, tf.Tensor],
                           movies: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The logit of each user for every movie, [users, movies]: `_logits` of each pair.

    What depends on one side alone is computed once per user or once per movie:
    the field embeddings, the first-order terms, each side's own FM pairs and its
    share of the first DNN layer, whose input is the user's part concatenated with
    the movie's, so that its product is a user's product plus a movie's. A pair
    then costs one dot product (the FM's user-movie pairs), a sum, and the DNN's
    other layers: `recommend` scores a user's catalogue with about half the
    multiplications and none of the per-pair embedding lookups.

    The split parts are summed in float32. Under bfloat16 compute the logits
    therefore differ from `_logits` by bfloat16's rounding (docs/serving.md).
    """
    user_fields = self.embeddings.embed(users, self.embeddings.user_fields)
    movie_fields = self.embeddings.embed(movies, self.embeddings.movie_fields)

    def own_terms(fields, first_order):
      """Per row: the first-order term and the FM's pairs within the side; the sum."""
      fields = tf.cast(fields, tf.float32)
      total = tf.reduce_sum(fields, axis=1)
      own_pairs = 0.5 * (tf.reduce_sum(tf.square(total), axis=1)
                         - tf.reduce_sum(tf.square(fields), axis=[1, 2]))
      linear = tf.reduce_sum(tf.cast(first_order, tf.float32), axis=[1, 2])
      return linear + own_pairs, total

    user_terms, user_total = own_terms(
        user_fields, self.first_order.embed(users, self.first_order.user_fields))
    movie_terms, movie_total = own_terms(
        movie_fields, self.first_order.embed(movies, self.first_order.movie_fields))
    cross_pairs = tf.matmul(user_total, movie_total, transpose_b=True)

    first_layer, *other_layers = self.dnn.layers
    kernel = tf.cast(first_layer.kernel, tf.float32)
    user_rows = user_fields.shape[1] * user_fields.shape[2]
    field_rows = user_rows + movie_fields.shape[1] * movie_fields.shape[2]
    user_inputs = [tf.reshape(user_fields, [-1, user_rows])]
    movie_inputs = [tf.reshape(movie_fields, [-1, field_rows - user_rows])]
    user_kernel = [kernel[:user_rows]]
    movie_kernel = [kernel[user_rows:field_rows]]
    if self.use_id_statistics:
      # The DNN's statistics columns follow the fields: the user's, then the movie's
      # (then zero padding, which adds nothing).
      user_statistics = tf.cast(layers.id_statistics(users, features.ID_STATISTICS[:1]),
                                tf.float32)
      movie_statistics = tf.cast(
          layers.id_statistics(movies, features.ID_STATISTICS[1:]), tf.float32)
      user_width = user_statistics.shape[1]
      movie_width = movie_statistics.shape[1]
      user_inputs.append(user_statistics)
      movie_inputs.append(movie_statistics)
      user_kernel.append(kernel[field_rows:field_rows + user_width])
      movie_kernel.append(kernel[field_rows + user_width:
                                 field_rows + user_width + movie_width])
      linear_kernel = tf.cast(self.statistics_linear.kernel, tf.float32)[:, 0]
      user_terms += tf.linalg.matvec(user_statistics, linear_kernel[:user_width])
      movie_terms += tf.linalg.matvec(movie_statistics, linear_kernel[user_width:])

    def first_layer_part(inputs, kernel_rows):
      inputs = tf.concat([tf.cast(x, tf.float32) for x in inputs], axis=1)
      return tf.matmul(inputs, tf.concat(kernel_rows, axis=0))

    user_part = first_layer_part(user_inputs, user_kernel)  # [users, units]
    movie_part = (first_layer_part(movie_inputs, movie_kernel)
                  + tf.cast(first_layer.bias, tf.float32))  # [movies, units]
    hidden = first_layer.activation(user_part[:, tf.newaxis, :] + movie_part[tf.newaxis])
    num_users, num_movies = tf.shape(user_part)[0], tf.shape(movie_part)[0]
    hidden = tf.cast(tf.reshape(hidden, [num_users * num_movies, first_layer.units]),
                     first_layer.compute_dtype)
    for layer in other_layers:
      hidden = layer(hidden, training=False)
    deep = tf.reshape(tf.cast(hidden, tf.float32), [num_users, num_movies])
    return (user_terms[:, tf.newaxis] + movie_terms[tf.newaxis] + cross_pairs + deep
            + self.bias)

  def compute_loss(self, inputs: Tuple[Dict[str, tf.Tensor], tf.Tensor],
                   training: bool = False) -> tf.Tensor:
    features_, labels = inputs
    logits = self._logits(features_, training)
    loss = self.task(labels=labels, predictions=tf.sigmoid(logits))
    if self.rating_head is not None:
      loss += self.rating_head(features_, logits)
    return loss


def build(vocabulary_sizes: Dict[str, int], hparams: hp.DeepFMHparams) -> DeepFM:
  return DeepFM(vocabulary_sizes, hparams)

