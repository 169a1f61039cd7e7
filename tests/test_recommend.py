"""Top-k recommendations inside the SavedModel: exclusions, cold start, k bounds, taste."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from export import recommend
from models import cf
from models import deepfm
from models import features
from models import hparams as hp
from models import training
from serving import contract
from tests import transform_fixture

BUILDERS = {"cf": cf.build, "deepfm": deepfm.build}
FAN_GENRE = b"Comedy"
NUM_FANS = 30


def _with_genre_fans(rows, seed=0):
  """The synthetic ratings plus users who like every Comedy and nothing else.

  Each fan rates a random half of the movies: 5 stars for a comedy, 1 otherwise.
  """
  rng = np.random.default_rng(seed)
  movies = {}
  for row in rows:
    movies.setdefault(row[features.MOVIE_ID][0], row)
  template = rows[0]
  fan_rows = []
  for fan in range(NUM_FANS):
    chosen = rng.choice(sorted(movies), size=len(movies) // 2, replace=False)
    for movie_id in chosen:
      movie = movies[movie_id]
      liked = FAN_GENRE in movie[features.MOVIE_GENRES]
      row = dict(template)
      row.update({k: movie[k] for k in (features.MOVIE_ID, features.MOVIE_TITLE,
                                         features.MOVIE_GENRES)})
      row[features.USER_ID] = [f"fan{fan}".encode()]
      row[features.USER_RATING] = [5.0 if liked else 1.0]
      row[features.LABEL] = [int(liked)]
      fan_rows.append(row)
  return rows + fan_rows, movies


@pytest.fixture(scope="module")
def fans(synthetic_1m):
  from components.movielens_example_gen import parsing  # pylint: disable=g-import-not-at-top
  table = parsing.read_release(synthetic_1m.folder, parsing.LAYOUTS["1m"])
  rows, movies = _with_genre_fans(transform_fixture.rows_from_table(table))
  return transform_fixture.run_transform(rows), movies


def _trained_recommender(model_name, transformed, epochs):
  hparams = dataclasses.replace(hp.preset(model_name, "best"), epochs=epochs,
                                early_stopping_patience=0)
  model = training.build_seeded(BUILDERS[model_name], transformed.output, hparams, seed=0)
  columns = transformed.columns
  training.train(model, model_name, hparams, columns, columns, "/tmp/recommend-test-logs",
                 seed=0)
  tables = recommend.CandidateTables.from_train_split(columns, transformed.output)
  return recommend.Recommender(model, tables), tables


@pytest.fixture(scope="module")
def recommenders(fans):
  transformed, _ = fans
  return {name: _trained_recommender(name, transformed, epochs)
          for name, epochs in (("cf", 12), ("deepfm", 6))}


def _rated_in_training(transformed, user_id: bytes):
  columns = transformed.columns
  users = np.array(transformed.output.vocabulary_by_name(features.USER_ID), object)
  movies = np.array(transformed.output.vocabulary_by_name(features.MOVIE_ID), object)
  user_index = list(users).index(user_id)
  mine = columns[features.transformed_name(features.USER_ID)] == user_index
  return set(movies[columns[features.transformed_name(features.MOVIE_ID)][mine]])


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_never_recommends_a_movie_rated_in_training(model_name, fans, recommenders):
  transformed, _ = fans
  recommender, tables = recommenders[model_name]
  users = [u for u in tables.user_ids[:40]] + [b"fan0", b"fan1"]
  result = recommender.recommend(tf.constant(users), tf.constant(contract.MAX_K))
  ids = result[contract.MOVIE_IDS].numpy()
  scores = result[contract.SCORES].numpy()
  assert ids.shape == scores.shape == (len(users), contract.MAX_K)
  for user, recommended, user_scores in zip(users, ids, scores):
    rated = _rated_in_training(transformed, user)
    movies = [m for m in recommended if m]
    assert not set(movies) & rated
    # Every unrated movie, up to k; the rest of the row is empty.
    assert len(set(movies)) == len(movies) == min(contract.MAX_K,
                                                  len(tables.movie_ids) - len(rated))
    assert np.all(user_scores[len(movies):] == 0)
    assert np.all(np.diff(user_scores[:len(movies)]) <= 0)  # best first
  assert np.all((scores >= 0) & (scores <= 1))
  assert any(not row[-1] for row in ids)  # some synthetic users rated almost everything


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_scores_are_the_models_like_probabilities(model_name, fans, recommenders):
  transformed, _ = fans
  recommender, tables = recommenders[model_name]
  user = tables.user_ids[3]
  result = recommender.recommend(tf.constant([user]), tf.constant(5))
  movie_index = {m: i for i, m in enumerate(tables.movie_ids)}
  user_index = list(tables.user_ids).index(user)
  inputs = {}
  for key, table in {**tables.user_features, **tables.movie_features}.items():
    if key in tables.user_features:
      inputs[key] = np.repeat(table[user_index][np.newaxis], 5, axis=0)
    else:
      inputs[key] = table[[movie_index[m] for m in result["movie_ids"].numpy()[0]]]
  direct = recommender.model({k: tf.constant(v) for k, v in inputs.items()}).numpy().ravel()
  # DeepFM's best preset computes in bfloat16, whose rounding depends on the batch.
  tolerance = 3e-3 if model_name == "deepfm" else 1e-5
  np.testing.assert_allclose(result["scores"].numpy()[0], direct, atol=tolerance)


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_a_comedy_fan_gets_comedies(model_name, fans, recommenders):
  transformed, movies = fans
  recommender, _ = recommenders[model_name]
  fans_ids = [f"fan{i}".encode() for i in range(NUM_FANS)]
  result = recommender.recommend(tf.constant(fans_ids), tf.constant(10))
  comedy_share = np.mean([[FAN_GENRE in movies[m][features.MOVIE_GENRES] for m in row]
                          for row in result["movie_ids"].numpy()])
  unrated_comedy_share = np.mean([FAN_GENRE in m[features.MOVIE_GENRES]
                                  for m in movies.values()])
  assert comedy_share >= 0.7, (comedy_share, unrated_comedy_share)


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_unknown_user_gets_the_most_liked_movies(model_name, recommenders, fans):
  transformed, _ = fans
  recommender, tables = recommenders[model_name]
  result = recommender.recommend(tf.constant([b"nobody", b"", b"x" * 10_000]),
                                 tf.constant(10))
  ids = result["movie_ids"].numpy()
  # Ordered by likes (the popularity baseline's order), not by the like rate served.
  most_liked = np.argsort(-tables.cold_start_likes, kind="stable")[:10]
  for row in ids:
    assert list(row) == list(tables.movie_ids[most_liked])
  np.testing.assert_allclose(result["scores"].numpy()[0],
                             tables.cold_start_scores[most_liked], rtol=1e-6)
  assert not np.array_equal(most_liked, np.argsort(-tables.cold_start_scores,
                                                   kind="stable")[:10])


def test_recommendations_are_deterministic(recommenders):
  recommender, tables = recommenders["deepfm"]
  users = tf.constant(tables.user_ids[:20])
  first = recommender.recommend(users, tf.constant(10))
  second = recommender.recommend(users, tf.constant(10))
  np.testing.assert_array_equal(first["movie_ids"].numpy(), second["movie_ids"].numpy())


@pytest.mark.parametrize("k", [0, -3, contract.MAX_K + 1])
def test_k_outside_the_allowed_range_is_a_clear_error(k, recommenders):
  recommender, tables = recommenders["cf"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"k must be between 1 and {contract.MAX_K}"):
    recommender.recommend(tf.constant(tables.user_ids[:1]), tf.constant(k))


def test_empty_batch_gives_empty_results(recommenders):
  recommender, _ = recommenders["deepfm"]
  result = recommender.recommend(tf.constant([], tf.string), tf.constant(10))
  assert result["movie_ids"].shape == (0, 10)


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_exported_model_serves_recommend_and_predict(model_name, fans, recommenders,
                                                     tmp_path):
  from export import signatures  # pylint: disable=g-import-not-at-top
  transformed, _ = fans
  recommender, tables = recommenders[model_name]
  raw_keys = {"cf": features.CF_RAW_FEATURES, "deepfm": features.DEEPFM_RAW_FEATURES}
  model = recommender.model
  tf.saved_model.save(model, str(tmp_path), signatures=signatures.make_serving_signatures(
      model, transformed.output, raw_keys[model_name], recommender))
  loaded = tf.saved_model.load(str(tmp_path)).signatures
  assert {"serving_default", "predict_raw", "predict", "recommend",
          "transform_features"} <= set(loaded)

  users = tf.constant(tables.user_ids[:8])
  served = loaded["recommend"](user_id=users, k=tf.constant(7))
  in_process = recommender.recommend(users, tf.constant(7))
  np.testing.assert_array_equal(served["movie_ids"].numpy(), in_process["movie_ids"].numpy())

  # predict (ids only, side features from the tables) = serving_default on full rows.
  rows = transformed.serialized[:50]
  by_examples = loaded["serving_default"](examples=tf.constant(rows))["like_probability"]
  by_ids = loaded["predict"](
      user_id=tf.constant([r[features.USER_ID][0] for r in transformed.raw[:50]]),
      movie_id=tf.constant([r[features.MOVIE_ID][0] for r in transformed.raw[:50]]),
  )["like_probability"]
  tolerance = 3e-3 if model_name == "deepfm" else 1e-5
  np.testing.assert_allclose(by_ids.numpy(), by_examples.numpy(), atol=tolerance)

  # Ids never seen in training still score, as the Transform graph maps them.
  unseen = loaded["predict"](user_id=tf.constant(["nobody", tables.user_ids[0]]),
                             movie_id=tf.constant([tables.movie_ids[0], "no-movie"]))
  probabilities = unseen["like_probability"].numpy()
  assert probabilities.shape == (2,) and np.all((probabilities > 0) & (probabilities < 1))


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_ratings_of_other_splits_are_excluded_and_nothing_else_changes(model_name, fans,
                                                                       recommenders):
  """The exclusion is the only difference between tables with and without the eval split."""
  transformed, _ = fans
  recommender, tables = recommenders[model_name]
  user = tables.user_ids[5]
  before = [m for m in recommender.recommend(tf.constant([user]), tf.constant(20))[
      contract.MOVIE_IDS].numpy()[0] if m]
  # "Eval" ratings of this user: three movies the plain tables would recommend.
  movie_index = {m: i for i, m in enumerate(tables.movie_ids)}
  rated_elsewhere = before[1:4]
  also = {features.transformed_name(features.USER_ID): np.full(
              3, list(tables.user_ids).index(user), np.int64),
          features.transformed_name(features.MOVIE_ID): np.array(
              [movie_index[m] for m in rated_elsewhere], np.int64)}
  with_eval = recommend.CandidateTables.from_train_split(transformed.columns,
                                                         transformed.output, [also])
  evaluated = recommend.Recommender(recommender.model, with_eval)
  after = [m for m in evaluated.recommend(tf.constant([user]), tf.constant(20))[
      contract.MOVIE_IDS].numpy()[0] if m]
  assert not set(after) & set(rated_elsewhere)
  assert [m for m in before if m not in rated_elsewhere] == after[:len(before) - 3]
