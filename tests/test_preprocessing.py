"""The tf.Transform preprocessing_fn: vocabularies, OOV, decades, genres, id statistics, label."""
import numpy as np
import tensorflow as tf
from tfx.proto import transform_pb2
from tfx.utils import proto_utils

from models import data
from models import features
from models import preprocessing
from pipeline import configs
from pipeline import pipeline as pipeline_dsl

xf = features.transformed_name


def test_release_decade():
  titles = tf.constant(["Toy Story (1995)", "Amélie (2001) ", "Metropolis (1927)",
                        "unknown", "City Hall (1996) (V)", "1984 (1984)"])
  assert preprocessing.release_decade(titles).numpy().tolist() == [
      b"1990s", b"2000s", b"1920s", b"unknown", b"unknown", b"1980s"]


def test_vocabularies_map_known_ids_and_send_unseen_ones_to_oov(transformed_1m):
  output = transformed_1m.output
  for key in features.VOCAB_FEATURES + (features.MOVIE_DECADE, features.MOVIE_GENRES):
    size = output.vocabulary_size_by_name(preprocessing.vocabulary_name(key))
    assert size > 0
    assert preprocessing.vocabulary_size(output, key) == size + features.NUM_OOV_BUCKETS
  users = output.vocabulary_by_name(features.USER_ID)
  layer = output.transform_features_layer()
  known, unseen = users[0].decode(), "no-such-user"
  result = layer({features.USER_ID: tf.constant([[known], [unseen]]),
                  features.MOVIE_ID: tf.constant([["1"], ["1"]])})
  assert result[xf(features.USER_ID)].numpy().tolist() == [0, len(users)]
  # Only what it can: the ids, and the statistics looked up by them.
  assert set(result) == {xf(features.USER_ID), xf(features.MOVIE_ID)} | {
      xf(k) for _, rate, count in features.ID_STATISTICS for k in (rate, count)}


def _raw_values(rows, key):
  if key == features.MOVIE_DECADE:
    titles = tf.constant([row[features.MOVIE_TITLE][0] for row in rows])
    return preprocessing.release_decade(titles).numpy().tolist()
  return [str(v).encode() if not isinstance(v, bytes) else v
          for row in rows for v in row[key]]


def test_every_vocabulary_holds_each_analyzed_value_most_frequent_first(transformed_1m):
  """Exact and sketched vocabularies alike (features.SMALL_VOCAB_FIELDS): every value
  once, none missing, in order of count."""
  output = transformed_1m.output
  for key in features.VOCAB_FEATURES + (features.MOVIE_DECADE, features.MOVIE_GENRES):
    values, counts = np.unique(_raw_values(transformed_1m.raw, key), return_counts=True)
    count_of = dict(zip(values.tolist(), counts.tolist()))
    vocabulary = output.vocabulary_by_name(preprocessing.vocabulary_name(key))
    assert sorted(vocabulary) == sorted(count_of), key
    in_order = [count_of[value] for value in vocabulary]
    assert in_order == sorted(in_order, reverse=True), key


def test_every_field_is_an_index_within_its_vocabulary(transformed_1m):
  output, columns = transformed_1m.output, transformed_1m.columns
  for key in features.VOCAB_FEATURES + (features.MOVIE_DECADE,):
    ids = columns[xf(key)]
    assert ids.min() >= 0 and ids.max() < preprocessing.vocabulary_size(output, key)


def test_genres_are_padded_ids_one_per_genre(transformed_1m):
  genre_ids = transformed_1m.columns[xf(features.MOVIE_GENRES)]
  assert genre_ids.shape == (len(transformed_1m.raw), features.MAX_GENRES)
  vocabulary = transformed_1m.output.vocabulary_by_name(features.MOVIE_GENRES)
  for row, ids in zip(transformed_1m.raw[:200], genre_ids[:200]):
    present = ids[ids != features.GENRE_PADDING]
    assert [vocabulary[i] for i in present] == row[features.MOVIE_GENRES]
    assert np.all(ids[len(present):] == features.GENRE_PADDING)


def test_label_is_like(transformed_1m):
  likes = np.array([row[features.LABEL][0] for row in transformed_1m.raw])
  np.testing.assert_array_equal(transformed_1m.columns[features.LABEL], likes)


