"""The served two-stage recommender (export/two_stage.py), saved and loaded back.

Built from the briefly trained retrieval and DeepFM SavedModels of
`exported_models`, as the RecommenderBuilder component builds it; every call goes
through the reloaded SavedModel's signatures, as TF Serving would make it.
"""
import numpy as np
import pytest
import tensorflow as tf

from export import two_stage
from models import features
from serving import client as serving_client
from serving import contract
from tests import tf_serving_double

_USER = features.transformed_name(features.USER_ID)
_MOVIE = features.transformed_name(features.MOVIE_ID)
LIKE_WEIGHT = 0.5
POPULARITY_WEIGHT = 0.4
RETRIEVE_K = 60


def _rated_pairs(transformed):
  """The synthetic release's (user id, movie id) pairs, as raw id bytes."""
  users = np.array(transformed.output.vocabulary_by_name(features.USER_ID), object)
  movies = np.array(transformed.output.vocabulary_by_name(features.MOVIE_ID), object)
  known = ((transformed.columns[_USER] < len(users)) &
           (transformed.columns[_MOVIE] < len(movies)))
  return (users[transformed.columns[_USER][known]],
          movies[transformed.columns[_MOVIE][known]], users)


def _ratings_per_movie(movies):
  ids, counts = np.unique(movies.astype(bytes), return_counts=True)
  return dict(zip(ids, counts))


def _saved(exported_models, folder, excluded_users, excluded_movies, known_users,
           ratings_per_movie):
  recommender = two_stage.TwoStageRecommender(
      tf.saved_model.load(str(exported_models / "retrieval" / "1")),
      tf.saved_model.load(str(exported_models / "deepfm" / "1")),
      known_users, excluded_users, excluded_movies,
      np.array(list(ratings_per_movie), object), np.array(list(ratings_per_movie.values())),
      retrieve_k=RETRIEVE_K, like_weight=LIKE_WEIGHT, popularity_weight=POPULARITY_WEIGHT)
  two_stage.export(recommender, str(folder))
  return tf.saved_model.load(str(folder)).signatures


@pytest.fixture(scope="module")
def built(exported_models, transformed_1m, tmp_path_factory):
  """The evaluated model (no exclusions of its own) and the pushed one, which also
  excludes a "test split": the first 5 movies retrieval offers each of 20 users."""
  users, movies, known_users = _rated_pairs(transformed_1m)
  retrieval = tf.saved_model.load(str(exported_models / "retrieval" / "1"))
  some_users = known_users[:20]
  offered = retrieval.recommender.candidates(tf.constant(some_users.astype(bytes)),
                                             tf.constant(5))[contract.MOVIE_IDS].numpy()
  test_users = np.repeat(some_users, 5)
  test_movies = offered.reshape(-1).astype(object)
  folder = tmp_path_factory.mktemp("two-stage")
  ratings_per_movie = _ratings_per_movie(movies)
  evaluated = _saved(exported_models, folder / "evaluated", users, movies, known_users,
                     ratings_per_movie)
  # The pushed variant in TF Serving's layout: <base>/recommender/<version>.
  pushed = _saved(exported_models, folder / "serving" / "recommender" / "1",
                  np.concatenate([users, test_users]), np.concatenate([movies, test_movies]),
                  known_users, ratings_per_movie)
  return {"evaluated": evaluated, "pushed": pushed, "known_users": known_users,
          "serving_base": folder / "serving",
          "ratings_per_movie": ratings_per_movie,
          "rated": set(zip(users, movies)), "test": set(zip(test_users, test_movies)),
          "retrieval": retrieval,
          "deepfm": tf.saved_model.load(str(exported_models / "deepfm" / "1"))}


def _lists(signatures, user_ids, k=10):
  result = signatures[contract.RECOMMEND](user_id=tf.constant(user_ids.astype(bytes)),
                                          k=tf.constant(k))
  return result[contract.MOVIE_IDS].numpy(), result[contract.SCORES].numpy()


def test_never_recommends_an_excluded_pair(built):
  users = built["known_users"][:40]
  for name, excluded in (("evaluated", built["rated"]),
                         ("pushed", built["rated"] | built["test"])):
    ids, _ = _lists(built[name], users)
    served = {(user, movie) for user, row in zip(users, ids) for movie in row if movie}
    assert served, name
    assert not served & excluded, name


def test_pushed_model_differs_only_in_its_exclusions(built):
  users = built["known_users"][:40]
  evaluated, evaluated_scores = _lists(built["evaluated"], users)
  pushed, pushed_scores = _lists(built["pushed"], users)
  test = built["test"]
  for user, before, after, before_scores, after_scores in zip(
      users, evaluated, pushed, evaluated_scores, pushed_scores):
    kept = [m for m in before if (user, m) not in test]
    # The pushed list is the evaluated one without the newly excluded movies,
    # then the next ones in the same order.
    assert list(after[:len(kept)]) == kept
    assert np.allclose(after_scores[:len(kept)],
                       [s for m, s in zip(before, before_scores) if (user, m) not in test])
  assert any((user, m) in test for user, row in zip(users, evaluated) for m in row)


