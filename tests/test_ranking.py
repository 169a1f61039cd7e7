"""The top-k evaluation's data and baselines on a hand-made release of three splits."""
import numpy as np
import tensorflow as tf

from evaluation import ranking
from models import features

# (user, movie, like, time) per split. Movie "m1" is liked by most in train and eval.
_SPLITS = {
    "train": [("u1", "m1", 1, 10), ("u1", "m2", 0, 30), ("u2", "m1", 1, 1),
              ("u3", "m3", 1, 5), ("u3", "m1", 1, 5), ("u2", "m4", 1, 2)],
    "eval": [("u1", "m3", 1, 20), ("u4", "m1", 1, 40)],
    "test": [("u1", "m4", 1, 50), ("u2", "m3", 1, 60), ("u2", "m5", 0, 61),
             ("u4", "m2", 0, 62)],
}


def _write_splits(folder):
  patterns = {}
  for split, rows in _SPLITS.items():
    path = folder / f"Split-{split}" / "data.gz"
    path.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
      for user, movie, like, time in rows:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            features.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[user.encode()])),
            features.MOVIE_ID: tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[movie.encode()])),
            features.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[like])),
            features.TIMESTAMP: tf.train.Feature(int64_list=tf.train.Int64List(
                value=[time])),
        })).SerializeToString())
    patterns[split] = str(path.parent / "*")
  return patterns


def test_splits_share_one_vocabulary_and_know_who_rated_and_liked_what(tmp_path):
  splits = ranking.read_splits(_write_splits(tmp_path))
  assert list(splits.user_ids) == [b"u1", b"u2", b"u3", b"u4"]
  assert list(splits.movie_ids) == [b"m1", b"m2", b"m3", b"m4", b"m5"]
  u1 = 0
  assert splits.rated("train", "eval")[u1] == {0, 1, 2}
  assert splits.liked("test")[u1] == {3}
  assert ranking.test_users(splits).tolist() == [0, 1, 3]  # u3 has no test rating


def test_latest_pairs_are_each_users_latest_in_the_named_splits(tmp_path):
  splits = ranking.read_splits(_write_splits(tmp_path))

  def latest(names, count):
    users, movies = ranking.latest_pairs(splits, names, count)
    by_user = {}
    for user, movie in zip(users, movies):
      by_user.setdefault(user.decode(), set()).add(movie.decode())
    return by_user

  # u1's eval rating (20) is later than m1 (10) in train, earlier than m2 (30);
  # u3 rated m1 and m3 in the same second: the later movie id is the latest.
  assert latest(("train", "eval"), 2) == {"u1": {"m2", "m3"}, "u2": {"m1", "m4"},
                                          "u3": {"m1", "m3"}, "u4": {"m1"}}
  assert latest(("train", "eval"), 1) == {"u1": {"m2"}, "u2": {"m4"}, "u3": {"m3"},
                                          "u4": {"m1"}}
  assert latest(("train",), 1) == {"u1": {"m2"}, "u2": {"m4"}, "u3": {"m3"}}
  assert latest(("test",), 5)["u2"] == {"m3", "m5"}


def test_popularity_ranks_unrated_movies_by_likes_and_scores_against_test_likes(tmp_path):
  splits = ranking.read_splits(_write_splits(tmp_path))
  users = ranking.test_users(splits)
  lists = ranking.popularity_lists(splits, users, ("train", "eval"), length=3)
  # Likes in train and eval: m1 4, m3 2, m4 1, m2 0, m5 0 (ties by the lower movie).
  assert lists == [[3, 4], [2, 1, 4], [2, 3, 1]]
  result = ranking.evaluate(lists, splits, users)
  assert result.already_rated_share == 0
  # u1's one test like (m4) first, u2's (m3) first; u4 liked nothing in test.
  assert result.users_scored == 2 and result.users_without_relevant == 1
  assert result.metrics["ndcg@10"] == 1.0 and result.metrics["hit_rate@10"] == 1.0


