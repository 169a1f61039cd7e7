"""The history-aware query tower (models/sequence.py, models/retrieval.py): training,
the latest history stored for serving, and export through the signatures."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from export import recommend
from export import saved_model
from models import features
from models import hparams as hp
from models import retrieval
from models import sequence
from models import training
from serving import contract

_MOVIES = features.transformed_name(features.HISTORY_MOVIE_IDS)
_AGES = features.transformed_name(features.HISTORY_AGE_SECONDS)
_USER = features.transformed_name(features.USER_ID)
_MOVIE = features.transformed_name(features.MOVIE_ID)


def _hparams(encoder, **overrides):
  return dataclasses.replace(hp.preset("retrieval", "best"), towers=1, epochs=2,
                             history_encoder=encoder, history_length=10, **overrides)


def _inputs(columns, rows):
  return {k: tf.constant(v[rows]) for k, v in columns.items() if k != features.LABEL}


def test_the_transform_graph_gives_each_rating_its_history_as_movie_indices(transformed_1m):
  columns = transformed_1m.columns
  movies = np.array(transformed_1m.output.vocabulary_by_name(features.MOVIE_ID), object)
  index_of = {movie: i for i, movie in enumerate(movies)}
  assert columns[_MOVIES].shape == (len(transformed_1m.raw), features.HISTORY_LENGTH)
  for row, raw in zip(range(0, len(transformed_1m.raw), 97), transformed_1m.raw[::97]):
    history = raw[features.HISTORY_MOVIE_IDS]
    expected = [index_of.get(m, len(movies)) for m in history]
    expected += [features.HISTORY_PADDING] * (features.HISTORY_LENGTH - len(history))
    assert list(columns[_MOVIES][row]) == expected
    hours = np.log1p(np.array(raw[features.HISTORY_AGE_SECONDS], np.float64) / 3600)
    np.testing.assert_allclose(columns[_AGES][row][:len(history)], hours, rtol=1e-5)
    assert not columns[_AGES][row][len(history):].any()


def test_a_users_stored_history_is_their_latest_ratings_most_recent_first():
  # users, movies, times: user 0 rated movies 5, 6, 7 (7 twice, as in two splits), user 1 one.
  tables = recommend.latest_histories(
      np.array([0, 0, 0, 1, 0, 2]), np.array([5, 7, 6, 3, 7, 4]),
      np.array([100, 300, 200, 50, 300, 10]), num_users=2)
  movies, hours = tables[_MOVIES], tables[_AGES]
  assert movies.shape == (3, features.HISTORY_LENGTH)
  assert list(movies[0][:4]) == [7, 6, 5, features.HISTORY_PADDING]
  np.testing.assert_allclose(hours[0][:3], np.log1p(np.array([0, 100, 200]) / 3600), rtol=1e-6)
  assert list(movies[1][:2]) == [3, features.HISTORY_PADDING]
  assert (movies[2] == features.HISTORY_PADDING).all()  # the unknown user's row
  assert not hours[2].any()


@pytest.mark.parametrize("encoder", ["mean", "gru", "attention"])
def test_an_empty_history_gives_a_finite_vector_and_the_history_matters(encoder):
  layer = sequence.HistoryEncoder(encoder, movie_rows=30, dim=8, length=5, ages=True)
  empty = np.full((2, features.HISTORY_LENGTH), features.HISTORY_PADDING, np.int32)
  some = empty.copy()
  some[1, :3] = [4, 9, 2]
  ages = np.zeros((2, features.HISTORY_LENGTH), np.float32)
  vectors = layer({_MOVIES: tf.constant(some), _AGES: tf.constant(ages)}).numpy()
  assert np.isfinite(vectors).all()
  assert not np.allclose(vectors[0], vectors[1])
  # Only the first `length` places are read.
  beyond = some.copy()
  beyond[1, 5:8] = [1, 2, 3]
  np.testing.assert_allclose(
      layer({_MOVIES: tf.constant(beyond), _AGES: tf.constant(ages)}).numpy(), vectors,
      rtol=1e-6)


@pytest.mark.parametrize("encoder", ["mean", "gru", "attention"])
def test_trains_and_serves_through_the_users_latest_history(encoder, transformed_1m,
                                                             tmp_path):
  columns = transformed_1m.columns
  hparams = _hparams(encoder, user_dropout=0.2)
  model = training.build_seeded(retrieval.build, transformed_1m.output, hparams, seed=0)
  assert model.uses_history
  train = {k: v[:4000] for k, v in columns.items()}
  held_out = {k: v[4000:4500] for k, v in columns.items()}
  history = training.train(model, "retrieval", hparams, train, held_out,
                           str(tmp_path / "logs"), seed=0)
  if encoder != "attention":  # which trains poorly this way (docs/experiments.md)
    assert history["loss"][-1] < history["loss"][0]
  assert np.isfinite(history["loss"]).all()
  expected = model(_inputs(columns, slice(4000, 4200))).numpy().ravel()
  saved_model.export(model, transformed_1m.output,
                     features.RETRIEVAL_RAW_FEATURES + features.HISTORY_RAW_FEATURES,
                     str(tmp_path / "export"), train)
  loaded = tf.saved_model.load(str(tmp_path / "export"))
  # serving_default: raw tf.Examples, each with its own history.
  served = loaded.signatures["serving_default"](
      examples=tf.constant(transformed_1m.serialized[4000:4200]))
  np.testing.assert_allclose(served[contract.ENGAGEMENT_SCORE].numpy(), expected, atol=1e-5)
  # predict_raw: a history, like genres, as one string of values joined by "|".
  raw_rows = transformed_1m.raw[4000:4200]
  raw_inputs = {}
  for key in features.RETRIEVAL_RAW_FEATURES + features.HISTORY_RAW_FEATURES:
    values = [row[key] for row in raw_rows]
    if key in (features.MOVIE_GENRES,) + features.HISTORY_RAW_FEATURES:
      raw_inputs[key] = tf.constant([b"|".join(str(v).encode() if isinstance(v, int) else v
                                               for v in row) for row in values])
    elif isinstance(values[0][0], int):
      raw_inputs[key] = tf.constant([v[0] for v in values], tf.int64)
    else:
      raw_inputs[key] = tf.constant([v[0] for v in values])
  served_raw = loaded.signatures["predict_raw"](**raw_inputs)
  np.testing.assert_allclose(served_raw[contract.ENGAGEMENT_SCORE].numpy(), expected,
                             atol=1e-5)
  # recommend: the query is the user's fields and their latest history in train.
  users = np.array(transformed_1m.output.vocabulary_by_name(features.USER_ID), object)[:5]
  top = loaded.signatures[contract.RECOMMEND](user_id=tf.constant(users.astype(bytes)),
                                              k=tf.constant(10))
  stored = recommend.latest_histories(train[_USER], train[_MOVIE],
                                      train[features.TIMESTAMP], len(users))
  inputs = {**{k: tf.gather(v, np.arange(5)) for k, v in model.recommender.user_features.items()
               if k not in features.HISTORY_INPUTS},
            **{k: tf.constant(v[:5]) for k, v in stored.items()}}
  queries, _ = model.query_vectors(inputs)
  movies = model.recommender._movies()  # pylint: disable=protected-access
  scores = tf.matmul(queries, model.candidate_vectors(movies), transpose_b=True).numpy()
  movie_ids = np.array(transformed_1m.output.vocabulary_by_name(features.MOVIE_ID), object)
  for row, user_scores in zip(top[contract.MOVIE_IDS].numpy(), scores):
    served_scores = user_scores[[list(movie_ids).index(m) for m in row if m]]
    assert np.all(np.diff(served_scores) <= 1e-5)


def test_served_query_mixes_the_query_with_and_without_the_history(transformed_1m):
  columns = transformed_1m.columns
  model = training.build_seeded(retrieval.build, transformed_1m.output,
                                _hparams("mean", history_weight=0.25, history_dropout=1.0,
                                         user_dropout=0.0),
                                seed=0)
  inputs = _inputs(columns, slice(0, 50))
  # pylint: disable=protected-access
  with_history = model._user_vector(inputs).numpy()
  without = model._user_vector(inputs, history_kept=0.0).numpy()
  served, _ = model.query_vectors(inputs)
  np.testing.assert_allclose(served.numpy(), 0.25 * with_history + 0.75 * without, atol=1e-6)
  assert not np.allclose(with_history, without)
  # Without the history, the query is the user's alone: another history changes nothing.
  shuffled = {**inputs, _MOVIES: tf.reverse(inputs[_MOVIES], axis=[0])}
  np.testing.assert_allclose(model._user_vector(shuffled, history_kept=0.0).numpy(), without,
                             atol=1e-6)
  # Training with every history hidden is training on empty histories (the mean of
  # none is zeros); with no user dropout (above), nothing else differs.
  empty = {**inputs, _MOVIES: tf.fill(tf.shape(inputs[_MOVIES]), features.HISTORY_PADDING)}
  labels = tf.constant(columns[features.LABEL][:50])
  hidden = model.pair_losses((inputs, labels), training=True)[0].numpy()
  np.testing.assert_allclose(hidden, model.pair_losses((empty, labels))[0].numpy(), rtol=1e-5)