def test_orders_by_engagement_like_and_popularity_and_serves_like_probabilities(built):
  users = built["known_users"][:10]
  ids, scores = _lists(built["evaluated"], users)
  candidates = built["retrieval"].recommender.candidates(
      tf.constant(users.astype(bytes)), tf.constant(RETRIEVE_K))
  engagement = {(u, m): s for u, row, srow in zip(
      users, candidates[contract.MOVIE_IDS].numpy(), candidates[contract.SCORES].numpy())
                for m, s in zip(row, srow)}
  for user, row, served in zip(users, ids, scores):
    # A user who rated nearly every movie gets fewer than k ("" in the places left).
    served, row = served[row != b""], row[row != b""]
    like = built["deepfm"].signatures[contract.PREDICT](
        user_id=tf.constant([user] * len(row)), movie_id=tf.constant(row))
    like = like[contract.LIKE_PROBABILITY].numpy()
    np.testing.assert_allclose(served, like, rtol=1e-5)
    blended = [engagement[(user, m)] + LIKE_WEIGHT * np.log(p)
               + POPULARITY_WEIGHT * np.log1p(built["ratings_per_movie"].get(m, 0))
               for m, p in zip(row, like)]
    assert np.all(np.diff(blended) <= 1e-5), blended
    assert np.all((served > 0) & (served < 1))


def test_unknown_user_gets_retrievals_cold_start_list(built):
  ids, scores = _lists(built["evaluated"], np.array([b"never-seen-user"], object))
  cold = built["retrieval"].signatures[contract.RECOMMEND](
      user_id=tf.constant([b"never-seen-user"]), k=tf.constant(10))
  assert list(ids[0]) == list(cold[contract.MOVIE_IDS].numpy()[0])
  np.testing.assert_allclose(scores[0], cold[contract.SCORES].numpy()[0])


def test_like_models_signatures_pass_through(built):
  users = built["known_users"][:5].astype(bytes)
  movies = np.array([b"1", b"2", b"3", b"4", b"5"])
  for name in (contract.PREDICT,):
    ours = built["evaluated"][name](user_id=tf.constant(users), movie_id=tf.constant(movies))
    theirs = built["deepfm"].signatures[name](user_id=tf.constant(users),
                                              movie_id=tf.constant(movies))
    np.testing.assert_allclose(ours[contract.LIKE_PROBABILITY].numpy(),
                               theirs[contract.LIKE_PROBABILITY].numpy())
  assert set(two_stage.PASSED_THROUGH) < set(built["evaluated"])


def test_served_over_rest_and_grpc_as_in_process(built):
  # The TF Serving binary cannot be installed here: its test double serves the
  # SavedModel (tests/tf_serving_double.py), through the project's client.
  users = built["known_users"][:3]
  ids, scores = _lists(built["pushed"], users)
  with tf_serving_double.TFServingDouble(str(built["serving_base"])) as server:
    for url in (server.rest_url, server.grpc_url):
      client = serving_client.ServingClient.from_url(url, "recommender")
      try:
        for user, row, row_scores in zip(users, ids, scores):
          served = client.recommend(user.decode(), k=10)
          assert [m for m, _ in served] == [m.decode() for m in row], url
          np.testing.assert_allclose([s for _, s in served], row_scores, rtol=1e-5)
        assert 0 < client.predict(user_id=users[0].decode(), movie_id="1") < 1
      finally:
        client.close()


@pytest.mark.parametrize("k", [0, -1, contract.MAX_K + 1])
def test_k_out_of_range_names_the_range(built, k):
  with pytest.raises(tf.errors.InvalidArgumentError, match="k must be between 1 and"):
    _lists(built["evaluated"], built["known_users"][:1], k=k)


def test_retrieves_enough_for_the_user_with_most_later_ratings():
  from components import recommender_builder  # pylint: disable=g-import-not-at-top
  from evaluation import ranking  # pylint: disable=g-import-not-at-top

  def ratings(users):
    users = np.array(users, np.int64)
    return ranking.Ratings(users, np.zeros_like(users), np.zeros_like(users))
  splits = ranking.Splits(np.array([b"a", b"b"], object), np.array([b"m"], object), {
      "train": ratings([0] * 50), "eval": ratings([1] * 9), "test": ratings([0, 1, 1, 1])})
  # User b has 3 test ratings, the most of anyone outside train and eval.
  assert recommender_builder.retrieve_depth(splits, 200, 1000) == 203
  assert recommender_builder.retrieve_depth(splits, 200, 150) == 150  # the whole catalogue
