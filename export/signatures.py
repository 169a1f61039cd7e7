"""Serving signatures of the exported models, as TF Serving and TFX tooling call them.

- `serving_default`: serialized tf.Examples of raw features (TF Serving's predict
  and classify, TFX's BulkInferrer); only the features the model uses are parsed.
- `predict_raw`: the same features as plain tensors, one per feature, for REST
  clients: `{"instances": [{"user_id": "42", "movie_id": "1193"}]}`. Genres go as
  one string, "Action|Comedy".
- `transform_features`: serialized raw tf.Examples to the transformed features
  (for the Evaluator).
With a `recommend.Recommender` (the Trainers export one):
- `predict`: `user_id` and `movie_id` only, for any model; the side features come
  from the tables exported with the model (`export/recommend.py`), and ids never
  seen in training get what the Transform graph gives them (out-of-vocabulary);
- `recommend`: `user_id` ([batch] strings) and `k` (an int32 scalar, 1 to
  `contract.MAX_K`) to `movie_ids` and `scores` ([batch, k], best first),
  excluding movies the user rated in the train and eval splits.
The Transform graph rides on the model as `model.tft_layer`, so it is saved with it.
"""
from typing import Dict, Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from export import recommend
from serving import contract

OUTPUT_KEY = contract.LIKE_PROBABILITY
GENRE_SEPARATOR = contract.GENRE_SEPARATOR


def _raw_spec(tf_transform_output: tft.TFTransformOutput,
              keys: Sequence[str]) -> Dict[str, tf.io.FixedLenFeature]:
  spec = tf_transform_output.raw_feature_spec()
  return {k: spec[k] for k in keys}


def make_serving_signatures(
    model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
    raw_feature_keys: Sequence[str],
    recommender: Optional[recommend.Recommender] = None,
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """The model's signatures; `raw_feature_keys` are the raw features it needs."""
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = _raw_spec(tf_transform_output, raw_feature_keys)

  output_key = (OUTPUT_KEY if getattr(model, "predicts_likes", True)
                else contract.ENGAGEMENT_SCORE)

  def predict(raw_features):
    probabilities = recommend.calibrated(model, model(model.tft_layer(raw_features)))
    return {output_key: tf.reshape(probabilities, [-1])}

  # autograph=False here and in every exported function: none branches on a tensor,
  # and AutoGraph rewriting them and all they call (the Transform graph's loader
  # included) from source was much of an export's time (docs/performance.md).
  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES)],
               autograph=False)
  def serve_tf_examples(examples):
    return predict(tf.io.parse_example(examples, raw_spec))

  # A feature of several values (genres, a history) comes as one string, its
  # values joined by GENRE_SEPARATOR: signatures take one tensor per input.
  several = {k for k in raw_feature_keys if isinstance(raw_spec[k], tf.io.VarLenFeature)}
  raw_inputs = {k: tf.TensorSpec([None], tf.string if k in several else raw_spec[k].dtype,
                                 name=k) for k in raw_feature_keys}

  @tf.function(input_signature=[raw_inputs], autograph=False)
  def predict_raw(inputs):
    raw_features = {}
    for key, value in recommend.same_length(inputs).items():
      if key in several:
        values = tf.strings.split(value, GENRE_SEPARATOR)
        values = tf.ragged.boolean_mask(values, values != "")  # "" holds no value
        if raw_spec[key].dtype != tf.string:
          values = tf.strings.to_number(values, raw_spec[key].dtype)
        raw_features[key] = values.to_sparse()
      else:
        raw_features[key] = value[:, tf.newaxis]
    return predict(raw_features)

  full_spec = tf_transform_output.raw_feature_spec()

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES)],
               autograph=False)
  def transform_features(examples):
    return model.tft_layer(tf.io.parse_example(examples, full_spec))

  signatures = {
      contract.SERVING_DEFAULT: serve_tf_examples.get_concrete_function(),
      contract.PREDICT_RAW: predict_raw.get_concrete_function(),
      contract.TRANSFORM_FEATURES: transform_features.get_concrete_function(),
  }
  if recommender is not None:
    model.recommender = recommender  # tracked, so its tables are saved

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=contract.USER_ID),
        tf.TensorSpec([None], tf.string, name=contract.MOVIE_ID)], autograph=False)
    def predict_ids(user_id, movie_id):
      return {output_key: model.recommender.predict(user_id, movie_id)}

    signatures[contract.PREDICT] = predict_ids.get_concrete_function()
    signatures[contract.RECOMMEND] = model.recommender.recommend.get_concrete_function()
  return signatures
