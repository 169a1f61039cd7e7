"""The tf.Transform preprocessing_fn: raw MovieLens features to model inputs.

Vocabularies are computed on the train split only (Transform's analyze split), so
evaluation never leaks into them; ids first seen later map to the OOV bucket.
"""
from typing import Dict

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


def _apply_vocabulary(values, key: str):
  """Values -> their index in the field's vocabulary, computed on the analyzed split;
  values not in it go to the OOV buckets.

  A field from a short fixed list (features.SMALL_VOCAB_FIELDS) is counted with
  tf.Transform's approximate vocabulary, a Misra-Gries sketch that is exact below
  its top_k distinct values: the same file, most frequent first, from one Beam
  combine instead of the exact vocabulary's count, sort and write stages, whose
  fixed cost was most of a small run's Transform (docs/performance.md).
  """
  if key in features.SMALL_VOCAB_FIELDS:
    return tft.experimental.compute_and_apply_approximate_vocabulary(
        values, top_k=features.SMALL_VOCAB_MAX_VALUES,
        num_oov_buckets=features.NUM_OOV_BUCKETS, vocab_filename=vocabulary_name(key))
  return tft.compute_and_apply_vocabulary(
      values, num_oov_buckets=features.NUM_OOV_BUCKETS, vocab_filename=vocabulary_name(key))


def _as_strings(tensor: tf.Tensor) -> tf.Tensor:
  return tensor if tensor.dtype == tf.string else tf.strings.as_string(tensor)


def _padded(values: tf.SparseTensor, width: int, padding) -> tf.Tensor:
  """Each row's first `width` values -> [batch, width], padded with `padding`."""
  dense = tf.sparse.to_dense(values, default_value=padding)[:, :width]
  dense = tf.pad(dense, [[0, 0], [0, width - tf.shape(dense)[1]]], constant_values=padding)
  return tf.ensure_shape(dense, [None, width])


def _padded_genre_ids(genre_ids: tf.SparseTensor) -> tf.Tensor:
  """Sparse genre ids -> [batch, MAX_GENRES], padded with GENRE_PADDING."""
  return _padded(genre_ids, features.MAX_GENRES,
                 tf.constant(features.GENRE_PADDING, genre_ids.dtype))


