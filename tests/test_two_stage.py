"""The served two-stage recommender (export/two_stage.py), saved and loaded back.

Built from the briefly trained retrieval and DeepFM SavedModels of
`exported_models`, as the RecommenderBuilder component builds it; every call goes
through the reloaded SavedModel's signatures, as TF Serving would make it.
"""
import numpy as np
import pytest
import tensorflow as tf

from evaluation import topk
from export import co_occurrence
from export import served
from export import two_stage
from models import features
from serving import client as serving_client
from serving import contract
from tests import tf_serving_double

_USER = features.transformed_name(features.USER_ID)
_MOVIE = features.transformed_name(features.MOVIE_ID)
LIKE_WEIGHT = 0.5
POPULARITY_WEIGHT = 0.4
CO_OCCURRENCE_WEIGHT = 2.0
RECENT_CO_OCCURRENCE_WEIGHT = 3.0
LATEST = 3  # each user's "latest" movies: their last pairs in the data's order
VISITOR_LIKE_WEIGHT = 0.3
RETRIEVE_K = 60
# A user the models never saw, whose ratings the pushed model holds.
NEW_USER = b"user-after-training"
NEW_USER_MOVIES = [b"1", b"2", b"3"]


def _rated_pairs(transformed):
  """The synthetic release's (user id, movie id) pairs, as raw id bytes."""
  users = np.array(transformed.output.vocabulary_by_name(features.USER_ID), object)
  movies = np.array(transformed.output.vocabulary_by_name(features.MOVIE_ID), object)
  known = ((transformed.columns[_USER] < len(users)) &
           (transformed.columns[_MOVIE] < len(movies)))
  return (users[transformed.columns[_USER][known]],
          movies[transformed.columns[_MOVIE][known]], users, movies)


def _ratings_per_movie(movies):
  ids, counts = np.unique(movies.astype(bytes), return_counts=True)
  return dict(zip(ids, counts))


def _ease(users, movies, catalogue):
  """EASE's weights over the whole catalogue, from these (user, movie) pairs."""
  user_index = np.unique(users.astype(bytes), return_inverse=True)[1]
  interactions = topk.interactions(user_index, served.indices_in(catalogue, movies),
                                   user_index.max() + 1, len(catalogue))
  return topk.ease_weights(interactions.T @ interactions, 300.0)


def _latest(users, movies):
  """Each user's last LATEST (user, movie) pairs, in the arrays' order."""
  latest = {}
  for user, movie in zip(users, movies):
    latest[user] = latest.get(user, [])[-(LATEST - 1):] + [movie]
  return latest


def _saved(exported_models, folder, excluded_users, excluded_movies, known_users,
           ratings_per_movie, catalogue, weights):
  latest = _latest(excluded_users, excluded_movies)
  recommender = two_stage.TwoStageRecommender(
      tf.saved_model.load(str(exported_models / "retrieval" / "1")),
      tf.saved_model.load(str(exported_models / "deepfm" / "1")),
      known_users, served.UserRatings(excluded_users, excluded_movies, catalogue),
      served.UserRatings(np.array([u for u, ms in latest.items() for _ in ms], object),
                         np.array([m for ms in latest.values() for m in ms], object),
                         catalogue),
      co_occurrence.CoOccurrence(len(catalogue), np.arange(len(catalogue)), weights),
      np.array(list(ratings_per_movie), object), np.array(list(ratings_per_movie.values())),
      retrieve_k=RETRIEVE_K, like_weight=LIKE_WEIGHT, popularity_weight=POPULARITY_WEIGHT,
      co_occurrence_weight=CO_OCCURRENCE_WEIGHT,
      recent_co_occurrence_weight=RECENT_CO_OCCURRENCE_WEIGHT,
      visitor_like_weight=VISITOR_LIKE_WEIGHT)
  two_stage.export(recommender, str(folder))
  return tf.saved_model.load(str(folder)).signatures


