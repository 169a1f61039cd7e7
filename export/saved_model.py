"""The SavedModel a Trainer exports, as TF Serving loads it."""
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils

from export import recommend
from export import signatures
from models import features


def export(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
           raw_feature_keys: Sequence[str], export_dir: str,
           train_examples: Optional[Dict[str, np.ndarray]] = None,
           also_rated: Sequence[Dict[str, np.ndarray]] = ()) -> None:
  """Saves the model with its Transform graph and serving signatures.

  With the train split, the model also serves `predict` by ids and `recommend`;
  `recommend` leaves out what each user rated in train and in `also_rated` (the
  Trainer passes the eval split: the evaluation's candidates are the movies a user
  rated in neither).
  """
  # Only the features the release has: 20M and 25M have no user demographics.
  raw_feature_keys = features.available(raw_feature_keys, tf_transform_output.raw_feature_spec())
  if getattr(model, "uses_history", False):  # its signatures read the raw history too
    raw_feature_keys = tuple(raw_feature_keys) + tuple(
        key for key in features.HISTORY_RAW_FEATURES if key not in raw_feature_keys)
  recommender = None
  if train_examples is not None:
    tables = recommend.CandidateTables.from_train_split(train_examples, tf_transform_output,
                                                        also_rated)
    recommender = recommend.Recommender(model, tables)
  serving_signatures = signatures.make_serving_signatures(model, tf_transform_output,
                                                          raw_feature_keys, recommender)
  # Without Keras' traces of every layer's call: nothing loads the model as Keras
  # (TF Serving, TFMA and our code call its signatures and read its variables), and
  # the traces made saving and every later load markedly slower (docs/performance.md).
  # tf-keras' option scope is not public API; requirements.lock pins tf-keras.
  with keras_saved_model_utils.keras_option_scope(save_traces=False):
    tf.saved_model.save(model, export_dir, signatures=serving_signatures)