def test_ease_leaves_out_what_each_user_rated_and_chooses_a_weight_from_the_grid(tmp_path):
  splits = ranking.read_splits(_write_splits(tmp_path))
  users = ranking.test_users(splits)
  lists = ranking.ease_lists(splits, users, ("train", "eval"), l2=1.0, length=5)
  rated = splits.rated("train", "eval")
  for user, ranked in zip(users, lists):
    assert not set(ranked) & rated[user]
    assert sorted(ranked) == sorted(set(range(5)) - rated[user])  # every candidate
  assert ranking.choose_ease_l2(splits, grid=(1.0, 10.0)) in (1.0, 10.0)
  assert np.isfinite(ranking.evaluate(lists, splits, users).metrics["ndcg@10"])


def test_the_next_movie_follows_each_users_latest_in_time_order(tmp_path):
  splits = ranking.read_splits(_write_splits(tmp_path))
  m1, m2, m3, m4, m5 = range(5)
  counts = ranking.next_movie_counts(splits, ("train", "eval")).toarray()
  # u1: m1 (10), m3 (20, eval), m2 (30); u2: m1, m4; u3 rated m3 and m1 in the
  # same second: the lower movie index first, so m1 -> m3; u4 rated one movie.
  expected = np.zeros((5, 5))
  expected[m1, m3], expected[m3, m2], expected[m1, m4] = 2, 1, 1
  np.testing.assert_array_equal(counts, expected)
  assert counts[:, m5].sum() == 0  # test ratings are not counted
  users = ranking.test_users(splits)  # u1, u2, u4
  lists = ranking.next_movie_lists(splits, users, ("train", "eval"), length=4)
  # u4's latest, m1, was followed by m3 twice and m4 once; then the most liked.
  # Nobody rated anything after u1's latest (m2) or u2's (m4): the most liked
  # first, as popularity_lists ranks them.
  assert lists[2] == [m3, m4, m2, m5]
  assert lists[:2] == ranking.popularity_lists(splits, users[:2], ("train", "eval"), length=4)


def _results(**ndcg):
  return {"systems": {name: {"metrics": {"ndcg@10": value}} for name, value in ndcg.items()}}


def test_recommender_blessed_only_at_or_above_popularity():
  from components import ranking_evaluator  # pylint: disable=g-import-not-at-top
  assert ranking_evaluator.judge(_results(recommender=0.12, popularity=0.08), 0.005)["blessed"]
  assert ranking_evaluator.judge(_results(recommender=0.08, popularity=0.08), 0.005)["blessed"]
  verdict = ranking_evaluator.judge(_results(recommender=0.07, popularity=0.08), 0.005)
  assert not verdict["blessed"]
  assert verdict["checks"] == [{"check": "ndcg@10 0.0700 >= popularity's 0.0800",
                                "passed": False}]


def test_recommender_not_blessed_when_it_falls_too_far_below_the_last_blessed():
  from components import ranking_evaluator  # pylint: disable=g-import-not-at-top
  judge = ranking_evaluator.judge
  assert judge(_results(recommender=0.116, popularity=0.08, last_blessed=0.12), 0.005)["blessed"]
  verdict = judge(_results(recommender=0.114, popularity=0.08, last_blessed=0.12), 0.005)
  assert not verdict["blessed"]
  assert [c["passed"] for c in verdict["checks"]] == [True, False]
  assert "the last blessed model's 0.1200 - 0.005" in verdict["checks"][1]["check"]


def test_above_the_limit_a_fixed_sample_of_test_users_is_scored():
  users = np.arange(0, 50_000, 2)
  sample = ranking.sample_users(users, max_users=1_000)
  assert len(sample) == 1_000 and len(set(sample)) == 1_000
  assert set(sample) <= set(users) and list(sample) == sorted(sample)
  np.testing.assert_array_equal(sample, ranking.sample_users(users, max_users=1_000))
  # Spread over the users, not their first thousand.
  assert sample.min() < 5_000 and sample.max() > 45_000
  np.testing.assert_array_equal(ranking.sample_users(users[:800], max_users=1_000),
                                users[:800])
