"""Each rating's history (components/movielens_example_gen/histories.py): the user's
earlier ratings, strictly before it in time, from its own split or an earlier one."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import artifact_utils

from components.movielens_example_gen import histories
from models import features
from testing.examples import ingest

TRAIN, EVAL, TEST = 0, 1, 2
T0 = features.EARLIEST_RATING_TIME

# A hand-made log: (user, movie, seconds after T0, split). Under the random split a
# user's splits interleave in time, as here.
LOG = [
    ("a", "1", 100, TRAIN), ("a", "2", 100, TRAIN),  # the same second
    ("a", "3", 200, EVAL),
    ("a", "4", 300, TRAIN), ("a", "5", 300, TEST),  # the same second, two splits
    ("a", "6", 400, TRAIN),
    ("b", "1", 150, TRAIN), ("b", "7", 250, TEST),
    ("c", "8", 50, TEST),  # a user seen only in test
]


def _histories(length):
  users, movies, seconds, splits = (np.array(column) for column in zip(*LOG))
  return histories.RatingHistories.of(users.astype(object), movies.astype(object),
                                      seconds + T0, splits, length=length)


def _rows(built, log=LOG):
  users, _, seconds, splits = (np.array(column) for column in zip(*log))
  lengths, movie_ids, ages = built.lookup(users.astype(object), seconds + T0, splits)
  ends = np.cumsum(lengths)
  return [(list(movie_ids[end - n:end].astype(str)), list(ages[end - n:end]))
          for n, end in zip(lengths, ends)]


def test_every_boundary_of_a_hand_made_log():
  expected = [
      ([], []),  # a's first second: the other rating of that second is not seen
      ([], []),
      (["2", "1"], [100, 100]),  # eval sees train; ties in time by movie id, higher first
      (["2", "1"], [200, 200]),  # train does not see eval, nor test of the same second
      (["3", "2", "1"], [100, 200, 200]),  # test sees every split, not its own second
      (["4", "2", "1"], [100, 300, 300]),  # train: neither the eval nor the test rating
      ([], []),  # b's first rating: nothing of user a's
      (["1"], [100]),
      ([], []),  # c: no earlier rating at all
  ]
  assert _rows(_histories(length=10)) == expected


def test_a_history_keeps_the_most_recent():
  rows = _rows(_histories(length=2))
  assert rows[4] == (["3", "2"], [100, 200])
  assert rows[5] == (["4", "2"], [100, 300])
  assert _rows(_histories(length=0)) == [([], [])] * len(LOG)


def test_the_arrow_columns_and_a_saved_copy_hold_the_same(tmp_path):
  built = _histories(length=3)
  path = str(tmp_path / "histories.npz")
  built.save(path)
  loaded = histories.RatingHistories.load(path)
  assert _rows(loaded) == _rows(built)
  users, _, seconds, splits = (np.array(column) for column in zip(*LOG))
  movie_ids, ages = built.arrow_columns(users.astype(object), seconds + T0, splits)
  assert [([m.decode() for m in ids], list(a)) for ids, a in zip(
      movie_ids.to_pylist(), ages.to_pylist())] == _rows(built)


def test_a_user_without_ratings_is_an_error():
  with pytest.raises(ValueError, match="user 'z' has no rating"):
    _histories(10).lookup(np.array(["z"], object), np.array([T0 + 1]), np.array([TRAIN]))


def _read(examples, split):
  files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
  rows = []
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    rows.append((feature[features.USER_ID].bytes_list.value[0].decode(),
                 feature[features.MOVIE_ID].bytes_list.value[0].decode(),
                 feature[features.TIMESTAMP].int64_list.value[0],
                 [m.decode() for m in feature[features.HISTORY_MOVIE_IDS].bytes_list.value],
                 list(feature[features.HISTORY_AGE_SECONDS].int64_list.value)))
  return rows


def _ratings_file(folder):
  with open(os.path.join(folder, "u.data"), encoding="utf-8") as f:
    return [(u, m, int(t)) for u, m, _, t in (line.split("\t") for line in f if line.strip())]


@pytest.mark.parametrize("settings", [
    {"split": "random"},
    # A later month's span, split by time: the months before it are known history.
    {"split": "temporal", "span_months": 1, "span": 3},
], ids=["random", "temporal-span"])
def test_ingested_examples_carry_the_history_computed_the_long_way(
    synthetic_100k, tmp_path, settings):
  length = 5
  examples = ingest(synthetic_100k.folder, str(tmp_path / "examples"),
                    history_length=length, **settings)
  written = {split: _read(examples, split) for split in features.SPLIT_NAMES}
  level = {(u, m): index for index, split in enumerate(features.SPLIT_NAMES)
           for u, m, *_ in written[split]}
  first_time = min(t for rows in written.values() for _, _, t, _, _ in rows)
  # Every earlier rating of the file: known (level 0) if before the span.
  known = {}
  for u, m, t in _ratings_file(synthetic_100k.folder):
    if (u, m) in level or t < first_time:
      known.setdefault(u, []).append((m, t, level.get((u, m), 0)))
  checked = 0
  for index, split in enumerate(features.SPLIT_NAMES):
    for user, movie, time, history, ages in written[split]:
      earlier = sorted(((t, m) for m, t, s in known[user] if t < time and s <= index),
                       reverse=True)[:length]
      assert history == [m for _, m in earlier], (split, user, movie)
      assert ages == [time - t for t, _ in earlier], (split, user, movie)
      checked += bool(history)
  assert checked > 100
  assert not [name for name in os.listdir(examples.uri) if name.startswith(".histories")]