@pytest.fixture(scope="module")
def built(exported_models, transformed_1m, tmp_path_factory):
  """The evaluated model (no exclusions of its own) and the pushed one, which also
  excludes a "test split": the first 5 movies retrieval offers each of 20 users,
  and the ratings of a user the models never saw."""
  users, movies, known_users, catalogue = _rated_pairs(transformed_1m)
  retrieval = tf.saved_model.load(str(exported_models / "retrieval" / "1"))
  some_users = known_users[:20]
  offered = retrieval.recommender.candidates(tf.constant(some_users.astype(bytes)),
                                             tf.constant(5))[contract.MOVIE_IDS].numpy()
  test_users = np.concatenate([np.repeat(some_users, 5), [NEW_USER] * len(NEW_USER_MOVIES)])
  test_movies = np.concatenate([offered.reshape(-1), NEW_USER_MOVIES]).astype(object)
  folder = tmp_path_factory.mktemp("two-stage")
  ratings_per_movie = _ratings_per_movie(movies)
  weights = _ease(users, movies, catalogue)
  evaluated = _saved(exported_models, folder / "evaluated", users, movies, known_users,
                     ratings_per_movie, catalogue, weights)
  # The pushed variant in TF Serving's layout: <base>/recommender/<version>.
  pushed = _saved(exported_models, folder / "serving" / "recommender" / "1",
                  np.concatenate([users, test_users]), np.concatenate([movies, test_movies]),
                  known_users, ratings_per_movie, catalogue, weights)
  rated_by = {}
  for user, movie in zip(users, movies):
    rated_by.setdefault(user, set()).add(movie)
  return {"evaluated": evaluated, "pushed": pushed, "known_users": known_users,
          "serving_base": folder / "serving", "catalogue": catalogue, "weights": weights,
          "ratings_per_movie": ratings_per_movie, "rated_by": rated_by,
          "rated": set(zip(users, movies)), "test": set(zip(test_users, test_movies)),
          "latest": {"evaluated": _latest(users, movies),
                     "pushed": _latest(np.concatenate([users, test_users]),
                                       np.concatenate([movies, test_movies]))},
          "retrieval": retrieval,
          "deepfm": tf.saved_model.load(str(exported_models / "deepfm" / "1"))}


def _lists(signatures, user_ids, k=10):
  result = signatures[contract.RECOMMEND](user_id=tf.constant(user_ids.astype(bytes)),
                                          k=tf.constant(k))
  return result[contract.MOVIE_IDS].numpy(), result[contract.SCORES].numpy()


def _history_lists(signatures, histories, k=10):
  """recommend_for_history's lists for histories of movie ids (lists of bytes)."""
  width = max(1, max(len(h) for h in histories))
  padded = [list(h) + [b""] * (width - len(h)) for h in histories]
  result = signatures[contract.RECOMMEND_FOR_HISTORY](history=tf.constant(padded),
                                                      k=tf.constant(k))
  return result[contract.MOVIE_IDS].numpy(), result[contract.SCORES].numpy()


def _ease_scores(built, history):
  """Each catalogue movie's EASE score for a history of movie ids, by movie id."""
  index = served.indices_in(built["catalogue"], np.array(list(history), object))
  scores = built["weights"][index[index < len(built["catalogue"])]].sum(axis=0)
  return dict(zip(built["catalogue"], scores))


def test_never_recommends_an_excluded_pair(built):
  users = built["known_users"][:40]
  for name, excluded in (("evaluated", built["rated"]),
                         ("pushed", built["rated"] | built["test"])):
    ids, _ = _lists(built[name], users)
    offered = {(user, movie) for user, row in zip(users, ids) for movie in row if movie}
    assert offered, name
    assert not offered & excluded, name


def test_pushed_model_leaves_out_the_test_split(built):
  users = built["known_users"][:40]
  evaluated, _ = _lists(built["evaluated"], users)
  pushed, _ = _lists(built["pushed"], users)
  test = built["test"]
  # The evaluated model offers some of the test split's movies; the pushed one none.
  assert any((user, m) in test for user, row in zip(users, evaluated) for m in row)
  for user, after in zip(users, pushed):
    assert not {(user, m) for m in after if m} & test


@pytest.mark.parametrize("variant", ["evaluated", "pushed"])
def test_orders_by_engagement_like_popularity_and_co_occurrence_serves_like_probabilities(
    built, variant):
  # Each variant reads a user's history, and their latest movies, from the ratings it
  # holds: the pushed one's include the test split's.
  users = built["known_users"][:10]
  ids, scores = _lists(built[variant], users)
  reordered_by_recent = 0
  candidates = built["retrieval"].recommender.candidates(
      tf.constant(users.astype(bytes)), tf.constant(RETRIEVE_K))
  engagement = {(u, m): s for u, row, srow in zip(
      users, candidates[contract.MOVIE_IDS].numpy(), candidates[contract.SCORES].numpy())
                for m, s in zip(row, srow)}
  for user, row, row_scores in zip(users, ids, scores):
    # A user who rated nearly every movie gets fewer than k ("" in the places left).
    row_scores, row = row_scores[row != b""], row[row != b""]
    if not len(row):
      continue
    like = built["deepfm"].signatures[contract.PREDICT](
        user_id=tf.constant([user] * len(row)), movie_id=tf.constant(row))
    like = like[contract.LIKE_PROBABILITY].numpy()
    np.testing.assert_allclose(row_scores, like, rtol=1e-5)
    history = set(built["rated_by"][user])
    if variant == "pushed":
      history |= {m for u, m in built["test"] if u == user}
    ease = _ease_scores(built, history)
    recent = _ease_scores(built, built["latest"][variant][user])
    without_recent = np.array([
        engagement[(user, m)] + LIKE_WEIGHT * np.log(p)
        + POPULARITY_WEIGHT * np.log1p(built["ratings_per_movie"].get(m, 0))
        + CO_OCCURRENCE_WEIGHT * ease[m] for m, p in zip(row, like)])
    blended = without_recent + RECENT_CO_OCCURRENCE_WEIGHT * np.array([recent[m] for m in row])
    assert np.all(np.diff(blended) <= 1e-5), blended
    reordered_by_recent += bool(np.any(np.diff(without_recent) > 1e-5))
    assert np.all((row_scores > 0) & (row_scores < 1))
  # The latest movies' term is what orders some lists: without it, they are not.
  assert reordered_by_recent


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
  history = list(built["rated_by"][users[0]])[:3]
  history_ids, history_scores = _history_lists(built["pushed"], [history])
  with tf_serving_double.TFServingDouble(str(built["serving_base"])) as server:
    for url in (server.rest_url, server.grpc_url):
      client = serving_client.ServingClient.from_url(url, "recommender")
      try:
        for user, row, row_scores in zip(users, ids, scores):
          answer = client.recommend(user.decode(), k=10)
          assert [m for m, _ in answer] == [m.decode() for m in row], url
          np.testing.assert_allclose([s for _, s in answer], row_scores, rtol=1e-5)
        answer = client.recommend_for_history([m.decode() for m in history], k=10)
        assert [m for m, _ in answer] == [m.decode() for m in history_ids[0]], url
        np.testing.assert_allclose([s for _, s in answer], history_scores[0], rtol=1e-5)
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


