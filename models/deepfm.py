"""DeepFM in Keras: FM first- and second-order terms and a DNN over shared field embeddings."""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from models import features
from models import hparams as hp
from models import layers

_GENRES = features.transformed_name(features.MOVIE_GENRES)
_SINGLE_FIELDS = tuple(f for f in features.DEEPFM_FIELDS if f != features.MOVIE_GENRES)


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
    sizes = [vocabulary_sizes[f] for f in features.DEEPFM_FIELDS]
    starts = np.cumsum([0] + sizes[:-1])
    self._offsets = tf.constant([starts[features.DEEPFM_FIELDS.index(f)]
                                 for f in _SINGLE_FIELDS], tf.int64)
    self._genre_offset = int(starts[features.DEEPFM_FIELDS.index(features.MOVIE_GENRES)])
    self.table = tf.keras.layers.Embedding(
        sum(sizes), dim,
        embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=init_stddev),
        embeddings_regularizer=tf.keras.regularizers.l2(l2) if l2 else None)

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    ids = tf.stack([inputs[features.transformed_name(f)] for f in _SINGLE_FIELDS], axis=1)
    fields = self.table(ids + self._offsets)  # [batch, single fields, dim]
    genre_ids = inputs[_GENRES]
    present = tf.cast(genre_ids >= 0, fields.dtype)[..., tf.newaxis]
    genres = self.table(tf.maximum(genre_ids, 0) + self._genre_offset) * present
    pooled = tf.reduce_sum(genres, 1) / tf.maximum(tf.reduce_sum(present, 1), 1.0)
    return tf.concat([fields, pooled[:, tf.newaxis, :]], axis=1)

  def vocabulary_table(self) -> layers.VocabularyTable:
    return layers.VocabularyTable(self.table.embeddings, features.DEEPFM_FIELDS)


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

