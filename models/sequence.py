"""What a user watched, in order: the history of a rating encoded into one vector.

Each example carries the user's latest earlier ratings, most recent first
(docs/data.md#history); the Transform graph maps their movie ids through the movie
vocabulary and pads them with features.HISTORY_PADDING (models/preprocessing.py). An encoder
reads the first `length` of them:

- "mean": the movies' embeddings averaged, each weighted by a learned weight of
  its place (the most recent first), as YouTube's candidate generator averages
  the videos watched; the cheapest, and blind to order beyond those weights.
- "gru": a GRU over the movies from the oldest to the most recent (TensorFlow
  Recommenders' sequential retrieval example); its last state is the vector. An
  empty history gives its initial state, zeros.
- "attention": SASRec's blocks (multi-head self-attention, then a feed-forward
  layer, each with a residual and layer normalisation) over the movies and their
  positions, read out at a learned token that comes first. SASRec masks each
  position from later ones because it trains every position of a sequence at once;
  here every movie of a history is before the rating it predicts, so each may see
  all the others. The token keeps an empty history from being an attention over
  nothing: it gives the token's own vector.

With `ages`, each movie's embedding also gets an embedding of how long before the
rating it was rated (log-spaced buckets): a movie rated a minute ago says more
about the next one than a movie rated a year ago.
"""
from typing import Dict

import tensorflow as tf

from models import features
from models import layers

ENCODERS = ("none", "mean", "gru", "attention")

_MOVIES = features.transformed_name(features.HISTORY_MOVIE_IDS)
_AGES = features.transformed_name(features.HISTORY_AGE_SECONDS)
# Age buckets: log1p(hours) in steps of a half, the last open-ended (about 2 years on).
_AGE_BUCKETS = 20
_AGE_BUCKET_WIDTH = 0.5


class HistoryEncoder(tf.keras.layers.Layer):
  """The first `length` movies of a history ([batch, HISTORY_LENGTH]) to one vector."""

  def __init__(self, encoder: str, movie_rows: int, dim: int, length: int,
               ages: bool = False, blocks: int = 2, heads: int = 2, dropout: float = 0.1,
               **kwargs):
    super().__init__(**kwargs)
    if encoder not in ENCODERS[1:]:
      raise ValueError(f"history encoder must be one of {ENCODERS[1:]}, got {encoder!r}")
    if not 0 < length <= features.HISTORY_LENGTH:
      raise ValueError(f"history length must be 1 to {features.HISTORY_LENGTH} (what the "
                       f"examples carry), got {length}")
    self.encoder = encoder
    self.length = length
    self.dim = dim
    initializer = tf.keras.initializers.RandomNormal(stddev=0.05)
    # One row per movie vocabulary index (its OOV bucket included), as the movie
    # tower's id table, so that a warm start carries them over by id; the padding
    # looks up row 0 and is masked out.
    self.movies = tf.keras.layers.Embedding(movie_rows, dim,
                                            embeddings_initializer=initializer)
    self.ages = (tf.keras.layers.Embedding(_AGE_BUCKETS, dim, embeddings_initializer=initializer)
                 if ages else None)
    if encoder == "mean":
      self.place_weights = self.add_weight(name="place_weights", shape=(length,),
                                           initializer="zeros")
    elif encoder == "gru":
      self.gru = tf.keras.layers.GRU(dim, go_backwards=True)
    else:
      self.readout = self.add_weight(name="readout", shape=(1, 1, dim),
                                     initializer=initializer)
      self.positions = tf.keras.layers.Embedding(length + 1, dim,
                                                 embeddings_initializer=initializer)
      self.attention = [tf.keras.layers.MultiHeadAttention(heads, dim // heads,
                                                           dropout=dropout)
                        for _ in range(blocks)]
      self.feed_forward = [tf.keras.Sequential([
          tf.keras.layers.Dense(dim, activation="relu"), tf.keras.layers.Dropout(dropout),
          tf.keras.layers.Dense(dim)]) for _ in range(blocks)]
      self.norms = [(tf.keras.layers.LayerNormalization(epsilon=1e-6),
                     tf.keras.layers.LayerNormalization(epsilon=1e-6)) for _ in range(blocks)]

  def vocabulary_table(self) -> layers.VocabularyTable:
    return layers.VocabularyTable(self.movies.embeddings, (features.MOVIE_ID,))

  def call(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    ids = tf.cast(inputs[_MOVIES][:, :self.length], tf.int32)
    present = ids != features.HISTORY_PADDING
    vectors = self.movies(tf.where(present, ids, 0))
    if self.ages is not None:
      buckets = tf.cast(tf.minimum(inputs[_AGES][:, :self.length] / _AGE_BUCKET_WIDTH,
                                   _AGE_BUCKETS - 1), tf.int32)
      vectors += self.ages(buckets)
    if self.encoder == "mean":
      weights = tf.where(present, tf.exp(tf.cast(self.place_weights, vectors.dtype)), 0.0)
      total = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-6)
      return tf.reduce_sum(vectors * (weights / total)[..., tf.newaxis], axis=1)
    if self.encoder == "gru":
      # Most recent first: going backwards reads the oldest first.
      return self.gru(vectors, mask=present, training=training)
    batch = tf.shape(ids)[0]
    readout = tf.tile(tf.cast(self.readout, vectors.dtype), [batch, 1, 1])
    x = tf.concat([readout, vectors], axis=1) + self.positions(tf.range(self.length + 1))
    present = tf.concat([tf.ones([batch, 1], tf.bool), present], axis=1)
    mask = present[:, tf.newaxis, :]
    for attention, feed_forward, (norm_1, norm_2) in zip(self.attention, self.feed_forward,
                                                         self.norms):
      x = norm_1(x + attention(x, x, attention_mask=mask, training=training))
      x = norm_2(x + feed_forward(x, training=training))
    return x[:, 0]
