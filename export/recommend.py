"""Top-k movies for a user, computed inside the SavedModel (the `recommend` signature).

At export, `CandidateTables.from_train_split` builds from the transformed train
split: the user and movie vocabularies (index -> id), each user's and each
movie's side features, the movies each user rated in training, and the movies
by number of likes. `Recommender` turns a model and these tables into
`predict(user_id, movie_id)` (side features looked up by id) and
`recommend(user_id, k)`:

- a known user: every movie is scored by the model (CF: a TFRS BruteForce index
  over the movie embeddings; DeepFM: its user's and movies' parts computed once
  each, then combined for every pair), movies the user rated in training are
  excluded, and the k best are returned with their like probabilities;
- an unknown user (cold start): the k movies most liked in training (by number of
  likes, the order of the popularity baseline), scored by their smoothed like
  rate, never an error. Most of a span's ratings come from users it is the first
  span of (docs/continuous-training.md), so this list is much of what is served.
k must be between 1 and `contract.MAX_K`; anything else is an InvalidArgument
error that names the allowed range (TF Serving answers it with HTTP 400). A user
with fewer than k movies left unrated gets them all, then empty ids ("") with
score 0.
"""
import dataclasses
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models import features
from serving import contract

# Pseudo-ratings at the global like rate in the cold-start scores: a movie liked 3
# times out of 3 does not outrank one liked 900 times out of 1,000.
_COLD_START_PRIOR = 20.0
# A raw value no MovieLens id or text has, to ask the Transform graph about unseen ids.
UNSEEN_STRING = "\x00never-seen"

_USER = features.transformed_name(features.USER_ID)
_MOVIE = features.transformed_name(features.MOVIE_ID)


