"""Top-k evaluation of what a user would be served: lists from a model's exported
`recommend` signature, and from baselines, against each user's liked test movies.

For every user in the test split, relevant = the test movies they liked; the
candidates are every movie they have not rated in train or eval. The model's
lists come from the same `recommend` signature TF Serving runs, with the model's
own exclusion of rated movies; the baselines rank the same candidates:
- popularity: the movies liked by most users in train and eval;
- EASE (Steck, 2019): an item-item model over who rated what in train and eval,
  its L2 weight chosen on the eval split among EASE_L2_GRID (fitted on train);
- the next movie: a first-order Markov chain over each user's train and eval
  ratings in time order, the simplest sequential recommender.
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Set, Union

import numpy as np
import scipy.sparse
import tensorflow as tf

from evaluation import topk
from models import features
from serving import contract

EASE_L2_GRID = (100.0, 300.0, 1000.0, 3000.0)
EASE_CHOICE_USERS = 1000  # eval users the L2 weight is chosen on
# Above this many test users, the lists are those of a fixed sample of them: every
# system scores each user's whole catalogue, and 25M's 162,000 users would take
# hours. The report gives each mean's 95% confidence interval.
MAX_SCORED_USERS = 10_000
LIST_LENGTH = max(topk.CURVE_KS)  # how many movies each list is read to
_READ_BATCH = 65_536
_USERS_PER_REQUEST = 64  # a DeepFM request scores every movie for each user


@dataclasses.dataclass
class Ratings:
  """One split's ratings as index arrays over shared user and movie vocabularies."""
  users: np.ndarray  # int64
  movies: np.ndarray  # int64
  likes: np.ndarray  # int64, 0 or 1
  times: Optional[np.ndarray] = None  # int64, seconds since the epoch


@dataclasses.dataclass
class Splits:
  """Every split's ratings, indexed into the vocabularies of all ids seen anywhere."""
  user_ids: np.ndarray  # object (bytes), by user index
  movie_ids: np.ndarray  # object (bytes), by movie index
  splits: Dict[str, Ratings]
  _sets: Dict = dataclasses.field(default_factory=dict, repr=False)

  def rated(self, *names: str) -> List[Set[int]]:
    """Per user index, the movies rated in the named splits (computed once)."""
    return self._per_user(("rated", names), False)

  def liked(self, name: str) -> List[Set[int]]:
    """Per user index, the movies liked in the named split (computed once)."""
    return self._per_user(("liked", (name,)), True)

  def _per_user(self, key, likes_only: bool) -> List[Set[int]]:
    if key not in self._sets:
      sets: List[Set[int]] = [set() for _ in self.user_ids]
      for name in key[1]:
        ratings = self.splits[name]
        for user, movie, like in zip(ratings.users, ratings.movies, ratings.likes):
          if like or not likes_only:
            sets[user].add(int(movie))
      self._sets[key] = sets
    return self._sets[key]


def read_splits(split_patterns: Dict[str, Union[str, Sequence[str]]]) -> Splits:
  """The (user, movie, like, time) of every example, from gzipped tf.Example files per
  split.

  Each split's files are those its pattern, or any of its patterns, matches.
  """
  spec = {features.USER_ID: tf.io.FixedLenFeature([], tf.string),
          features.MOVIE_ID: tf.io.FixedLenFeature([], tf.string),
          features.LABEL: tf.io.FixedLenFeature([], tf.int64),
          features.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64)}
  raw = {}
  for name, patterns in split_patterns.items():
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
    if not files:
      raise ValueError(f"no examples match {' or '.join(patterns)}")
    columns = {key: [] for key in spec}
    dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP")
               .batch(_READ_BATCH).map(lambda x: tf.io.parse_example(x, spec)))
    for batch in dataset:
      for key in spec:
        columns[key].append(batch[key].numpy())
    raw[name] = {key: np.concatenate(values) for key, values in columns.items()}
  user_ids, user_index = np.unique(np.concatenate(
      [r[features.USER_ID] for r in raw.values()]), return_inverse=True)
  movie_ids, movie_index = np.unique(np.concatenate(
      [r[features.MOVIE_ID] for r in raw.values()]), return_inverse=True)
  splits, start = {}, 0
  for name, columns in raw.items():
    end = start + len(columns[features.LABEL])
    splits[name] = Ratings(user_index[start:end], movie_index[start:end],
                           columns[features.LABEL], columns[features.TIMESTAMP])
    start = end
  return Splits(user_ids.astype(object), movie_ids.astype(object), splits)


def rated_pairs(splits: Splits, names: Sequence[str]):
  """The (user id, movie id) of every rating in the named splits, as two arrays."""
  users = np.concatenate([splits.user_ids[splits.splits[n].users] for n in names])
  movies = np.concatenate([splits.movie_ids[splits.splits[n].movies] for n in names])
  return users, movies


