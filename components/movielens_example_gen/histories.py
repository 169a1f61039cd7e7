"""Each rating's history: the movies its user rated before it, strictly earlier in time.

Every example carries the user's latest `length` earlier ratings as two lists,
most recent first: `history_movie_ids` and `history_age_seconds` (how long before
this rating each was made). Built here, at ingestion, because it needs every
rating of the user in time order, which ingestion reads in one pass over the file
before Beam runs (the key pass the temporal split and the spans use already);
tf.Transform sees one example at a time (docs/data.md#history).

What a history may contain, so that nothing a model is judged on leaks into what
it learns from:
- strictly earlier ratings only: ratings at the same second do not see each other
  (MovieLens records many ratings per second as users rate a page at once; their
  order is unknown);
- only ratings of the same split or of a split before it (train < eval < test): a
  train rating's history holds train ratings only, an eval rating's train and
  eval, a test rating's every split. Under the random split a user's test ratings
  are scattered in time; without this rule they would sit in the histories of
  later train ratings, and a model would learn from the test split. Under the
  temporal split the rule changes nothing: every earlier rating is in an earlier
  or the same split;
- with spans, every rating of an earlier span counts as known (the models of later
  spans learned from them all), and nothing after the span.
"""
import dataclasses
import io
from typing import List, Tuple

import numpy as np
import pyarrow as pa

from models import features

# A rating's place in its user's timeline as one sortable integer: the user's code
# in the high bits, seconds since features.EARLIEST_RATING_TIME in the low 32
# (enough until the year 2131).
_TIME_BITS = 32


def _sort_keys(user_codes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
  seconds = timestamps.astype(np.int64) - features.EARLIEST_RATING_TIME
  return (user_codes.astype(np.int64) << _TIME_BITS) | seconds


@dataclasses.dataclass
class RatingHistories:
  """Every known rating, per split level in its users' time order, to look histories up.

  Level L's timeline holds the ratings of splits 0..L (split indices as
  features.SPLITS orders them: 0 train, 1 eval, 2 test), sorted by (user, time).
  """
  length: int
  user_ids: np.ndarray  # sorted distinct user ids (str)
  keys: List[np.ndarray]  # per level: _sort_keys of its ratings, ascending
  movie_ids: List[np.ndarray]  # per level: the movie id of each (bytes)
  timestamps: List[np.ndarray]  # per level: the time of each

  @classmethod
  def of(cls, user_ids: np.ndarray, movie_ids: np.ndarray, timestamps: np.ndarray,
         splits: np.ndarray, length: int, num_splits: int = len(features.SPLITS)
         ) -> "RatingHistories":
    """From every rating that may appear in a history, each with its split index
    (0 for ratings of earlier spans)."""
    users = user_ids.astype(str)
    distinct, codes = np.unique(users, return_inverse=True)
    keys = _sort_keys(codes, timestamps)
    timelines = ([], [], [])
    for level in range(num_splits):
      known = splits <= level
      # Ties in time (same user, same second) keep a fixed order by movie id; none
      # of them sees another.
      order = np.lexsort((movie_ids[known].astype(str), keys[known]))
      for timeline, values in zip(timelines, (keys, movie_ids, timestamps)):
        timeline.append(values[known][order])
    return cls(length, distinct, timelines[0],
               [ids.astype(bytes) for ids in timelines[1]], timelines[2])

  def lookup(self, user_ids: np.ndarray, timestamps: np.ndarray, splits: np.ndarray
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The histories of ratings (user, time, split index): (row lengths, movie ids,
    ages in seconds), the ids and ages of all rows one after the other, each row's
    most recent first."""
    users = user_ids.astype(str)
    codes = np.searchsorted(self.user_ids, users)
    found = (codes < len(self.user_ids)) & (
        self.user_ids[np.minimum(codes, len(self.user_ids) - 1)] == users)
    if not found.all():
      raise ValueError(f"user {users[~found][0]!r} has no rating among the histories")
    keys = _sort_keys(codes, timestamps)
    lengths = np.zeros(len(keys), np.int64)
    positions = np.zeros((len(keys), self.length), np.int64)
    levels = np.zeros(len(keys), np.int64)
    for level, timeline in enumerate(self.keys):
      rows = np.flatnonzero(splits == level)
      if not len(rows):
        continue
      # The first rating of the same user at the same second or later: every
      # position before it, back to the user's first, is strictly earlier.
      end = np.searchsorted(timeline, keys[rows], side="left")
      before = end[:, np.newaxis] - 1 - np.arange(self.length)[np.newaxis, :]
      clipped = np.maximum(before, 0)
      same_user = (before >= 0) & ((timeline[clipped] >> _TIME_BITS)
                                   == codes[rows][:, np.newaxis])
      lengths[rows] = same_user.sum(axis=1)
      positions[rows] = clipped
      levels[rows] = level
    # Each row's valid positions are a prefix (a user's ratings are contiguous).
    valid = np.arange(self.length)[np.newaxis, :] < lengths[:, np.newaxis]
    row_of, column = np.nonzero(valid)
    picked = positions[row_of, column]
    movie_ids = np.empty(len(picked), object)
    ages = np.empty(len(picked), np.int64)
    for level in np.unique(levels[row_of]):
      at = levels[row_of] == level
      movie_ids[at] = self.movie_ids[level][picked[at]]
      ages[at] = timestamps[row_of[at]] - self.timestamps[level][picked[at]]
    return lengths, movie_ids, ages

  def arrow_columns(self, user_ids: np.ndarray, timestamps: np.ndarray,
                    splits: np.ndarray) -> Tuple[pa.ListArray, pa.ListArray]:
    """`lookup`'s histories as the examples' two list columns (movie ids, ages)."""
    lengths, movie_ids, ages = self.lookup(user_ids, timestamps, splits)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return (pa.ListArray.from_arrays(offsets, pa.array(movie_ids.astype(bytes), pa.binary())),
            pa.ListArray.from_arrays(offsets, pa.array(ages, pa.int64())))

  def save(self, path: str) -> None:
    """Writes the timelines to `path` (any file system tf.io.gfile reaches)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    arrays = {"length": np.array(self.length), "user_ids": self.user_ids}
    for level in range(len(self.keys)):
      arrays.update({f"keys_{level}": self.keys[level],
                     f"movie_ids_{level}": self.movie_ids[level],
                     f"timestamps_{level}": self.timestamps[level]})
    buffer = io.BytesIO()  # np.savez reads back what it wrote: a GFile cannot
    np.savez(buffer, **arrays)
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(buffer.getvalue())

  @classmethod
  def load(cls, path: str) -> "RatingHistories":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path, "rb") as f:
      arrays = dict(np.load(io.BytesIO(f.read()), allow_pickle=False))
    levels = range(sum(name.startswith("keys_") for name in arrays))
    return cls(int(arrays["length"]), arrays["user_ids"],
               [arrays[f"keys_{level}"] for level in levels],
               [arrays[f"movie_ids_{level}"] for level in levels],
               [arrays[f"timestamps_{level}"] for level in levels])