def test_vocabularies_are_computed_on_train_only(tmp_path):
  config = configs.PipelineConfig(dataset="100k", data_dir=str(tmp_path),
                                  output_dir=str(tmp_path / "run"))
  transform = next(c for c in pipeline_dsl.create_components(config)
                   if c.id == "Transform")
  splits = transform_pb2.SplitsConfig()
  proto_utils.json_to_proto(transform.exec_properties["splits_config"], splits)
  assert list(splits.analyze) == ["train"]
  # The Trainers apply the graph to every split themselves (test below).
  assert not splits.transform
  assert transform.outputs.get("transformed_examples") is None


def test_trainers_apply_the_graph_as_tf_transform_on_beam_does(transformed_1m, tmp_path):
  """models.data.load_examples, on the raw tf.Examples of the rows that
  tf.Transform analyzed and transformed on Beam, gives Beam's values, row for row."""
  path = str(tmp_path / "examples.gz")
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for serialized in transformed_1m.serialized:
      writer.write(serialized)
  ours = data.load_examples([path], transformed_1m.output)
  assert sorted(ours) == sorted(transformed_1m.columns)
  for key, beams in transformed_1m.columns.items():
    np.testing.assert_allclose(ours[key], beams, rtol=1e-6, err_msg=key)


def _raw_batch(rows):
  """Raw instance dicts as the dense [batch, 1] tensors the Transform layer takes."""
  batch = {key: tf.constant([row[key] for row in rows])
           for key in (features.USER_ID, features.MOVIE_ID)}
  batch[features.LABEL] = tf.constant([row[features.LABEL] for row in rows], tf.int64)
  return batch


def test_id_statistics_are_smoothed_like_rates_and_log_counts(transformed_1m):
  raw, columns = transformed_1m.raw, transformed_1m.columns
  labels = columns[features.LABEL]
  global_rate = labels.mean()
  prior = features.LIKE_RATE_PRIOR_COUNT
  for key, rate_key, count_key in features.ID_STATISTICS:
    ids = np.array([row[key][0] for row in raw])
    for value in ids[:20]:
      rated = ids == value
      expected = (labels[rated].sum() + prior * global_rate) / (rated.sum() + prior)
      np.testing.assert_allclose(columns[xf(rate_key)][rated], expected, rtol=1e-5)
      np.testing.assert_allclose(columns[xf(count_key)][rated], np.log1p(rated.sum()),
                                 rtol=1e-5)


def test_id_statistics_are_constants_of_the_analyzed_split(transformed_1m):
  """Labels seen at transform time (eval, test, serving) change nothing; none needed."""
  layer = transformed_1m.output.transform_features_layer()
  rows = transformed_1m.raw[:50]
  keys = [xf(k) for _, rate, count in features.ID_STATISTICS for k in (rate, count)]
  batch = _raw_batch(rows)
  as_analyzed = layer(batch)
  flipped = layer({**batch, features.LABEL: 1 - batch[features.LABEL]})
  without_label = layer({k: v for k, v in batch.items() if k != features.LABEL})
  for key in keys:
    # Beam's batched kernels and the layer's may round log1p differently in
    # the last float32 bit; the values must agree, not their bit patterns.
    np.testing.assert_allclose(as_analyzed[key].numpy(),
                               transformed_1m.columns[key][:50], rtol=1e-6)
    np.testing.assert_array_equal(flipped[key].numpy(), as_analyzed[key].numpy())
    np.testing.assert_array_equal(without_label[key].numpy(), as_analyzed[key].numpy())


def test_unseen_ids_get_the_global_like_rate_and_no_ratings(transformed_1m):
  layer = transformed_1m.output.transform_features_layer()
  result = layer({features.USER_ID: tf.constant([["no-such-user"]]),
                  features.MOVIE_ID: tf.constant([["no-such-movie"]])})
  global_rate = transformed_1m.columns[features.LABEL].mean()
  for _, rate_key, count_key in features.ID_STATISTICS:
    np.testing.assert_allclose(result[xf(rate_key)].numpy(), [global_rate], rtol=1e-5)
    assert result[xf(count_key)].numpy().tolist() == [0.0]


def test_rating_is_passed_through_as_a_training_target(transformed_1m):
  ratings = [row[features.USER_RATING][0] for row in transformed_1m.raw]
  np.testing.assert_array_equal(transformed_1m.columns[xf(features.USER_RATING)], ratings)