def _in_time_order(splits: Splits, names: Sequence[str]):
  """(users, movies) of the named splits' ratings, each user's oldest first (of
  ratings at the same second, the lower movie index first)."""
  ratings = [splits.splits[n] for n in names]
  users, movies, times = (np.concatenate([getattr(r, field) for r in ratings])
                          for field in ("users", "movies", "times"))
  order = np.lexsort((movies, times, users))
  return users[order], movies[order]


def latest_pairs(splits: Splits, names: Sequence[str], count: int):
  """The (user id, movie id) of each user's `count` latest ratings in the named
  splits (by time; of ratings at the same second, the later movie ids), as two
  arrays."""
  users, movies = _in_time_order(splits, names)
  # 1 for each user's latest rating, 2 for the one before, ...
  place_from_latest = np.searchsorted(users, users, side="right") - np.arange(len(users))
  kept = place_from_latest <= count
  return splits.user_ids[users[kept]], splits.movie_ids[movies[kept]]


def most_ratings(splits: Splits, names: Sequence[str]) -> int:
  """The most ratings any one user has in the named splits (0 for none)."""
  users = [splits.splits[n].users for n in names]
  return int(np.bincount(np.concatenate(users)).max()) if users else 0


def test_users(splits: Splits) -> np.ndarray:
  """The user indices that have a rating in the test split, in order."""
  return np.unique(splits.splits["test"].users)


def sample_users(users: np.ndarray, max_users: int = MAX_SCORED_USERS) -> np.ndarray:
  """`users`, or a fixed random sample of `max_users` of them, in order: the same
  users for every system, and for every run on the same data."""
  if len(users) <= max_users:
    return users
  return np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))


def _served_lists(ask: Callable, splits: Splits, users: np.ndarray) -> List[List[int]]:
  """The lists `ask(batch of user indices)` (a signature's answer) serves, as indices.

  Movies the model knows but the evaluation's data does not are dropped (they
  cannot be relevant); an empty place ("") ends a list.
  """
  index_of = {movie: i for i, movie in enumerate(splits.movie_ids)}
  lists = []
  for start in range(0, len(users), _USERS_PER_REQUEST):
    answer = ask(users[start:start + _USERS_PER_REQUEST])
    for row in answer[contract.MOVIE_IDS].numpy():
      lists.append([index_of[m] for m in row if m and m in index_of])
  return lists


def lists_from_signature(recommend: Callable, splits: Splits, users: np.ndarray,
                         length: int = LIST_LENGTH) -> List[List[int]]:
  """What `recommend(user_id, k)` (a SavedModel signature) serves each user, as indices."""
  return _served_lists(
      lambda batch: recommend(**{
          contract.USER_ID: tf.constant(splits.user_ids[batch].astype(bytes)),
          contract.K: tf.constant(length, tf.int32)}), splits, users)


def lists_from_history_signature(recommend_for_history: Callable, splits: Splits,
                                 users: np.ndarray, history: Sequence[str],
                                 length: int = LIST_LENGTH) -> List[List[int]]:
  """What `recommend_for_history(history, k)` serves each user as a visitor: their
  identity left out, the movies they rated in the `history` splits asked about."""
  rated = splits.rated(*history)

  def ask(batch):
    movies = [sorted(rated[u]) for u in batch]
    padded = np.full((len(movies), max(1, max(len(m) for m in movies))), b"", object)
    for row, ids in enumerate(movies):
      padded[row, :len(ids)] = splits.movie_ids[ids]
    return recommend_for_history(**{contract.HISTORY: tf.constant(padded.astype(bytes)),
                                    contract.K: tf.constant(length, tf.int32)})

  return _served_lists(ask, splits, users)


def _lists_from_scores(scores: np.ndarray, excluded: Sequence[Set[int]],
                       users: np.ndarray, length: int) -> List[List[int]]:
  """The best `length` unexcluded movies of each user's row of `scores`."""
  lists = []
  for start in range(0, len(users), _USERS_PER_REQUEST):
    batch = users[start:start + _USERS_PER_REQUEST]
    rows = np.broadcast_to(scores, (len(batch), scores.shape[-1])) if scores.ndim == 1 \
        else scores[batch]
    mask = np.zeros(rows.shape, bool)
    for row, user in enumerate(batch):
      mask[row, list(excluded[user])] = True
    lists += [[m for m in ranked if m >= 0] for ranked in topk.rank(rows, mask, length)]
  return lists


def popularity_lists(splits: Splits, users: np.ndarray, seen: Sequence[str],
                     length: int = LIST_LENGTH) -> List[List[int]]:
  """Most liked in the `seen` splits first, each user's rated movies left out."""
  return _lists_from_scores(_likes(splits, seen), splits.rated(*seen), users, length)


