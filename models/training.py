"""Training and export shared by both models, called from each model's `run_fn`.

Each split's raw examples go through the Transform graph once, into memory (a
few dozen MB at MovieLens-1M), and every epoch is fed from there, shuffled, so no
epoch re-parses tf.Examples. TensorBoard logs go to the Trainer's model_run_dir.
The model is built and trained inside the tf.distribute strategy the run chose
(`distribution`).
"""
import contextlib
import functools
import json
import os
import tempfile
import time
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow.python.autograph.core import config as autograph_config

from components import progress
from models import features
from models import hparams as hp
from models import preprocessing
from serving import recommend
from serving import signatures


def _leave_tf_keras_to_tensorflow() -> None:
  """Stops AutoGraph from rewriting tf-keras' own code on every trace.

  AutoGraph converts each Python function a tf.function calls unless its module
  is on a list; TensorFlow 2.16 lists `keras` but not `tf_keras`, the package
  TF_USE_LEGACY_KERAS selects, so tracing a train step rewrote Keras' layers,
  losses and metrics from their source: DeepFM's first epoch at MovieLens-1M took
  25 s instead of 8 s (same numbers). Our own layers are still converted, as
  Keras converts a layer's `call`. The rule list is internal to TensorFlow
  (`autograph/core/config.py`), which requirements.lock pins.
  """
  rules = autograph_config.CONVERSION_RULES
  if not any(getattr(rule, "_prefix", None) == "tf_keras" for rule in rules):
    autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"),
                                         *rules)


_leave_tf_keras_to_tensorflow()

_READ_BATCH = 65_536
_READ_BUFFER_BYTES = 8 << 20
HISTORY_FILE = "history.json"
# Batches per Keras step (ChunkedTrainStep), or per call into TensorFlow under a
# tf.distribute strategy: at batch 1024 the Python round trip per step was a third
# of the step time.
BATCHES_PER_STEP = 16


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


@functools.lru_cache(maxsize=None)
def _cpu_has_bfloat16() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      flags = f.read()
  except OSError:
    return False
  return " avx512_bf16" in flags or " amx_bf16" in flags


def uses_bfloat16(hparams) -> bool:
  """Whether the model computes in bfloat16: asked for, and fast on this CPU."""
  return getattr(hparams, "mixed_precision", "off") == "auto" and _cpu_has_bfloat16()


@contextlib.contextmanager
def precision_policy(bfloat16: bool) -> Iterator[None]:
  """Keras' dtype policy for the models built inside; restored afterwards."""
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy("mixed_bfloat16" if bfloat16 else "float32")
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


# models.hparams.DISTRIBUTIONS -> the tf.distribute strategy it names.
_STRATEGIES = {
    hp.NO_DISTRIBUTION: tf.distribute.get_strategy,  # the default: one device
    "mirrored": tf.distribute.MirroredStrategy,
    # Reads the cluster (every worker's address, this task's type and index) from
    # the TF_CONFIG environment variable, which the cluster's scheduler sets.
    "multi_worker_mirrored": tf.distribute.MultiWorkerMirroredStrategy,
}
assert tuple(_STRATEGIES) == hp.DISTRIBUTIONS


