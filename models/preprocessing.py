"""The tf.Transform preprocessing_fn: raw MovieLens features to model inputs.

Vocabularies are computed on the train split only (Transform's analyze split), so
evaluation never leaks into them; ids first seen later map to the OOV bucket.
"""
import tensorflow as tf
import tensorflow_transform as tft

from models import features

_YEAR_AT_END = r"^.*\((\d{4})\)\s*$"  # "Toy Story (1995)", "Amélie (2001) "


def vocabulary_name(key: str) -> str:
  """Name of the vocabulary file tf.Transform writes for a feature."""
  return key


def release_decade(titles: tf.Tensor) -> tf.Tensor:
  """'Toy Story (1995)' -> '1990s'; titles without a year -> 'unknown'."""
  has_year = tf.strings.regex_full_match(titles, _YEAR_AT_END)
  years = tf.strings.to_number(
      tf.where(has_year, tf.strings.regex_replace(titles, _YEAR_AT_END, r"\1"), "0"),
      tf.int32)
  decades = tf.strings.join([tf.strings.as_string(years // 10 * 10), "s"])
  return tf.where(has_year, decades, "unknown")


def _as_strings(tensor: tf.Tensor) -> tf.Tensor:
  return tensor if tensor.dtype == tf.string else tf.strings.as_string(tensor)


def _padded_genre_ids(genre_ids: tf.SparseTensor) -> tf.Tensor:
  """Sparse genre ids -> [batch, MAX_GENRES], padded with GENRE_PADDING."""
  dense = tf.sparse.to_dense(genre_ids, default_value=features.GENRE_PADDING)
  dense = dense[:, :features.MAX_GENRES]
  padding = features.MAX_GENRES - tf.shape(dense)[1]
  dense = tf.pad(dense, [[0, 0], [0, padding]],
                 constant_values=features.GENRE_PADDING)
  return tf.ensure_shape(dense, [None, features.MAX_GENRES])


def id_statistics(ids: tf.Tensor, labels: tf.Tensor,
                  global_like_rate: tf.Tensor) -> tuple:
  """Vocabulary indices -> (smoothed like rate, log(1 + ratings)) on the analyzed split.

  tf.Transform's analyzers see the train split only, so no eval or test label
  reaches these numbers; once analyzed they are constants of the graph, looked up
  by index, and need no label. The rate is (likes + k * global rate) / (ratings + k)
  with k = LIKE_RATE_PRIOR_COUNT: an OOV id (never rated in train) gets the global rate
  and a count of 0.
  """
  keys, counts = tft.count_per_key(ids)
  like_keys, likes = tft.count_per_key(tf.boolean_mask(ids, labels > 0.5))
  # Every in-vocabulary index was rated in train; the OOV buckets follow them.
  size = tf.reduce_max(keys) + 1 + features.NUM_OOV_BUCKETS
  ratings_by_id = tf.scatter_nd(keys[:, tf.newaxis], tf.cast(counts, tf.float32), [size])
  likes_by_id = tf.scatter_nd(like_keys[:, tf.newaxis], tf.cast(likes, tf.float32), [size])
  ids = tf.minimum(ids, size - 1)
  ratings, liked = tf.gather(ratings_by_id, ids), tf.gather(likes_by_id, ids)
  prior = features.LIKE_RATE_PRIOR_COUNT
  rate = (liked + prior * global_like_rate) / (ratings + prior)
  return rate, tf.math.log1p(ratings)


def preprocessing_fn(inputs):
  """tf.Transform's entry point: raw feature dict -> transformed feature dict."""
  outputs = {}
  for key in features.VOCAB_FEATURES:
    outputs[features.transformed_name(key)] = tft.compute_and_apply_vocabulary(
        _as_strings(tf.squeeze(inputs[key], axis=1)),
        num_oov_buckets=features.NUM_OOV_BUCKETS,
        vocab_filename=vocabulary_name(key))
  outputs[features.transformed_name(features.MOVIE_DECADE)] = (
      tft.compute_and_apply_vocabulary(
          release_decade(tf.squeeze(inputs[features.MOVIE_TITLE], axis=1)),
          num_oov_buckets=features.NUM_OOV_BUCKETS,
          vocab_filename=vocabulary_name(features.MOVIE_DECADE)))
  genre_ids = tft.compute_and_apply_vocabulary(
      inputs[features.MOVIE_GENRES], num_oov_buckets=features.NUM_OOV_BUCKETS,
      vocab_filename=vocabulary_name(features.MOVIE_GENRES))
  outputs[features.transformed_name(features.MOVIE_GENRES)] = _padded_genre_ids(
      genre_ids)
  if features.LABEL in inputs:
    labels = tf.cast(tf.squeeze(inputs[features.LABEL], axis=1), tf.float32)
    outputs[features.LABEL] = labels
    global_like_rate = tft.mean(labels)
    for key, rate_key, count_key in features.ID_STATISTICS:
      rate, count = id_statistics(outputs[features.transformed_name(key)], labels,
                                  global_like_rate)
      outputs[features.transformed_name(rate_key)] = rate
      outputs[features.transformed_name(count_key)] = count
  if features.USER_RATING in inputs:  # a training target only, never a model input
    outputs[features.transformed_name(features.USER_RATING)] = tf.cast(
        tf.squeeze(inputs[features.USER_RATING], axis=1), tf.float32)
  return outputs


def vocabulary_size(tf_transform_output: tft.TFTransformOutput, key: str) -> int:
  """Embedding rows a field needs: its vocabulary plus the OOV buckets."""
  return (tf_transform_output.vocabulary_size_by_name(vocabulary_name(key))
          + features.NUM_OOV_BUCKETS)