def _count_lookup(keys: tf.Tensor, counts_file: tf.Tensor) -> tuple:
  """tft.apply_vocabulary's lookup_fn for a vocabulary written with store_frequency:
  each key's count (0 for a key not in the file) and the number of keys. Lines are
  "<count> <key>"; MovieLens ids hold no spaces."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(counts_file, key_dtype=tf.string, key_index=1,
                                    value_dtype=tf.int64, value_index=0, delimiter=" "),
      default_value=0)
  return table.lookup(keys), table.size()


# The vocabulary file of every id's train-split counts, liked and not, all id fields in one.
ID_LABEL_COUNTS = "id_label_counts"


def _id_label_keys(key: str, ids: tf.Tensor, liked) -> tf.Tensor:
  """'user_id|1|42': the field, "1" for a like or "0", and the raw id."""
  return tf.strings.join([key, liked, ids], separator="|")


def id_statistics(raw_ids: Dict[str, tf.Tensor], labels: tf.Tensor,
                  global_like_rate: tf.Tensor) -> Dict[str, tuple]:
  """Per features.ID_STATISTICS field: raw ids -> (smoothed like rate, log(1 + ratings)).

  tf.Transform's analyzers see the train split only, so no eval or test label
  reaches these numbers; once analyzed they are constants of the graph (one
  frequency vocabulary, ID_LABEL_COUNTS, of the keys "<field>|<liked>|<id>"),
  looked up by id, and need no label. The rate is (likes + k * global rate) /
  (ratings + k) with k = LIKE_RATE_PRIOR_COUNT: an id never rated in train gets
  the global rate and a count of 0.

  Counting raw ids keeps every analyzer in tf.Transform's first phase; counting
  vocabulary indices (tft.count_per_key) took a second pass over the train split,
  most of Transform's time, for the same numbers. One vocabulary for all the counts
  rather than one per count: each analyzer adds Beam stages, whose fixed cost was
  most of a small run's Transform (docs/performance.md).
  """
  liked = tf.where(labels > 0.5, "1", "0")
  counted = tf.concat([_id_label_keys(key, raw_ids[key], liked)
                       for key, _, _ in features.ID_STATISTICS], axis=0)
  counts_file = tft.vocabulary(counted, store_frequency=True, vocab_filename=ID_LABEL_COUNTS)
  prior = features.LIKE_RATE_PRIOR_COUNT
  statistics = {}
  for key, _, _ in features.ID_STATISTICS:
    ids = raw_ids[key]
    keys = tf.stack([_id_label_keys(key, ids, "1"), _id_label_keys(key, ids, "0")])
    likes, dislikes = tf.unstack(tf.cast(
        tft.apply_vocabulary(keys, counts_file, lookup_fn=_count_lookup), tf.float32))
    ratings = likes + dislikes
    statistics[key] = ((likes + prior * global_like_rate) / (ratings + prior),
                       tf.math.log1p(ratings))
  return statistics


def history_inputs(inputs, movie_vocabulary) -> dict:
  """The user's earlier movies as movie vocabulary indices, and how long before
  each was rated as log(1 + hours); padded (models/sequence.py)."""
  movies = tft.apply_vocabulary(_as_strings(inputs[features.HISTORY_MOVIE_IDS]),
                                movie_vocabulary, num_oov_buckets=features.NUM_OOV_BUCKETS)
  ages = inputs[features.HISTORY_AGE_SECONDS]
  hours = tf.SparseTensor(ages.indices, tf.math.log1p(tf.cast(ages.values, tf.float32) / 3600.0),
                          ages.dense_shape)
  return {features.transformed_name(features.HISTORY_MOVIE_IDS): _padded(
              movies, features.HISTORY_LENGTH, tf.constant(features.HISTORY_PADDING, tf.int64)),
          features.transformed_name(features.HISTORY_AGE_SECONDS): _padded(
              hours, features.HISTORY_LENGTH, 0.0)}


def preprocessing_fn(inputs):
  """tf.Transform's entry point: raw feature dict -> transformed feature dict."""
  outputs = {}
  # The user fields the release has (the schema leaves out what it lacks).
  raw_ids = {key: _as_strings(tf.squeeze(inputs[key], axis=1))
             for key in features.VOCAB_FEATURES if key in inputs}
  for key, ids in raw_ids.items():
    if key != features.MOVIE_ID:
      outputs[features.transformed_name(key)] = _apply_vocabulary(ids, key)
  # One movie vocabulary, for the movie rated and the movies of its history.
  movie_vocabulary = tft.vocabulary(raw_ids[features.MOVIE_ID],
                                    vocab_filename=vocabulary_name(features.MOVIE_ID))
  outputs[features.transformed_name(features.MOVIE_ID)] = tft.apply_vocabulary(
      raw_ids[features.MOVIE_ID], movie_vocabulary, num_oov_buckets=features.NUM_OOV_BUCKETS)
  if features.HISTORY_MOVIE_IDS in inputs:
    outputs.update(history_inputs(inputs, movie_vocabulary))
  # Not a model input: which of a user's ratings is the latest (export/recommend.py).
  if features.TIMESTAMP in inputs:
    outputs[features.TIMESTAMP] = tf.squeeze(inputs[features.TIMESTAMP], axis=1)
  outputs[features.transformed_name(features.MOVIE_DECADE)] = _apply_vocabulary(
      release_decade(tf.squeeze(inputs[features.MOVIE_TITLE], axis=1)),
      features.MOVIE_DECADE)
  genre_ids = _apply_vocabulary(inputs[features.MOVIE_GENRES], features.MOVIE_GENRES)
  outputs[features.transformed_name(features.MOVIE_GENRES)] = _padded_genre_ids(
      genre_ids)
  if features.LABEL in inputs:
    labels = tf.cast(tf.squeeze(inputs[features.LABEL], axis=1), tf.float32)
    outputs[features.LABEL] = labels
    statistics = id_statistics(raw_ids, labels, global_like_rate=tft.mean(labels))
    for key, rate_key, count_key in features.ID_STATISTICS:
      rate, count = statistics[key]
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
