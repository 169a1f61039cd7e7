"""The fit loop both models share: seeded build, chunked steps, early stopping, history.

Each split's raw examples go through the Transform graph once, into memory
(`models.data`), and every epoch is fed from there, shuffled, so no epoch
re-parses tf.Examples. TensorBoard logs go to the Trainer's model_run_dir. The
model is built and trained inside the tf.distribute strategy the run chose.
"""
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from common import progress
from models import data
from models import features
from models import runtime

# Batches per Keras step (ChunkedTrainStep), or per call into TensorFlow under a
# tf.distribute strategy: the Python round trip per step is a fixed cost, large
# against one step at the presets' batch sizes (docs/performance.md).
BATCHES_PER_STEP = 16


def build_seeded(build: Callable, tf_transform_output: tft.TFTransformOutput, hparams,
                 seed: int) -> tf.keras.Model:
  """Seeds TensorFlow (deterministic ops) and builds the model in its dtype policy."""
  return _build_seeded(build, data.vocabulary_sizes(tf_transform_output), hparams, seed)


def _build_seeded(build: Callable, sizes: Dict[str, int], hparams,
                  seed: int) -> tf.keras.Model:
  runtime.leave_tf_keras_to_tensorflow()
  tf.keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()
  with runtime.precision_policy(runtime.uses_bfloat16(hparams)):
    return build(sizes, hparams)


def fit(strategy: tf.distribute.Strategy, model_name: str, build: Callable,
        sizes: Dict[str, int], hparams, train_examples: Dict[str, np.ndarray],
        eval_examples: Dict[str, np.ndarray], log_dir: str, seed: int,
        before_training: Optional[Callable[[tf.keras.Model], None]] = None):
  """Builds and trains the model inside `strategy`'s scope; returns (model, history).

  In the scope the strategy places (and mirrors) the variables and optimizer state.
  `sizes` are the vocabulary sizes (`data.vocabulary_sizes`); the batch size of `hparams`
  is the global batch, split between the strategy's replicas. `before_training`
  gets the built model before it is compiled (a warm start sets its weights there).
  """
  with strategy.scope():
    model = _build_seeded(build, sizes, hparams, seed)
    if before_training is not None:
      before_training(model)
    history = train(model, model_name, hparams, train_examples, eval_examples, log_dir,
                    seed)
  return model, history


def create_variables(model: tf.keras.Model, examples: Dict[str, np.ndarray]) -> None:
  """Calls the model on one example, so that Keras creates its variables (which it
  otherwise does on the first training step) and they can be set before training."""
  model({k: v[:1] for k, v in examples.items() if k != features.LABEL})


# The like models log log_loss and AUC; the retrieval model only its softmax loss.
_SHOWN_LOGS = ("log_loss", "auc", "val_log_loss", "val_auc")
_SHOWN_OTHERWISE = ("loss", "val_loss")


class TrainingProgress(tf.keras.callbacks.Callback):
  """One line per epoch, and the training throughput, for people and the report."""

  def __init__(self, model_name: str, epochs: int, examples_per_epoch: int):
    super().__init__()
    self._model_name = model_name
    self._epochs = epochs
    self._examples = examples_per_epoch
    self.examples_per_second = []

  def on_epoch_begin(self, epoch, logs=None):
    self._started = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self._train_seconds = time.perf_counter() - self._started

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    speed = self._examples / self._train_seconds
    self.examples_per_second.append(speed)
    keys = [k for k in _SHOWN_LOGS if k in logs] or [k for k in _SHOWN_OTHERWISE if k in logs]
    shown = " ".join(f"{k} {logs[k]:.4f}" for k in keys)
    progress.report(f"train {self._model_name}", f"epoch {epoch + 1}/{self._epochs}: "
                    f"{shown} ({speed:,.0f} examples/s)")


_VALIDATION_BATCH = 65_536


