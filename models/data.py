"""A split's examples through the Transform graph into memory, and the batches training reads."""
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models import features
from models import preprocessing

_READ_BATCH = 65_536
_READ_BUFFER_BYTES = 8 << 20


def to_columns(batches: tf.data.Dataset) -> Dict[str, np.ndarray]:
  """A dataset of feature-dict batches, read to the end, as one array per feature."""
  columns: Dict[str, list] = {}
  for batch in batches:
    for key, value in batch.items():
      columns.setdefault(key, []).append(value.numpy())
  return {key: np.concatenate(values) for key, values in columns.items()}


def load_examples(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                  histories: bool = True) -> Dict[str, np.ndarray]:
  """A split's raw examples through the Transform graph, as one array per model input.

  Without `histories`, the users' histories are neither parsed nor transformed: a
  model that does not encode them would hold 50 movies and ages per rating in
  memory for nothing.

  Transform writes no transformed copy of the data (`materialize=False`): applying
  its graph here, in TensorFlow over large batches of serialized examples, is far
  quicker than Beam transforming and writing every split, and parsing whole batches
  quicker than TFX's `data_accessor.tf_dataset_factory` (docs/performance.md).
  """
  files = [f for pattern in file_patterns for f in sorted(tf.io.gfile.glob(pattern))]
  if not files:
    raise ValueError(f"no examples match {', '.join(file_patterns)}")
  # ExampleGen writes gzipped TFRecords ("*.gz"), TFX's default for examples.
  compression = "GZIP" if all(f.endswith(".gz") for f in files) else ""
  raw_feature_spec = tf_transform_output.raw_feature_spec()
  if not histories:
    # The Transform graph computes only what the features given allow.
    raw_feature_spec = {key: spec for key, spec in raw_feature_spec.items()
                        if key not in (features.HISTORY_MOVIE_IDS, features.HISTORY_AGE_SECONDS)}
  transform = tf_transform_output.transform_features_layer()
  # Not rewritten by AutoGraph (tf.data's default for a map): nothing in it branches
  # on a tensor, and converting the Transform layer's Python took seconds per
  # Trainer (docs/performance.md).
  columns = to_columns(
      tf.data.TFRecordDataset(files, compression_type=compression,
                              buffer_size=_READ_BUFFER_BYTES)
      .batch(_READ_BATCH)
      .map(tf.autograph.experimental.do_not_convert(
          lambda serialized: transform(tf.io.parse_example(serialized, raw_feature_spec))),
           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
  # tf.Transform's outputs are int64; movie indices fit half of that, and a history
  # is 50 of them per rating.
  history = features.transformed_name(features.HISTORY_MOVIE_IDS)
  if history in columns:
    columns[history] = columns[history].astype(np.int32)
  return columns


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
  # up to a minute, and deleting an iterator waits for it, so `fit` could return
  # long after the last epoch (docs/performance.md). Nothing here needs tuning.
  options = tf.data.Options()
  options.autotune.enabled = False
  # Under MultiWorkerMirroredStrategy every worker builds this same dataset (the same
  # permutation, from `seed`) and keeps its share of each batch: the strategy splits
  # every batch between the replicas, and DATA sharding hands each worker its part.
  # It has no files to shard by, which AUTO would try first.
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return (rows
          .map(lambda index: ({k: tf.gather(v, index) for k, v in inputs.items()},
                              tf.gather(labels, index)))
          .prefetch(2)
          .with_options(options))


def vocabulary_sizes(tf_transform_output: tft.TFTransformOutput) -> Dict[str, int]:
  """Embedding rows of every categorical field the release has (vocabulary + OOV buckets)."""
  transformed = tf_transform_output.transformed_feature_spec()
  return {field: preprocessing.vocabulary_size(tf_transform_output, field)
          for field in features.DEEPFM_FIELDS
          if features.transformed_name(field) in transformed}