def distribution_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy called `name` (one of models.hparams.DISTRIBUTIONS)."""
  try:
    return _STRATEGIES[name]()
  except KeyError:
    raise ValueError(f"distribution must be one of {', '.join(hp.DISTRIBUTIONS)}, "
                     f"got {name!r}") from None


def to_columns(batches: tf.data.Dataset) -> Dict[str, np.ndarray]:
  """A dataset of feature-dict batches, read to the end, as one array per feature."""
  columns: Dict[str, list] = {}
  for batch in batches:
    for key, value in batch.items():
      columns.setdefault(key, []).append(value.numpy())
  return {key: np.concatenate(values) for key, values in columns.items()}


def load_examples(file_patterns: Sequence[str],
                  tf_transform_output: tft.TFTransformOutput) -> Dict[str, np.ndarray]:
  """A split's raw examples through the Transform graph, as one array per model input.

  Transform writes no transformed copy of the data (`materialize=False`): applying
  its graph here, in TensorFlow over batches of 65,536 serialized examples, took
  3.6 s for the 800,000 train examples of MovieLens-1M on 2 cores, where Beam spent
  about 50 s transforming and writing every split. TFX's
  `data_accessor.tf_dataset_factory` took 21 s to parse the same examples.
  """
  files = [f for pattern in file_patterns for f in sorted(tf.io.gfile.glob(pattern))]
  if not files:
    raise ValueError(f"no examples match {', '.join(file_patterns)}")
  # ExampleGen writes gzipped TFRecords ("*.gz"), TFX's default for examples.
  compression = "GZIP" if all(f.endswith(".gz") for f in files) else ""
  raw_feature_spec = tf_transform_output.raw_feature_spec()
  transform = tf_transform_output.transform_features_layer()
  return to_columns(
      tf.data.TFRecordDataset(files, compression_type=compression,
                              buffer_size=_READ_BUFFER_BYTES)
      .batch(_READ_BATCH)
      .map(lambda serialized: transform(tf.io.parse_example(serialized, raw_feature_spec)),
           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def build_seeded(build: Callable, tf_transform_output: tft.TFTransformOutput, hparams,
                 seed: int) -> tf.keras.Model:
  """Seeds TensorFlow (deterministic ops) and builds the model in its dtype policy."""
  return _build_seeded(build, vocabulary_sizes(tf_transform_output), hparams, seed)


def _build_seeded(build: Callable, sizes: Dict[str, int], hparams,
                  seed: int) -> tf.keras.Model:
  tf.keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()
  with precision_policy(uses_bfloat16(hparams)):
    return build(sizes, hparams)


def fit(strategy: tf.distribute.Strategy, model_name: str, build: Callable,
        sizes: Dict[str, int], hparams, train_examples: Dict[str, np.ndarray],
        eval_examples: Dict[str, np.ndarray], log_dir: str, seed: int):
  """Builds and trains the model inside `strategy`'s scope; returns (model, history).

  In the scope the strategy places (and mirrors) the variables and optimizer state.
  `sizes` are the vocabulary sizes (vocabulary_sizes); the batch size of `hparams`
  is the global batch, split between the strategy's replicas.
  """
  with strategy.scope():
    model = _build_seeded(build, sizes, hparams, seed)
    history = train(model, model_name, hparams, train_examples, eval_examples, log_dir,
                    seed)
  return model, history


def make_dataset(examples: Dict[str, np.ndarray], batch_size: int, shuffle: bool,
                 seed: int) -> tf.data.Dataset:
  """(features, label) batches; shuffled anew each epoch when `shuffle`.

  Gathers whole batches from in-memory tensors by row index, in a random
  permutation per epoch drawn from `seed`: a per-example pipeline (or a shuffle
  buffer of row indices) cost more than the DeepFM step itself at batch 1024.
  """
  inputs = {k: tf.constant(v) for k, v in examples.items() if k != features.LABEL}
  labels = tf.constant(examples[features.LABEL])
  num_rows = len(examples[features.LABEL])
  num_batches = -(-num_rows // batch_size)

  def batches_of(order: tf.Tensor) -> tf.data.Dataset:
    return tf.data.Dataset.range(num_batches).map(
        lambda i: order[i * batch_size:(i + 1) * batch_size])

  if shuffle:
    # One seed per epoch, the same sequence of them for the same `seed`.
    rows = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    rows = rows.flat_map(lambda epoch_seed: batches_of(tf.random.experimental.stateless_shuffle(
        tf.range(num_rows, dtype=tf.int64), seed=tf.stack([epoch_seed, seed]))))
    rows = rows.apply(tf.data.experimental.assert_cardinality(num_batches))
  else:
    rows = batches_of(tf.range(num_rows, dtype=tf.int64))
  # No tf.data autotuning: its model thread re-optimises at intervals that double
  # up to a minute, and deleting an iterator waits for it, so `fit` returned up to
  # 50 s after DeepFM's 20th epoch at MovieLens-1M. Nothing here needs tuning.
  options = tf.data.Options()
  options.autotune.enabled = False
  return (rows
          .map(lambda index: ({k: tf.gather(v, index) for k, v in inputs.items()},
                              tf.gather(labels, index)))
          .prefetch(2)
          .with_options(options))


class ChunkedTrainStep:
  """A Keras model mixin: one `train_step` trains on a chunk of several batches.

  The chunk is cut into batches of `train_batch_size` rows, one optimizer step
  each, in order: the same updates as feeding the batches one by one. tf.data
  hands over an element of the 15 feature columns at a fixed cost of about 1 ms on
  2 cores, a sixth of DeepFM's step at batch 1024; a chunk of BATCHES_PER_STEP
  batches pays it once. Outside a tf.distribute strategy only (see train()); with
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