def _validation_batch_size(model: tf.keras.Model, hparams) -> int:
  """Large batches for the like models. A model whose loss scores each example
  against the rest of its batch (in-batch negatives) is validated at its training
  batch size: its loss then means the same, and a batch of 65,536 would score
  65,536 x 65,536 pairs."""
  if getattr(model, "in_batch_negatives", False):
    return hparams.batch_size
  return _VALIDATION_BATCH


def _all_reducing_dense_gradients(optimizer_class):
  """`optimizer_class`, summing embedding tables' gradients across replicas as dense tensors.

  An embedding's gradient is sparse (the rows the batch looked up), and a
  tf.distribute strategy all-gathers sparse gradients between replicas. TensorFlow's
  collective all-gather failed on the epoch's last, smaller batch ("Shape mismatch
  in the collective instance": the steps before had gathered another number of
  rows). A dense gradient has the table's shape at every step. Adam and Adagrad
  update a table alike from either: the sparse gradient's rows are summed by index
  first, and the rows it leaves out are zeros in the dense.
  """
  class DenseGradientsAllReduced(optimizer_class):

    def aggregate_gradients(self, grads_and_vars):
      return super().aggregate_gradients(
          [(tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices)
            else gradient, variable) for gradient, variable in grads_and_vars])

  return DenseGradientsAllReduced


def train(model: tf.keras.Model, model_name: str, hparams, train_examples, eval_examples,
          log_dir: str, seed: int,
          callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> Dict[str, list]:
  """Fits `model`, early-stopping on eval AUC if the hyperparameters ask; returns the history.

  `callbacks` run besides the Trainer's own (benchmarks watch each epoch with them).
  """
  if tf.distribute.has_strategy():
    # Under a tf.distribute strategy an optimizer step synchronises the replicas,
    # which TensorFlow does not support inside a loop of the replica's step: one
    # batch per Keras step, several steps per call into TensorFlow.
    batches_per_step, steps_per_execution = 1, BATCHES_PER_STEP
  else:
    batches_per_step, steps_per_execution = BATCHES_PER_STEP, 1
    model.train_batch_size = hparams.batch_size
  optimizer = getattr(model, "optimizer_class", tf.keras.optimizers.Adam)
  if tf.distribute.get_strategy().num_replicas_in_sync > 1:
    optimizer = _all_reducing_dense_gradients(optimizer)
  model.compile(optimizer=optimizer(hparams.learning_rate),
                steps_per_execution=steps_per_execution)
  if tf.distribute.has_strategy():
    # A metric's result is already every replica's (its variables are summed
    # across replicas when read), the same on each; tf-keras' default adds the
    # replicas' copies up (AUC 1.004 on two workers). Each worker takes its own
    # copy, so all of them see, and early-stop on, the same numbers. Keras' `loss`
    # entries, the last batch's loss and no metric, are then this replica's share.
    model.distribute_reduction_method = "first"
  examples_per_epoch = len(train_examples[features.LABEL])
  speed = TrainingProgress(model_name, hparams.epochs, examples_per_epoch)
  callbacks = [*callbacks, speed,
               tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")]
  if hparams.early_stopping_patience:
    callbacks.append(tf.keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=hparams.early_stopping_patience,
        restore_best_weights=True))
  history = model.fit(
      data.make_dataset(train_examples, hparams.batch_size * batches_per_step, shuffle=True,
                   seed=seed),
      validation_data=data.make_dataset(eval_examples, _validation_batch_size(model, hparams),
                                        shuffle=False, seed=seed),
      epochs=hparams.epochs, callbacks=callbacks, verbose=0)
  result = {k: [float(v) for v in values] for k, values in history.history.items()}
  result["train_examples_per_second"] = speed.examples_per_second
  result["train_examples"] = examples_per_epoch
  # Replicas that trained in step, across every worker of the strategy.
  result["replicas"] = tf.distribute.get_strategy().num_replicas_in_sync
  return result

