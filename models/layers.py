"""Layers, losses and the train-step mixin both like-prediction models share."""
import dataclasses
from typing import Dict, Optional, Tuple

import tensorflow as tf

from models import features


class BatchMeanCrossentropy(tf.keras.losses.Loss):
  """Binary cross-entropy, the mean over the batch (under a strategy, a replica's part).

  Keras refuses its averaging reductions inside a tf.distribute strategy: they are
  right only for a compile() loss, which Keras rescales itself. TFRS calls the
  loss directly, so the average is taken here, as Keras takes it (sum / count).
  Under N replicas the strategy sums their gradients, N times the global batch's
  mean gradient; Adam, both models' optimizer, normalises its steps by the
  gradients' scale, so the steps are those of the global batch.
  """

  def __init__(self):
    super().__init__(reduction=tf.keras.losses.Reduction.NONE,
                     name="binary_crossentropy")
    self._per_example = tf.keras.losses.BinaryCrossentropy(
        reduction=tf.keras.losses.Reduction.NONE)

  def call(self, y_true, y_pred):
    losses = self._per_example(y_true, y_pred)
    return tf.math.divide_no_nan(tf.reduce_sum(losses),
                                 tf.cast(tf.size(losses), losses.dtype))


def ranking_task():
  """Both models' task: binary cross-entropy, reported per epoch with AUC."""
  import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top
  return tfrs.tasks.Ranking(
      loss=BatchMeanCrossentropy(),
      metrics=[tf.keras.metrics.AUC(name="auc", num_thresholds=1000)],
      loss_metrics=[tf.keras.metrics.Mean(name="log_loss")])


class ChunkedTrainStep:
  """A Keras model mixin: one `train_step` trains on a chunk of several batches.

  The chunk is cut into batches of `train_batch_size` rows, one optimizer step
  each, in order: the same updates as feeding the batches one by one. tf.data
  hands over each element at a fixed cost, a sizeable part of a step at the
  presets' batch sizes (docs/performance.md); a chunk of BATCHES_PER_STEP batches
  pays it once. Outside a tf.distribute strategy only (see training.train()); with
  `train_batch_size` unset, a chunk is one batch. Put it before `tfrs.Model`.
  """

  train_batch_size: Optional[int] = None

  def train_step(self, chunk):
    one_batch = super().train_step
    if self.train_batch_size is None:
      return one_batch(chunk)
    rows = self.train_batch_size
    num_rows = tf.shape(tf.nest.flatten(chunk)[0])[0]

    def batch(start):
      return tf.nest.map_structure(lambda column: column[start:start + rows], chunk)

    logs = one_batch(batch(0))
    _, logs = tf.while_loop(lambda start, _: start < num_rows,
                            lambda start, _: (start + rows, one_batch(batch(start))),
                            (tf.constant(rows), logs))
    return logs


@dataclasses.dataclass(frozen=True)
class VocabularyTable:
  """An embedding table whose rows are vocabulary indices, as a model declares it.

  Each of `fields` owns a block of consecutive rows, in this order: its vocabulary,
  in the Transform graph's order, then its out-of-vocabulary buckets. A new span's
  vocabulary orders ids differently, so a warm start carries these rows over by id
  rather than by index (models/warm_start.py).
  """
  variable: tf.Variable
  fields: Tuple[str, ...]


def id_statistics(inputs: Dict[str, tf.Tensor],
                  statistics=features.ID_STATISTICS) -> tf.Tensor:
  """The user's and movie's train-split statistics as dense inputs, [batch, 6].

  Per id: like rate, its logit and log(1 + ratings). `statistics` picks the ids
  (default: both, the user's first; 3 columns each). A training example counts in
  its own user's and movie's statistics; leaving it out (leave-one-out encoding) did
  worse on the eval split (docs/experiments.md): given the id's embedding, a
  leave-one-out rate gives the label away.
  """
  columns = []
  for _, rate_key, count_key in statistics:
    rate = tf.clip_by_value(inputs[features.transformed_name(rate_key)], 1e-3, 1 - 1e-3)
    columns += [rate, tf.math.log(rate / (1 - rate)),
                inputs[features.transformed_name(count_key)]]
  return tf.stack(columns, axis=1)


class RatingHead(tf.keras.layers.Layer):
  """An auxiliary target: the star rating as an affine function of the like logit.

  Training on the rating as well as on the like tells the model a 5 from a 4 and a
  1 from a 3, which the binary label cannot; the one shared score keeps both
  targets ranking pairs the same way.
  """

  def __init__(self, weight: float, **kwargs):
    kwargs.setdefault("dtype", "float32")  # also under bfloat16 compute
    super().__init__(**kwargs)
    self.loss_weight = weight
    self.scale = self.add_weight(name="scale", shape=(), initializer="ones")
    self.offset = self.add_weight(name="offset", shape=(),
                                  initializer=tf.keras.initializers.Constant(3.5))

  def call(self, inputs: Dict[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
    """The weighted squared error of the predicted rating (0 without ratings)."""
    key = features.transformed_name(features.USER_RATING)
    if key not in inputs:
      return tf.constant(0.0)
    predicted = self.offset + self.scale * tf.reshape(tf.cast(logits, tf.float32), [-1])
    return self.loss_weight * tf.reduce_mean(tf.square(predicted - inputs[key]))
