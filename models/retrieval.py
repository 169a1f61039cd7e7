"""Retrieval with TensorFlow Recommenders: which movies a user will engage with next.

The like models answer "if this user watched this movie, would they like it?";
ranked over the whole catalogue by that answer, obscure films with a few high
ratings come first. This model answers the question a recommender starts with,
"which movies will this user watch?", learned from implicit feedback: every
rating is an interaction, and each batch's other movies are its negatives
(`tfrs.tasks.Retrieval`, in-batch softmax). Its scores rank the whole catalogue
through a factorized top-k index (export/recommend.py); the like model then ranks
the few hundred it retrieves (export/two_stage.py).
"""
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from models import features
from models import hparams as hp
from models import layers
from models import sequence

_MOVIE = features.transformed_name(features.MOVIE_ID)
_MOVIE_RATING_COUNT = features.transformed_name(features.MOVIE_RATING_COUNT)


class FieldEmbedding(tf.keras.layers.Layer):
  """One categorical field (or a padded list of them, mean-pooled) to a vector."""

  def __init__(self, key: str, size: int, dim: int, **kwargs):
    super().__init__(name=f"{key}_embedding", **kwargs)
    self.field = key
    self.key = features.transformed_name(key)
    self.table = tf.keras.layers.Embedding(
        size, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    ids = inputs[self.key]
    if ids.shape.rank == 1:
      return self.table(ids)
    present = tf.cast(ids != features.GENRE_PADDING, self.table.dtype)[..., tf.newaxis]
    pooled = tf.reduce_sum(self.table(tf.maximum(ids, 0)) * present, 1)
    return pooled / tf.maximum(tf.reduce_sum(present, 1), 1.0)

  def vocabulary_table(self) -> layers.VocabularyTable:
    return layers.VocabularyTable(self.table.embeddings, (self.field,))


class Tower(tf.keras.layers.Layer):
  """A user's or a movie's vector: its fields' embeddings, concatenated, projected.

  The id's embedding carries what is learned about that user or movie; the side
  fields let users and movies with few interactions borrow from similar ones.
  """

  def __init__(self, fields, vocabulary_sizes: Dict[str, int], dim: int, **kwargs):
    super().__init__(**kwargs)
    self.embeddings = [FieldEmbedding(field, vocabulary_sizes[field], dim)
                       for field in fields]
    self.projection = tf.keras.layers.Dense(dim, use_bias=False)

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    return self.projection(tf.concat([embed(inputs) for embed in self.embeddings], -1))


class Retrieval(layers.ChunkedTrainStep, tfrs.Model):
  """Two towers and `tfrs.tasks.Retrieval`: score = user vector . movie vector.

  Trained on (user, movie) interactions with in-batch negatives. Popular movies
  turn up as negatives more often than others; with `sampling_correction` the
  logits are corrected by the log of each movie's share of the train split
  (Yi et al., 2019), so the model does not learn to push them down. The ratings'
  labels are not read: a watched film is an interaction whether it was liked or not.

  With `hparams.towers` > 1 it is an ensemble: that many independently initialised
  pairs of towers, each trained by its own softmax on the same batches, and the
  score is the mean of their dot products. Each pair's ranking carries the noise
  of where it started; the mean ranks better than any one pair
  (docs/experiments.md). The mean of k dot products is
  one dot product of the concatenated vectors, the user's scaled by 1/k, so the
  ensemble is served by one top-k index over k x embedding_dim dimensions.
  """

  factorizes = True  # export/recommend.py ranks it through a top-k index
  predicts_likes = False  # its signatures output an engagement score, not a like probability
  in_batch_negatives = True  # validated at the training batch size (models/training.py)
  optimizer_class = tf.keras.optimizers.Adagrad  # as TFRS's retrieval tutorials train

  def __init__(self, vocabulary_sizes: Dict[str, int], hparams: hp.RetrievalHparams):
    super().__init__()
    self.hparams = hparams
    user_fields = (features.available(features.USER_FIELDS, vocabulary_sizes)
                   if hparams.side_features else (features.USER_ID,))
    movie_fields = ((features.MOVIE_ID, features.MOVIE_DECADE, features.MOVIE_GENRES)
                    if hparams.side_features else (features.MOVIE_ID,))
    self.user_towers = [Tower(user_fields, vocabulary_sizes, hparams.embedding_dim,
                              name=f"user_tower_{i}") for i in range(hparams.towers)]
    # The user's history beside the user's fields, combined into the query.
    self.history_encoders, self.query_projections = [], []
    if hparams.history_encoder != "none":
      self.history_encoders = [sequence.HistoryEncoder(
          hparams.history_encoder, vocabulary_sizes[features.MOVIE_ID], hparams.embedding_dim,
          hparams.history_length, ages=hparams.history_ages, name=f"history_encoder_{i}")
                               for i in range(hparams.towers)]
      self.query_projections = [tf.keras.layers.Dense(hparams.embedding_dim, use_bias=False,
                                                      name=f"query_projection_{i}")
                                for i in range(hparams.towers)]
    # Every user field's out-of-vocabulary index: what an unknown user looks like.
    self.unknown_user = {features.transformed_name(field): vocabulary_sizes[field] - 1
                         for field in user_fields}
    self.movie_towers = [Tower(movie_fields, vocabulary_sizes, hparams.embedding_dim,
                               name=f"movie_tower_{i}") for i in range(hparams.towers)]
    self.tasks = [tfrs.tasks.Retrieval(remove_accidental_hits=True)
                  for _ in range(hparams.towers)]

  def vocabulary_tables(self) -> List[layers.VocabularyTable]:
    """Every field's table in every tower (models/warm_start.py)."""
    return ([embedding.vocabulary_table()
             for tower in [*self.user_towers, *self.movie_towers]
             for embedding in tower.embeddings]
            + [encoder.vocabulary_table() for encoder in self.history_encoders])

  @property
  def uses_history(self) -> bool:
    return bool(self.history_encoders)

  def _query(self, pair: int, inputs: Dict[str, tf.Tensor], training: bool = False,
             history_kept: float = 1.0) -> tf.Tensor:
    """Pair `pair`'s query: the user's fields, and with an encoder their history.

    Training, a `history_dropout` share of the rows' histories are zeros. With
    `history_kept` below 1, the query is that share of the query with the history
    plus the rest of the query with zeros in its place.
    """
    user = self.user_towers[pair](inputs)
    if not self.history_encoders:
      return user
    history = tf.cast(self.history_encoders[pair](inputs, training=training), user.dtype)
    if training and self.hparams.history_dropout:
      hidden = tf.random.uniform(tf.shape(history)[:1]) < self.hparams.history_dropout
      history = tf.where(hidden[:, tf.newaxis], tf.zeros_like(history), history)
    # The projection has no bias: with the history scaled by w, the query is
    # w x the query with the history + (1 - w) x the query with zeros in its place.
    return self.query_projections[pair](tf.concat([user, history_kept * history], -1))

  def _without_some_users(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """`inputs` with a `user_dropout` share of the rows' users made unknown."""
    rate = self.hparams.user_dropout
    if not rate:
      return inputs
    first = next(iter(self.unknown_user))
    dropped = tf.random.uniform(tf.shape(inputs[first])[:1]) < rate
    return {**inputs, **{key: tf.where(dropped, tf.cast(oov, inputs[key].dtype), inputs[key])
                         for key, oov in self.unknown_user.items()}}

  def _user_vector(self, inputs: Dict[str, tf.Tensor], history_kept: float = 1.0
                   ) -> tf.Tensor:
    # Scaled, so that its dot product with _movie_vector is the towers' mean score.
    vectors = [self._query(pair, inputs, history_kept=history_kept)
               for pair in range(len(self.user_towers))]
    return tf.concat(vectors, -1) / float(len(vectors))

  def _movie_vector(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.concat([tower(inputs) for tower in self.movie_towers], -1)

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The engagement score of each (user, movie) pair, [batch, 1]."""
    users = self._user_vector(inputs, history_kept=self.hparams.history_weight)
    return tf.reduce_sum(users * self._movie_vector(inputs), -1, keepdims=True)

  def query_vectors(self, inputs: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per user: the query vector [batch, towers x dim] and a score offset (0) [batch];
    the history weighed by `history_weight`."""
    users = self._user_vector(inputs, history_kept=self.hparams.history_weight)
    return users, tf.zeros_like(users[:, 0])

  def probability(self, scores: tf.Tensor) -> tf.Tensor:
    """What `recommend` serves: the engagement score itself, a logit."""
    return scores

  def candidate_vectors(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Per movie: the candidate vector [movies, towers x dim]."""
    return self._movie_vector(inputs)

  def compute_loss(self, inputs: Tuple[Dict[str, tf.Tensor], tf.Tensor],
                   training: bool = False) -> tf.Tensor:
    # Each pair of towers learns alone: the sum of their losses has no cross terms.
    return tf.add_n(self.pair_losses(inputs, training=training))

  def pair_losses(self, inputs: Tuple[Dict[str, tf.Tensor], tf.Tensor],
                  training: bool = False) -> List[tf.Tensor]:
    """Each pair of towers' softmax loss on a batch of (features, labels)."""
    features_, labels = inputs
    queried = self._without_some_users(features_) if training else features_
    # A liked film says more about what to offer than one watched and disliked.
    weights = 1.0 + (self.hparams.liked_weight - 1.0) * tf.cast(tf.reshape(labels, [-1]),
                                                                tf.float32)
    # Each pair's user tower, then its movie tower: the order their variables were
    # always created in, which decides the values the seeded initialisers draw.
    vectors = [(self._query(pair, queried, training=training), movie_tower(features_))
               for pair, movie_tower in enumerate(self.movie_towers)]
    queries = [query for query, _ in vectors]
    candidates = [candidate for _, candidate in vectors]
    candidate_ids = features_[_MOVIE]
    # Proportional to the movie's ratings in train (the feature is log(1 + n)).
    counts = (tf.math.expm1(tf.cast(features_[_MOVIE_RATING_COUNT], tf.float32))
              if self.hparams.sampling_correction else None)
    score_mask = None
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
      candidates, candidate_ids, counts, score_mask = _whole_batch_candidates(
          replica, self.hparams.batch_size, candidates, candidate_ids, counts,
          num_queries=tf.shape(labels)[0])
    # TFRS clips probabilities to [1e-6, 1], and the softmax ignores a constant
    # factor, so counts are scaled by the batch's largest.
    sampling_probability = None if counts is None else counts / tf.reduce_max(counts)
    return [task(query, candidate, sample_weight=weights,
                 candidate_sampling_probability=sampling_probability,
                 candidate_ids=candidate_ids, score_mask=score_mask)
            for query, candidate, task in zip(queries, candidates, self.tasks)]


# The id of a padding row among the gathered candidates: no movie's.
_PADDING_ID = -1


def _whole_batch_candidates(replica: tf.distribute.ReplicaContext, batch_size: int,
                            candidates: List[tf.Tensor], ids: tf.Tensor,
                            counts: Optional[tf.Tensor], num_queries: tf.Tensor):
  """Every replica's candidates, this replica's own first: the whole batch's negatives.

  Under a tf.distribute strategy each replica trains on its share of the batch
  (models/training.py); with its own candidates alone, each query would meet a
  share of the negatives it meets in one process, a different softmax. TFRS
  takes candidates beyond the queries as extra negatives, and labels each query's
  positive on the diagonal, where this replica's own candidates stay. all_gather
  sends the candidates' gradients back to the replicas they came from, so the sum
  of the replicas' losses is the whole batch's loss, as in one process.

  Each replica's share is padded to the largest a share of `batch_size` can be
  before it is gathered: TensorFlow's collective all-gather fails when a step
  gathers another shape than the steps before ("Shape mismatch in the collective
  instance"), as the epoch's last, smaller batch would. Returns the
  candidates, their ids and counts, and the score mask that leaves the padding out.
  """
  share = -(-batch_size // replica.num_replicas_in_sync)
  rows = tf.shape(ids)[0]
  tf.debugging.assert_less_equal(rows, share, message=(
      "a replica's share of the batch is larger than the batch size allows"))
  padding = [[0, share - rows]]

  def padded(tensor: tf.Tensor, value) -> tf.Tensor:
    return tf.pad(tensor, padding + [[0, 0]] * (tensor.shape.rank - 1),
                  constant_values=value)

  offset = share * replica.replica_id_in_sync_group

  def own_first(gathered: tf.Tensor) -> tf.Tensor:
    return tf.roll(gathered, shift=-offset, axis=0)

  candidates = [own_first(c) for c in
                replica.all_gather([padded(c, 0.0) for c in candidates], axis=0)]
  ids = own_first(replica.all_gather(padded(ids, _PADDING_ID), axis=0))
  if counts is not None:
    counts = own_first(replica.all_gather(padded(counts, 0.0), axis=0))
  shares = replica.all_gather(tf.reshape(rows, [1]), axis=0)
  real = own_first(tf.reshape(tf.range(share)[tf.newaxis, :] < shares[:, tf.newaxis], [-1]))
  score_mask = tf.broadcast_to(real[tf.newaxis, :], [num_queries, tf.shape(real)[0]])
  return candidates, ids, counts, score_mask


def build(vocabulary_sizes: Dict[str, int], hparams: hp.RetrievalHparams) -> Retrieval:
  return Retrieval(vocabulary_sizes, hparams)
