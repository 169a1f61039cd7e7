"""The pushed form of a like model (export/served.py), saved and loaded back.

Built from the briefly trained CF and DeepFM SavedModels of `exported_models`, as
ServedModelBuilder builds it; every call goes through the reloaded SavedModel's
signatures, as TF Serving would make it. The models' own `recommend` leaves out
their training ratings; the pushed form must also leave out a "test split": here
the first movies each model offers some users, and movies an unknown user rated.
"""
import numpy as np
import pytest
import tensorflow as tf

from export import served
from models import features
from serving import contract

_USER = features.transformed_name(features.USER_ID)
_MOVIE = features.transformed_name(features.MOVIE_ID)
NEW_USER = b"rated-only-in-test"
MOST_RATINGS = 40  # more than any user has among the pairs excluded below


def _lists(recommend, user_ids, k=10):
  result = recommend(user_id=tf.constant(np.asarray(user_ids, object).astype(bytes)),
                     k=tf.constant(k))
  return result[contract.MOVIE_IDS].numpy(), result[contract.SCORES].numpy()


@pytest.fixture(scope="module", params=["cf", "deepfm"])
def pushed(request, exported_models, transformed_1m, tmp_path_factory):
  name = request.param
  model = tf.saved_model.load(str(exported_models / name / "1"))
  users = np.array(transformed_1m.output.vocabulary_by_name(features.USER_ID), object)
  catalogue = len(transformed_1m.output.vocabulary_by_name(features.MOVIE_ID))
  known = ((transformed_1m.columns[_USER] < len(users))
           & (transformed_1m.columns[_MOVIE] < catalogue))
  movies = np.array(transformed_1m.output.vocabulary_by_name(features.MOVIE_ID), object)
  trained = set(zip(users[transformed_1m.columns[_USER][known]],
                    movies[transformed_1m.columns[_MOVIE][known]]))
  some_users = users[:20]
  offered, _ = _lists(model.signatures[contract.RECOMMEND], some_users, k=5)
  cold_list, _ = _lists(model.signatures[contract.RECOMMEND], [NEW_USER], k=3)
  test = {(u, m) for u, row in zip(some_users, offered) for m in row}
  test |= {(NEW_USER, m) for m in cold_list[0]}
  excluded_users, excluded_movies = zip(*sorted(trained | test))
  folder = tmp_path_factory.mktemp(f"served-{name}") / "1"
  served.export_like_model(served.ServedLikeModel(
      model, served.UserRatings(np.array(excluded_users, object),
                                np.array(excluded_movies, object), movies),
      deeper=MOST_RATINGS, catalogue_size=catalogue), str(folder))
  return {"name": name, "model": model, "served": tf.saved_model.load(str(folder)).signatures,
          "users": users, "test": test, "excluded": trained | test}


def test_never_recommends_an_excluded_pair(pushed):
  users = np.concatenate([pushed["users"][:40], [NEW_USER]])
  ids, _ = _lists(pushed["served"][contract.RECOMMEND], users, k=contract.MAX_K)
  given = {(u, m) for u, row in zip(users, ids) for m in row if m}
  assert len(given) > 30 * contract.MAX_K
  assert not given & pushed["excluded"]
  # The model's own `recommend` does offer the test pairs: they were excluded here.
  own, _ = _lists(pushed["model"].signatures[contract.RECOMMEND], users, k=contract.MAX_K)
  assert {(u, m) for u, row in zip(users, own) for m in row} & pushed["test"]


def test_lists_are_the_models_without_the_excluded_in_the_same_order(pushed):
  users = np.concatenate([pushed["users"][:30], [NEW_USER, b"never-seen"]])
  own_ids, own_scores = _lists(pushed["model"].signatures[contract.RECOMMEND], users, k=60)
  ids, scores = _lists(pushed["served"][contract.RECOMMEND], users, k=20)
  for user, before, before_scores, after, after_scores in zip(
      users, own_ids, own_scores, ids, scores):
    kept = [(m, s) for m, s in zip(before, before_scores)
            if m and (user, m) not in pushed["test"]][:20]
    # A user who rated nearly every movie: the places left over stay empty.
    kept += [(b"", 0.0)] * (20 - len(kept))
    assert list(after) == [m for m, _ in kept], user
    np.testing.assert_allclose(after_scores, [s for _, s in kept], rtol=1e-6)


def test_the_other_signatures_are_the_models(pushed):
  assert set(pushed["served"]) == set(pushed["model"].signatures)
  users = pushed["users"][:5].astype(bytes)
  movies = np.array([b"1", b"2", b"3", b"4", b"5"])
  ours = pushed["served"][contract.PREDICT](user_id=tf.constant(users),
                                            movie_id=tf.constant(movies))
  theirs = pushed["model"].signatures[contract.PREDICT](user_id=tf.constant(users),
                                                         movie_id=tf.constant(movies))
  np.testing.assert_allclose(ours[contract.LIKE_PROBABILITY].numpy(),
                             theirs[contract.LIKE_PROBABILITY].numpy())


@pytest.mark.parametrize("k", [0, -1, contract.MAX_K + 1])
def test_k_out_of_range_names_the_range(pushed, k):
  with pytest.raises(tf.errors.InvalidArgumentError, match="k must be between 1 and"):
    _lists(pushed["served"][contract.RECOMMEND], pushed["users"][:1], k=k)