@dataclasses.dataclass
class CandidateTables:
  """What `recommend` needs besides the model; all numpy, indexed by vocabulary index."""
  user_ids: np.ndarray  # bytes, [num_users]
  movie_ids: np.ndarray  # bytes, [num_movies]
  user_features: Dict[str, np.ndarray]  # [num_users + 1, ...]: the last row for unseen ids
  movie_features: Dict[str, np.ndarray]  # [num_movies + 1, ...]: likewise
  rated_row_splits: np.ndarray  # int64, [num_users + 1]: user i rated ...
  rated_movies: np.ndarray  # int64: ... rated_movies[splits[i]:splits[i + 1]]
  cold_start_scores: np.ndarray  # float32, [num_movies]: smoothed like rate
  cold_start_likes: np.ndarray  # float32, [num_movies]: likes in training (the order)
  # Each user's latest ratings as history inputs, [num_users + 1, HISTORY_LENGTH]:
  # the last row, an unknown user's, empty. Only when the columns hold histories.
  user_histories: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_train_split(cls, train: Dict[str, np.ndarray],
                       tf_transform_output: tft.TFTransformOutput,
                       also_rated: Sequence[Dict[str, np.ndarray]] = ()) -> "CandidateTables":
    """Tables from the transformed train split (columns as training reads them).

    Each feature table has one row more than its vocabulary: the last row holds
    what the Transform graph makes of an id never seen in training. `recommend`
    excludes what each user rated in the train split and in `also_rated` (other
    splits, transformed alike).
    """
    user_ids = np.array(tf_transform_output.vocabulary_by_name(features.USER_ID), object)
    movie_ids = np.array(tf_transform_output.vocabulary_by_name(features.MOVIE_ID), object)
    users, movies = train[_USER], train[_MOVIE]
    # Every vocabulary id occurs in the train split (vocabularies come from it).
    first_of_user = np.unique(users, return_index=True)
    first_of_movie = np.unique(movies, return_index=True)

    unseen = unseen_id_features(tf_transform_output)

    def per_index(key, first, size):
      ids, rows = first
      column = train[key]
      table = np.zeros((size + 1,) + column.shape[1:], column.dtype)
      known = ids < size  # the OOV bucket is the last row, filled below
      table[ids[known]] = column[rows[known]]
      table[size] = unseen[key]
      return table

    user_features = {key: per_index(key, first_of_user, len(user_ids))
                     for key in features.USER_SIDE_INPUTS if key in train}
    movie_features = {key: per_index(key, first_of_movie, len(movie_ids))
                      for key in features.MOVIE_SIDE_INPUTS if key in train}

    rated_users = np.concatenate([users] + [split[_USER] for split in also_rated])
    rated_movies = np.concatenate([movies] + [split[_MOVIE] for split in also_rated])
    # Known users' known movies, by user, each pair once.
    known = (rated_users < len(user_ids)) & (rated_movies < len(movie_ids))
    pairs = np.unique(np.stack([rated_users[known], rated_movies[known]], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=len(user_ids))
    rated_row_splits = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    user_histories = {}
    if features.HISTORY_INPUTS[0] in train and features.TIMESTAMP in train:
      user_histories = latest_histories(
          np.concatenate([users] + [split[_USER] for split in also_rated]),
          np.concatenate([movies] + [split[_MOVIE] for split in also_rated]),
          np.concatenate([train[features.TIMESTAMP]]
                         + [split[features.TIMESTAMP] for split in also_rated]),
          len(user_ids))

    labels = train[features.LABEL].astype(np.float64)
    in_vocab = movies < len(movie_ids)
    likes = np.bincount(movies[in_vocab], weights=labels[in_vocab], minlength=len(movie_ids))
    ratings = np.bincount(movies[in_vocab], minlength=len(movie_ids))
    prior = labels.mean() if len(labels) else 0.5
    cold = (likes + _COLD_START_PRIOR * prior) / (ratings + _COLD_START_PRIOR)
    return cls(user_ids=user_ids, movie_ids=movie_ids, user_features=user_features,
               movie_features=movie_features, rated_row_splits=rated_row_splits,
               rated_movies=pairs[:, 1].astype(np.int64),
               cold_start_scores=cold.astype(np.float32),
               cold_start_likes=likes.astype(np.float32), user_histories=user_histories)


def latest_histories(users: np.ndarray, movies: np.ndarray, timestamps: np.ndarray,
                     num_users: int) -> Dict[str, np.ndarray]:
  """Each user's history inputs as of their latest rating among these (user, movie,
  time) indices: the latest HISTORY_LENGTH movies, most recent first (ties in time
  by movie index, higher first, as ingestion orders them), each rating once, and
  how long before the latest each was rated. Row `num_users` (an unknown user's)
  and unknown users' ratings are left empty."""
  length = features.HISTORY_LENGTH
  known = users < num_users
  pairs, first = np.unique(np.stack([users[known], movies[known]], axis=1), axis=0,
                           return_index=True)
  times = timestamps[known][first]
  order = np.lexsort((-pairs[:, 1], -times, pairs[:, 0]))  # by user, latest first
  users, movies, times = pairs[order, 0], pairs[order, 1], times[order]
  starts = np.searchsorted(users, np.arange(num_users))
  rank = np.arange(len(users)) - starts[users]
  kept = rank < length
  ids = np.full((num_users + 1, length), features.HISTORY_PADDING, np.int32)
  hours = np.zeros((num_users + 1, length), np.float32)
  ids[users[kept], rank[kept]] = movies[kept]
  latest = times[starts[users[kept]]]
  hours[users[kept], rank[kept]] = np.log1p((latest - times[kept]) / 3600.0)
  return {features.transformed_name(features.HISTORY_MOVIE_IDS): ids,
          features.transformed_name(features.HISTORY_AGE_SECONDS): hours}


def unseen_id_features(tf_transform_output: tft.TFTransformOutput) -> Dict[str, np.ndarray]:
  """The transformed features of a user and a movie that training never saw.

  Computed by the Transform graph itself, so out-of-vocabulary indices and any
  statistics' defaults are exactly what serving would compute.
  """
  raw = {}
  for key, spec in tf_transform_output.raw_feature_spec().items():
    if key == features.LABEL:
      continue
    value = tf.constant([[UNSEEN_STRING if spec.dtype == tf.string else -1]], spec.dtype)
    raw[key] = tf.sparse.from_dense(value) if isinstance(spec, tf.io.VarLenFeature) else value
  transformed = tf_transform_output.transform_raw_features(raw, drop_unused_features=True)
  return {k: v.numpy()[0] for k, v in transformed.items() if k != features.LABEL}


def same_length(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """The inputs, checked first to hold one value per example each.

  Without the check, a batch of one user and three movies would broadcast into
  three answers, and other mismatches fail deep inside the model with "Incompatible
  shapes". The failure is an InvalidArgument error (HTTP 400) naming both inputs.
  """
  (first, reference), *others = sorted(inputs.items())
  checks = [tf.debugging.assert_equal(
      tf.size(value), tf.size(reference),
      message=f"{key} and {first} must have the same length (one value per example)")
            for key, value in others]
  with tf.control_dependencies(checks):
    return {key: tf.identity(value) for key, value in inputs.items()}


def checked_k(k: tf.Tensor, largest: int) -> tf.Tensor:
  """`k`, checked first to be between 1 and `largest`: an InvalidArgument error
  (HTTP 400) that names the range. Ahead of everything that uses k: top_k would
  otherwise fail first on a negative or huge k, with its own message ("Need k >= 0,
  got -1")."""
  message = f"k must be between 1 and {largest}"
  with tf.control_dependencies([
      tf.debugging.assert_greater_equal(k, 1, message=message),
      tf.debugging.assert_less_equal(k, largest, message=message)]):
    return tf.identity(k)


def calibrated(model: tf.keras.Model, probabilities: tf.Tensor) -> tf.Tensor:
  """The model's probabilities as served: through the Platt scaling fitted on eval
  when the Trainer attached one (models/calibration.py)."""
  calibration = getattr(model, "calibration", None)
  return probabilities if calibration is None else calibration(probabilities)


def id_lookup(ids: np.ndarray) -> tf.lookup.StaticHashTable:
  """id -> vocabulary index; unknown ids -> len(ids), the out-of-vocabulary row."""
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(ids.astype(bytes)),
                                          tf.range(len(ids), dtype=tf.int64)),
      default_value=len(ids))