def _likes(splits: Splits, seen: Sequence[str]) -> np.ndarray:
  """Per movie, how many users liked it in the `seen` splits."""
  ratings = [splits.splits[name] for name in seen]
  return topk.popularity_scores(
      np.concatenate([r.users for r in ratings]), np.concatenate([r.movies for r in ratings]),
      np.concatenate([r.likes for r in ratings]), len(splits.movie_ids))


def _interactions(splits: Splits, seen: Sequence[str]) -> np.ndarray:
  ratings = [splits.splits[name] for name in seen]
  return topk.interactions(np.concatenate([r.users for r in ratings]),
                           np.concatenate([r.movies for r in ratings]),
                           len(splits.user_ids), len(splits.movie_ids))


def _ease_lists(interactions: np.ndarray, gram: np.ndarray, l2: float, rated: List[Set[int]],
                users: np.ndarray, length: int) -> List[List[int]]:
  weights = topk.ease_weights(gram, l2)
  scores = np.zeros(interactions.shape, np.float32)
  scores[users] = interactions[users] @ weights
  return _lists_from_scores(scores, rated, users, length)


def ease_lists(splits: Splits, users: np.ndarray, seen: Sequence[str], l2: float,
               length: int = LIST_LENGTH) -> List[List[int]]:
  """EASE fitted on the `seen` splits' interactions, each user's rated movies left out."""
  interactions = _interactions(splits, seen)
  return _ease_lists(interactions, interactions.T @ interactions, l2, splits.rated(*seen),
                     users, length)


def next_movie_counts(splits: Splits, seen: Sequence[str]) -> scipy.sparse.csr_matrix:
  """[movie, movie]: how many times a user rated the column's movie right after the
  row's, over the `seen` splits' ratings in time order (`_in_time_order`)."""
  return _next_movie_counts(*_in_time_order(splits, seen), len(splits.movie_ids))


def _next_movie_counts(users: np.ndarray, movies: np.ndarray,
                       num_movies: int) -> scipy.sparse.csr_matrix:
  """`next_movie_counts` of ratings already in time order."""
  same_user = users[1:] == users[:-1]
  return scipy.sparse.csr_matrix(
      (np.ones(same_user.sum(), np.float32),
       (movies[:-1][same_user], movies[1:][same_user])), shape=(num_movies, num_movies))


def next_movie_lists(splits: Splits, users: np.ndarray, seen: Sequence[str],
                     length: int = LIST_LENGTH) -> List[List[int]]:
  """The movies rated most often right after each user's latest one in the `seen`
  splits (`next_movie_counts`); among equal counts, and for a latest movie nobody
  rated anything after, the most liked first. Each user's rated movies left out."""
  rated_by, movies = _in_time_order(splits, seen)
  counts = _next_movie_counts(rated_by, movies, len(splits.movie_ids))
  ends = np.append(rated_by[1:] != rated_by[:-1], True)  # each user's latest rating
  latest = np.full(len(splits.user_ids), -1)
  latest[rated_by[ends]] = movies[ends]
  likes = _likes(splits, seen)
  scores = np.zeros((len(splits.user_ids), len(splits.movie_ids)), np.float32)
  followed = users[latest[users] >= 0]
  scores[followed] = counts[latest[followed]].toarray()
  scores[users] += likes / (likes.max() + 1)  # below 1: it orders equal counts only
  return _lists_from_scores(scores, splits.rated(*seen), users, length)


def choose_ease_l2(splits: Splits, grid: Sequence[float] = EASE_L2_GRID,
                   max_users: int = EASE_CHOICE_USERS) -> float:
  """The L2 weight whose EASE, fitted on train, ranks the eval split's likes best.

  Judged on at most `max_users` eval users (a seeded sample): enough to rank a
  handful of weights, at a fraction of scoring every user.
  """
  users = np.unique(splits.splits["eval"].users)
  if len(users) > max_users:
    users = np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))
  liked, rated = splits.liked("eval"), splits.rated("train")
  relevant = [liked[u] for u in users]
  interactions = _interactions(splits, ("train",))
  gram = interactions.T @ interactions

  def ndcg(l2):
    lists = _ease_lists(interactions, gram, l2, rated, users, topk.K)
    return topk.evaluate_lists(lists, relevant, len(splits.movie_ids), curve_ks=(topk.K,)
                               ).metrics[f"ndcg@{topk.K}"]

  return max(grid, key=ndcg)


def evaluate(lists: List[List[int]], splits: Splits, users: np.ndarray) -> topk.TopKResult:
  """Top-k metrics of `lists` (one per user of `users`) against the test likes."""
  liked, rated = splits.liked("test"), splits.rated("train", "eval")
  return topk.evaluate_lists(lists, [liked[u] for u in users], len(splits.movie_ids),
                             already_rated=[rated[u] for u in users])
