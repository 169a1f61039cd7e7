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


def _count_lookup(keys: tf.Tensor, counts_file: tf.Tensor) -> tuple:
  """tft.apply_vocabulary's lookup_fn for a vocabulary written with store_frequency:
  each key's count (0 for a key not in the file) and the number of keys. Lines are
  "<count> <key>"; MovieLens ids hold no spaces."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(counts_file, key_dtype=tf.string, key_index=1,
                                    value_dtype=tf.int64, value_index=0, delimiter=" "),
      default_value=0)
  return table.lookup(keys), table.size()


def _count_per_id(ids: tf.Tensor, counted: tf.Tensor, vocab_filename: str) -> tf.Tensor:
  """For every row's id, how often it occurs among `counted` in the analyzed split."""
  counts_file = tft.vocabulary(counted, store_frequency=True, vocab_filename=vocab_filename)
  return tf.cast(tft.apply_vocabulary(ids, counts_file, lookup_fn=_count_lookup),
                 tf.float32)


def id_statistics(key: str, ids: tf.Tensor, labels: tf.Tensor,
                  global_like_rate: tf.Tensor) -> tuple:
  """Raw ids -> (smoothed like rate, log(1 + ratings)) on the analyzed split.

  tf.Transform's analyzers see the train split only, so no eval or test label
  reaches these numbers; once analyzed they are constants of the graph (two
  frequency vocabularies per id, "<key>_ratings" and "<key>_likes"), looked up by
  id, and need no label. The rate is (likes + k * global rate) / (ratings + k)
  with k = LIKE_RATE_PRIOR_COUNT: an id never rated in train gets the global rate
  and a count of 0.

  Counting raw ids keeps every analyzer in tf.Transform's first phase; counting
  vocabulary indices (tft.count_per_key) took a second pass over the train split,
  most of Transform's time, for the same numbers (docs/performance.md).
  """
  ratings = _count_per_id(ids, ids, f"{key}_ratings")
  liked = _count_per_id(ids, tf.boolean_mask(ids, labels > 0.5), f"{key}_likes")
  prior = features.LIKE_RATE_PRIOR_COUNT
  rate = (liked + prior * global_like_rate) / (ratings + prior)
  return rate, tf.math.log1p(ratings)


def preprocessing_fn(inputs):
  """tf.Transform's entry point: raw feature dict -> transformed feature dict."""
  outputs = {}
  raw_ids = {key: _as_strings(tf.squeeze(inputs[key], axis=1))
             for key in features.VOCAB_FEATURES}
  for key, ids in raw_ids.items():
    outputs[features.transformed_name(key)] = tft.compute_and_apply_vocabulary(
        ids, num_oov_buckets=features.NUM_OOV_BUCKETS,
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
      rate, count = id_statistics(key, raw_ids[key], labels, global_like_rate)
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
