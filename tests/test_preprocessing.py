"""The tf.Transform preprocessing_fn: vocabularies, OOV, decades, genres, label."""
import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.utils import proto_utils

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
  assert set(result) == {xf(features.USER_ID), xf(features.MOVIE_ID)}  # only what it can


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
  splits = tfx.proto.SplitsConfig()
  proto_utils.json_to_proto(transform.exec_properties["splits_config"], splits)
  assert list(splits.analyze) == ["train"]
  assert list(splits.transform) == ["train", "eval", "test"]
