"""The served tables of who rated what (export/served.py's UserRatings) and EASE's
item-item weights (export/co_occurrence.py), against numpy on hand-made ratings."""
import numpy as np
import pytest
import tensorflow as tf

from components import recommender_builder
from evaluation import ranking
from evaluation import topk
from export import co_occurrence
from export import served

CATALOGUE = np.array([b"10", b"20", b"30", b"40", b"50"], object)


def _ragged(rows):
  return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)


def test_scores_are_the_history_times_the_weights():
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(5, 5)).astype(np.float32)
  model = co_occurrence.CoOccurrence(5, np.arange(5), weights)
  histories = [[0, 3], [], [4], [1, 2, 3, 4]]
  scores = model.scores(_ragged(histories)).numpy()
  assert scores.shape == (4, 6)
  for row, history in zip(scores, histories):
    np.testing.assert_allclose(row[:5], weights[history].sum(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(scores[:, 5], 0.0)


def test_each_movie_counts_once_and_movies_without_weights_not_at_all():
  weights = np.array([[0.0, 0.9, -0.5],
                      [0.3, 0.0, 0.8],
                      [0.1, 0.2, 0.0]], np.float32)
  # Rows and columns 0-2 are catalogue movies 4, 1, 0; catalogue movies 2 and 3
  # have none (not among the most rated), and 5 stands for no movie at all.
  model = co_occurrence.CoOccurrence(5, np.array([4, 1, 0]), weights)
  scores = model.scores(_ragged([[4], [4, 4, 3, 5], [1, 0, 2]])).numpy()
  expected = np.zeros((3, 6), np.float32)
  expected[0, [4, 1, 0]] = weights[0]
  expected[1] = expected[0]
  expected[2, [4, 1, 0]] = weights[1] + weights[2]
  np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_weights_fitted_on_the_history_splits_of_the_most_rated_movies():
  def ratings(users, movies):
    users, movies = np.array(users), np.array(movies)
    return ranking.Ratings(users, movies, np.ones_like(users))
  # Split movie ids are indexed by the splits; the catalogue orders them otherwise,
  # and does not hold movie b"99", rated in train.
  splits = ranking.Splits(
      np.array([b"u0", b"u1", b"u2"], object), np.array([b"10", b"20", b"30", b"99"], object),
      {"train": ratings([0, 0, 1, 1, 2], [0, 1, 1, 2, 3]), "eval": ratings([2, 2], [0, 1]),
       "test": ratings([0], [2])})
  catalogue = np.array([b"30", b"20", b"10"], object)
  movies, weights = recommender_builder.co_occurrence_weights(splits, catalogue, 1.0,
                                                              max_movies=2)
  # Ratings in train and eval: 20 three times, 10 twice, 30 once (test not counted).
  np.testing.assert_array_equal(movies, [1, 2])
  interactions = np.array([[1, 1], [1, 0], [1, 1]], np.float32)  # columns: 20, 10
  np.testing.assert_allclose(weights, topk.ease_weights(interactions.T @ interactions, 1.0),
                             rtol=1e-5)


def test_user_ratings_by_user_once_each_and_only_of_the_catalogue():
  ratings = served.UserRatings(
      np.array([b"a", b"b", b"a", b"a", b"c"], object),
      np.array([b"20", b"50", b"20", b"77", b"10"], object), CATALOGUE)
  rated = ratings.of_users(tf.constant([b"a", b"nobody", b"b", b"c"]))
  assert [sorted(row) for row in rated.to_list()] == [[1], [], [4], [0]]
  lists = tf.constant([[b"20", b"10", b""], [b"20", b"30", b"40"], [b"50", b"10", b"77"],
                       [b"10", b"", b"50"]])
  contained = ratings.contains(tf.constant([b"a", b"nobody", b"b", b"c"]), lists).numpy()
  np.testing.assert_array_equal(contained, [[True, False, True], [False, False, False],
                                            [True, False, False], [True, True, False]])


@pytest.mark.parametrize("ids,expected", [
    ([b"30", b"10", b"99", b"", b"10"], [2, 0, 3, 3, 0]),
    ([], []),
])
def test_indices_in_the_catalogue_and_past_it_when_absent(ids, expected):
  catalogue = np.array([b"10", b"20", b"30"], object)
  np.testing.assert_array_equal(served.indices_in(catalogue, np.array(ids, object)), expected)