def test_a_history_gets_eases_candidates_ranked_with_the_like_model(built):
  histories = [list(built["rated_by"][user])[:5] for user in built["known_users"][:6]]
  ids, scores = _history_lists(built["evaluated"], histories)
  for history, row, served_scores in zip(histories, ids, scores):
    assert len(set(row)) == len(row) == 10 and not set(row) & set(history)
    like = built["deepfm"].signatures[contract.PREDICT](
        user_id=tf.constant([two_stage.recommend.UNSEEN_STRING] * len(row)),
        movie_id=tf.constant(row))[contract.LIKE_PROBABILITY].numpy()
    np.testing.assert_allclose(served_scores, like, rtol=1e-5)
    ease = _ease_scores(built, history)
    order = [ease[m] + VISITOR_LIKE_WEIGHT * np.log(p) for m, p in zip(row, like)]
    assert np.all(np.diff(order) <= 1e-5), order
    # The candidates are EASE's best: none left out scores above the retrieved depth's.
    unseen = sorted((v for m, v in ease.items() if m not in history), reverse=True)
    assert min(ease[m] for m in row) >= unseen[RETRIEVE_K - 1] - 1e-5


def test_padding_and_unknown_movies_in_a_history_change_nothing(built):
  history = list(built["rated_by"][built["known_users"][0]])[:4]
  plain, plain_scores = _history_lists(built["evaluated"], [history])
  noisy, noisy_scores = _history_lists(built["evaluated"],
                                       [[b"no-such-movie"] + history + [b"", b""]])
  assert list(plain[0]) == list(noisy[0])
  np.testing.assert_allclose(plain_scores, noisy_scores, rtol=1e-6)


def test_an_empty_history_gets_the_cold_start_list(built):
  ids, scores = _history_lists(built["evaluated"], [[b""], [b"no-such-movie"]])
  cold = built["retrieval"].signatures[contract.RECOMMEND](
      user_id=tf.constant([b"never-seen-user"]), k=tf.constant(10))
  for row, row_scores in zip(ids, scores):
    assert list(row) == list(cold[contract.MOVIE_IDS].numpy()[0])
    np.testing.assert_allclose(row_scores, cold[contract.SCORES].numpy()[0])


def test_a_user_only_the_pushed_model_holds_is_served_from_their_history(built):
  # NEW_USER is in no model's table; the pushed model holds their ratings.
  users = np.array([NEW_USER, built["known_users"][0]], object)
  ids, scores = _lists(built["pushed"], users)
  as_history, history_scores = _history_lists(built["pushed"], [NEW_USER_MOVIES])
  assert list(ids[0]) == list(as_history[0])
  np.testing.assert_allclose(scores[0], history_scores[0])
  assert not set(ids[0]) & set(NEW_USER_MOVIES)
  # The known user in the same batch is served as alone.
  alone, _ = _lists(built["pushed"], users[1:])
  assert list(ids[1]) == list(alone[0])
  # The evaluated model does not hold them: the cold-start list.
  cold, _ = _lists(built["evaluated"], np.array([b"never-seen-user"], object))
  assert list(_lists(built["evaluated"], users[:1])[0][0]) == list(cold[0])


@pytest.mark.parametrize("k", [0, contract.MAX_K + 1])
def test_history_k_out_of_range_names_the_range(built, k):
  with pytest.raises(tf.errors.InvalidArgumentError, match="k must be between 1 and"):
    _history_lists(built["evaluated"], [[b"1"]], k=k)