def id_statistics(inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
  """The user's and movie's train-split statistics as dense inputs, [batch, 6].

  Per id: like rate, its logit and log(1 + ratings). A training example counts in
  its own user's and movie's statistics; leaving it out (leave-one-out encoding) did
  worse on the eval split (DeepFM eval AUC 0.784 against 0.792): given the id's
  embedding, a leave-one-out rate gives the label away.
  """
  columns = []
  for _, rate_key, count_key in features.ID_STATISTICS:
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


def vocabulary_sizes(tf_transform_output: tft.TFTransformOutput) -> Dict[str, int]:
  """Embedding rows of every categorical field (vocabulary + OOV buckets)."""
  return {field: preprocessing.vocabulary_size(tf_transform_output, field)
          for field in features.DEEPFM_FIELDS}


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
    shown = " ".join(f"{k} {logs[k]:.4f}" for k in ("log_loss", "auc", "val_log_loss", "val_auc")
                     if k in logs)
    progress.report(f"train {self._model_name}", f"epoch {epoch + 1}/{self._epochs}: "
                    f"{shown} ({speed:,.0f} examples/s)")


def train(model: tf.keras.Model, model_name: str, hparams, train_examples, eval_examples,
          log_dir: str, seed: int) -> Dict[str, list]:
  """Fits `model`, with early stopping on eval AUC if the hyperparameters ask; returns the history."""
  if tf.distribute.has_strategy():
    # Under a tf.distribute strategy an optimizer step synchronises the replicas,
    # which TensorFlow does not support inside a loop of the replica's step: one
    # batch per Keras step, several steps per call into TensorFlow.
    batches_per_step, steps_per_execution = 1, BATCHES_PER_STEP
  else:
    batches_per_step, steps_per_execution = BATCHES_PER_STEP, 1
    model.train_batch_size = hparams.batch_size
  model.compile(optimizer=tf.keras.optimizers.Adam(hparams.learning_rate),
                steps_per_execution=steps_per_execution)
  examples_per_epoch = len(train_examples[features.LABEL])
  speed = TrainingProgress(model_name, hparams.epochs, examples_per_epoch)
  callbacks = [speed, tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")]
  if hparams.early_stopping_patience:
    callbacks.append(tf.keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=hparams.early_stopping_patience,
        restore_best_weights=True))
  history = model.fit(
      make_dataset(train_examples, hparams.batch_size * batches_per_step, shuffle=True,
                   seed=seed),
      validation_data=make_dataset(eval_examples, 65_536, shuffle=False, seed=seed),
      epochs=hparams.epochs, callbacks=callbacks, verbose=0)
  result = {k: [float(v) for v in values] for k, values in history.history.items()}
  result["train_examples_per_second"] = speed.examples_per_second
  result["train_examples"] = examples_per_epoch
  return result


def export(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
           raw_feature_keys: Sequence[str], export_dir: str,
           train_examples: Optional[Dict[str, np.ndarray]] = None) -> None:
  """Saves the model with its Transform graph and serving signatures.

  With the train split, the model also serves `predict` by ids and `recommend`.
  """
  recommender = None
  if train_examples is not None:
    tables = recommend.CandidateTables.from_train_split(train_examples, tf_transform_output)
    recommender = recommend.Recommender(model, tables)
  tf.saved_model.save(model, export_dir, signatures=signatures.make_serving_signatures(
      model, tf_transform_output, raw_feature_keys, recommender))


def run(fn_args, model_name: str, build: Callable, raw_feature_keys: Sequence[str]) -> None:
  """The body of both models' `run_fn`: read, train, log, export.

  `fn_args.custom_config` holds {"hparams": {...}, "seed": int, "distribution":
  str}; the pipeline fills it from `models.hparams` and the run's settings, and
  adds "code_fingerprint", which only keys the cache.
  """
  config = fn_args.custom_config
  hparams = hp.from_config(model_name, config["hparams"])
  seed = int(config["seed"])
  strategy = distribution_strategy(config.get("distribution", hp.NO_DISTRIBUTION))
  model_run_dir, serving_model_dir = fn_args.model_run_dir, fn_args.serving_model_dir
  if not strategy.extended.should_checkpoint:
    # A worker other than the chief: it takes part in training and saving (a
    # multi-worker save gathers variables from every worker), but only the
    # chief's logs and model are the Trainer's outputs.
    scratch = tempfile.mkdtemp(prefix=f"{model_name}-worker-")
    model_run_dir = os.path.join(scratch, "model_run")
    serving_model_dir = os.path.join(scratch, "model")
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  train_examples = load_examples(fn_args.train_files, tf_transform_output)
  eval_examples = load_examples(fn_args.eval_files, tf_transform_output)
  progress.report(f"train {model_name}", f"{len(train_examples[features.LABEL]):,} train "
                  f"and {len(eval_examples[features.LABEL]):,} eval examples, {hparams}")
  model, history = fit(strategy, model_name, build, vocabulary_sizes(tf_transform_output),
                       hparams, train_examples, eval_examples, model_run_dir, seed)
  tf.io.gfile.makedirs(model_run_dir)
  with tf.io.gfile.GFile(os.path.join(model_run_dir, HISTORY_FILE), "w") as f:
    json.dump(history, f, indent=1)
  export(model, tf_transform_output, raw_feature_keys, serving_model_dir, train_examples)
  progress.report(f"train {model_name}", f"exported to {serving_model_dir}")
