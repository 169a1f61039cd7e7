"""Top-k metrics and baselines against hand-computed cases."""
import math

import numpy as np
import pytest

from evaluation import topk


def _log2(rank: int) -> float:
  return 1 / math.log2(rank + 1)


def test_one_user_by_hand():
  # Relevant 7 and 9; the list hits at ranks 2 and 4 of k = 5.
  result = topk.evaluate_lists([[1, 7, 3, 9, 4]], [{7, 9}], catalogue_size=10, k=5,
                               curve_ks=(1, 2, 5))
  ideal = _log2(1) + _log2(2)
  assert result.metrics["ndcg@5"] == pytest.approx((_log2(2) + _log2(4)) / ideal)
  assert result.metrics["recall@5"] == 1.0
  assert result.metrics["hit_rate@5"] == 1.0
  assert result.metrics["map@5"] == pytest.approx((1 / 2 + 2 / 4) / 2)
  assert result.metrics["mrr@5"] == 0.5
  assert result.curves["recall"] == [0.0, 0.5, 1.0]
  assert result.curves["ndcg"] == pytest.approx([0.0, _log2(2) / ideal,
                                                 (_log2(2) + _log2(4)) / ideal])
  assert result.coverage == 0.5 and result.users_scored == 1


def test_fewer_relevant_than_k_and_more_relevant_than_k():
  # User 0: one relevant movie, at rank 3. User 1: four relevant, k = 2, both hits.
  result = topk.evaluate_lists([[5, 6, 1], [1, 2, 3]], [{1}, {1, 2, 3, 4}],
                               catalogue_size=7, k=2, curve_ks=(3,))
  # User 0 scores 0 at k = 2; user 1's ideal list at k = 2 is two hits: NDCG 1.
  assert result.metrics["ndcg@2"] == pytest.approx(0.5)
  assert result.metrics["recall@2"] == pytest.approx((0 + 2 / 4) / 2)
  assert result.metrics["map@2"] == pytest.approx((0 + 1.0) / 2)
  assert result.metrics["hit_rate@2"] == 0.5
  # At k = 3, user 0 has its one movie at rank 3 (ideal: rank 1).
  assert result.curves["ndcg"][0] == pytest.approx((_log2(3) / _log2(1) + 1.0) / 2)
  assert result.curves["recall"][0] == pytest.approx((1 + 3 / 4) / 2)


def test_users_without_relevant_movies_are_counted_apart():
  result = topk.evaluate_lists([[1, 2], [3, 4]], [set(), {4}], catalogue_size=4, k=2,
                               curve_ks=(1, 2))
  assert result.users_scored == 1 and result.users_without_relevant == 1
  assert result.metrics["recall@2"] == 1.0 and result.metrics["mrr@2"] == 0.5
  assert result.coverage == 1.0  # every list counts for coverage
  empty = topk.evaluate_lists([[1]], [set()], catalogue_size=4, k=1, curve_ks=(1,))
  assert empty.metrics["ndcg@1"] == 0.0 and empty.users_scored == 0


def test_already_rated_share_and_short_lists():
  result = topk.evaluate_lists([[1, 2], [3]], [{9}, {3}], catalogue_size=10, k=2,
                               already_rated=[{2}, set()], curve_ks=(1, 2, 3))
  assert result.already_rated_share == pytest.approx(1 / 3)  # 1 of 3 served
  assert result.metrics["hit_rate@2"] == 0.5
  assert result.curves["recall"] == [0.5, 0.5, 0.5]
  with pytest.raises(ValueError, match="2 lists for 1 users"):
    topk.evaluate_lists([[1], [2]], [{1}], catalogue_size=3)


def test_rank_breaks_ties_by_the_lower_movie_and_leaves_out_excluded():
  scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1],
                     [1.0, 1.0, 1.0, 1.0, 1.0]])
  excluded = np.array([[False, False, False, True, False],
                       [True, True, True, True, False]])
  assert topk.rank(scores, excluded, 3).tolist() == [[1, 0, 2], [4, -1, -1]]


def test_popularity_counts_likes():
  users = np.array([0, 1, 2, 0])
  movies = np.array([2, 2, 1, 0])
  likes = np.array([1, 1, 0, 1])
  assert topk.popularity_scores(users, movies, likes, 4).tolist() == [1, 0, 2, 0]


def test_ease_matches_its_closed_form_and_finds_co_rated_movies():
  users = np.array([0, 0, 1, 1, 2, 2, 3])
  movies = np.array([0, 1, 0, 1, 2, 3, 0])
  x = topk.interactions(users, movies, num_users=4, num_movies=4)
  assert x.sum() == 7 and x[3].tolist() == [1, 0, 0, 0]
  weights = topk.ease_weights(x.T @ x, l2=0.5)
  p = np.linalg.inv(x.T @ x + 0.5 * np.eye(4))
  expected = np.eye(4) - p / np.diag(p)
  np.fill_diagonal(expected, 0)
  assert weights.dtype == np.float32
  np.testing.assert_allclose(weights, expected, atol=1e-6)
  # User 3 rated movie 0, which users 0 and 1 rated with movie 1: movie 1 ranks first.
  scores = x[3] @ weights
  assert topk.rank(scores[np.newaxis], x[3:4] > 0, 1).tolist() == [[1]]


def test_each_mean_has_its_95_percent_confidence_interval_over_users():
  # Three users: hits at rank 1, at rank 2, none (one relevant movie each).
  result = topk.evaluate_lists([[1, 2], [2, 1], [3, 4]], [{1}, {1}, {1}], catalogue_size=5,
                               k=2, curve_ks=(1,))
  per_user = {"ndcg@2": [1.0, _log2(2), 0.0], "mrr@2": [1.0, 0.5, 0.0],
              "hit_rate@2": [1.0, 1.0, 0.0]}
  for name, values in per_user.items():
    assert result.metrics[name] == pytest.approx(np.mean(values))
    assert result.confidence_95[name] == pytest.approx(
        1.96 * np.std(values, ddof=1) / np.sqrt(len(values)))
  assert set(result.confidence_95) == set(result.metrics)
  # One scored user: no spread to measure.
  one = topk.evaluate_lists([[1]], [{1}], catalogue_size=2, k=1, curve_ks=(1,))
  assert one.confidence_95["ndcg@1"] == 0.0