class Recommender(tf.Module):
  """`recommend(user_id, k)` and `predict(user_id, movie_id)`, saved with the model.

  A model that `factorizes` its score into `query_vectors`, `candidate_vectors`
  and `probability` (the CF model) ranks through a TFRS BruteForce index over
  every movie's candidate vector, built here, before saving. A model with
  `logits_of_every_pair(users, movies)` (DeepFM) scores a batch of users against
  every movie with it; any other model scores every (user, movie) pair in one
  batched call.
  """

  def __init__(self, model: tf.keras.Model, tables: CandidateTables):
    super().__init__(name="recommender")
    self.model = model
    self.num_users = len(tables.user_ids)
    self.num_movies = len(tables.movie_ids)
    # Unknown ids map to the tables' last row, as the Transform graph maps them.
    self.user_lookup = id_lookup(tables.user_ids)
    self.movie_lookup = id_lookup(tables.movie_ids)
    self.movie_ids = tf.constant(tables.movie_ids.astype(bytes))
    self.user_features = {k: tf.constant(v) for k, v in tables.user_features.items()}
    if getattr(model, "uses_history", False):
      # Looked up by user like the fields: the latest history is the user's now.
      self.user_features.update({k: tf.constant(v) for k, v in tables.user_histories.items()})
    self.movie_features = {k: tf.constant(v) for k, v in tables.movie_features.items()}
    self.rated = tf.RaggedTensor.from_row_splits(tf.constant(tables.rated_movies),
                                                 tf.constant(tables.rated_row_splits))
    self.cold_start_scores = tf.constant(tables.cold_start_scores)
    self.cold_start_likes = tf.constant(tables.cold_start_likes)
    self.index = None
    if getattr(model, "factorizes", False):
      import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top
      self.index = tfrs.layers.factorized_top_k.BruteForce(k=self.num_movies)
      self.index.index(model.candidate_vectors(self._movies()),
                       identifiers=tf.range(self.num_movies, dtype=tf.int64))

  def _movies(self) -> Dict[str, tf.Tensor]:
    """Every movie's model inputs, [num_movies, ...] (the OOV row left out)."""
    return {k: t[:self.num_movies] for k, t in self.movie_features.items()}

  def _users(self, user_index: tf.Tensor) -> Dict[str, tf.Tensor]:
    return {k: tf.gather(t, user_index) for k, t in self.user_features.items()}

  def _score_all(self, user_index: tf.Tensor) -> tf.Tensor:
    """Like probabilities of each user for every movie: [batch, num_movies]."""
    if self.index is not None:
      queries, offsets = self.model.query_vectors(self._users(user_index))
      scores, movies = self.index(queries, k=self.num_movies)  # best first
      scores = tf.gather(scores, tf.argsort(movies, axis=1), batch_dims=1)  # by movie
      return tf.cast(calibrated(self.model, self.model.probability(
          scores + offsets[:, tf.newaxis])), tf.float32)
    if hasattr(self.model, "logits_of_every_pair"):
      logits = self.model.logits_of_every_pair(self._users(user_index), self._movies())
      return tf.cast(calibrated(self.model, tf.sigmoid(logits)), tf.float32)
    batch = tf.shape(user_index)[0]
    inputs = {k: tf.repeat(v, self.num_movies, axis=0)
              for k, v in self._users(user_index).items()}
    for key, candidates in self._movies().items():
      multiples = tf.concat([[batch], tf.ones([tf.rank(candidates) - 1], tf.int32)], 0)
      inputs[key] = tf.tile(candidates, multiples)
    probabilities = calibrated(self.model, self.model(inputs))
    return tf.reshape(tf.cast(probabilities, tf.float32), [batch, self.num_movies])

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.USER_ID),
                                tf.TensorSpec([None], tf.string, name=contract.MOVIE_ID)],
               autograph=False)
  def predict(self, user_id: tf.Tensor, movie_id: tf.Tensor) -> tf.Tensor:
    """Like probability of each (user, movie), [batch]; side features from the tables."""
    checked = same_length({contract.USER_ID: user_id, contract.MOVIE_ID: movie_id})
    user_id, movie_id = checked[contract.USER_ID], checked[contract.MOVIE_ID]
    user_index = self.user_lookup.lookup(user_id)
    movie_index = self.movie_lookup.lookup(movie_id)
    inputs = {k: tf.gather(t, user_index) for k, t in self.user_features.items()}
    inputs.update({k: tf.gather(t, movie_index) for k, t in self.movie_features.items()})
    return tf.reshape(tf.cast(calibrated(self.model, self.model(inputs)), tf.float32), [-1])

  def _rated_mask(self, user_index: tf.Tensor) -> tf.Tensor:
    rated = tf.gather(self.rated, user_index)
    positions = tf.stack([rated.value_rowids(), rated.flat_values], axis=1)
    return tf.scatter_nd(positions, tf.ones_like(rated.flat_values, tf.bool),
                         tf.cast([tf.shape(user_index)[0], self.num_movies], tf.int64))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.USER_ID),
                                tf.TensorSpec([], tf.int32, name=contract.K)], autograph=False)
  def recommend(self, user_id: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The k best movies (ids and like probabilities) for each user, best first."""
    return self._top_k(user_id, k, min(contract.MAX_K, self.num_movies))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.USER_ID),
                                tf.TensorSpec([], tf.int32, name=contract.K)], autograph=False)
  def candidates(self, user_id: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
    """As `recommend`, for any k up to the catalogue: a first stage's candidates.

    Not a signature: a model that composes this one (export/two_stage.py) calls it
    on the restored object, to retrieve more movies than a client may ask for.
    """
    return self._top_k(user_id, k, self.num_movies)

  def _top_k(self, user_id: tf.Tensor, k: tf.Tensor, largest: int) -> Dict[str, tf.Tensor]:
    k = checked_k(k, largest)
    user_index = self.user_lookup.lookup(user_id)
    known = user_index < self.num_users
    user_index = tf.where(known, user_index, 0)  # scored, then replaced below
    scores = self._score_all(user_index)
    scores = tf.where(self._rated_mask(user_index), -np.inf, scores)
    known = known[:, tf.newaxis]
    # Cold start: ordered by likes, as "most popular" (a new user's first ratings are
    # of well-known movies), served with the smoothed like rate as the probability.
    cold_start_order = tf.broadcast_to(self.cold_start_likes, tf.shape(scores))
    top = tf.math.top_k(tf.where(known, scores, cold_start_order), k=k)
    served = tf.where(known, top.values, tf.gather(self.cold_start_scores, top.indices))
    # A user who rated all but a few movies: the places left over stay empty.
    empty = tf.math.is_inf(top.values)
    return {contract.MOVIE_IDS: tf.where(empty, "", tf.gather(self.movie_ids, top.indices)),
            contract.SCORES: tf.where(empty, 0.0, served)}
