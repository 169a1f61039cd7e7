"""TFMA metrics read off the calibration histogram that AUC builds anyway.

TFMA runs one Python combiner per distinct computation for every example of
every slice, and at MovieLens-1M scale that loop was most of an Evaluator's
time (the profile: docs/performance.md). AUC, AUC-PR and the ROC and calibration
plots share one 10,000-bucket calibration histogram; the metrics here derive from
that same histogram instead of running combiners of their own:

- `HistogramMeans`: example count, mean label, mean prediction and calibration,
  exact, from the histogram's per-bucket sums;
- `DecisionMetrics`: binary accuracy, precision, recall and the confusion matrix
  at a decision threshold, from TFMA's own histogram-based confusion matrices.
  Buckets are 1e-4 wide, so a prediction less than 1e-4 above the threshold
  counts as below it (TFMA's AUC has the same resolution).

Names and values are those of TFMA's ExampleCount, MeanLabel, MeanPrediction,
Calibration, BinaryAccuracy, Precision, Recall and ConfusionMatrixAtThresholds,
so readers of the evaluation (TFMA, TensorBoard, the report) see no difference.

Importing this module also gives that one histogram combiner a fast path for a
binary label and one prediction per example (`_add_binary_input`).
"""
from typing import Any, Callable, Dict, Optional

import numpy as np
from tensorflow_model_analysis.metrics import binary_confusion_matrices
from tensorflow_model_analysis.metrics import calibration_histogram
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util
from tensorflow_model_analysis.proto import config_pb2

EXAMPLE_COUNT = "example_count"
MEAN_LABEL = "mean_label"
MEAN_PREDICTION = "mean_prediction"
CALIBRATION = "calibration"
BINARY_ACCURACY = "binary_accuracy"
PRECISION = "precision"
RECALL = "recall"
CONFUSION_MATRIX = "confusion_matrix_at_thresholds"

_NAN = float("nan")


def _ratio(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator else _NAN


def _derive(computations: metric_types.MetricComputations, names,
            values: Callable[[Any], Dict[str, Any]], model_name: str,
            output_name: str, sub_key: Optional[metric_types.SubKey],
            example_weighted: bool) -> metric_types.MetricComputations:
  """Appends the metrics `names`, computed by `values` from the last computation's result."""
  input_key = computations[-1].keys[-1]
  keys = {name: metric_types.MetricKey(name=name, model_name=model_name,
                                       output_name=output_name, sub_key=sub_key,
                                       example_weighted=example_weighted)
          for name in names}

  def result(metrics: Dict[metric_types.MetricKey, Any]
             ) -> Dict[metric_types.MetricKey, Any]:
    computed = values(metrics[input_key])
    return {key: computed[name] for name, key in keys.items()}

  computations.append(metric_types.DerivedMetricComputation(
      keys=list(keys.values()), result=result))
  return computations


class HistogramMeans(metric_types.Metric):
  """Example count, mean label, mean prediction and calibration of a slice."""

  def __init__(self, name: str = "histogram_means", code_fingerprint: str = ""):
    del code_fingerprint  # only keys the Evaluator's cache (evaluation.tfma_config)
    super().__init__(metric_util.merge_per_key_computations(_means), name=name)


metric_types.register_metric(HistogramMeans)


def _means(name: str = "histogram_means",
           eval_config: Optional[config_pb2.EvalConfig] = None,
           model_name: str = "",
           output_name: str = "",
           sub_key: Optional[metric_types.SubKey] = None,
           aggregation_type: Optional[metric_types.AggregationType] = None,
           class_weights: Optional[Dict[int, float]] = None,
           example_weighted: bool = False) -> metric_types.MetricComputations:
  del name  # the metrics keep TFMA's names
  computations = calibration_histogram.calibration_histogram(
      eval_config=eval_config, model_name=model_name, output_name=output_name,
      sub_key=sub_key, aggregation_type=aggregation_type,
      class_weights=class_weights, example_weighted=example_weighted)

  def means(buckets) -> Dict[str, float]:
    examples = sum(b.weighted_examples for b in buckets)
    labels = sum(b.weighted_labels for b in buckets)
    predictions = sum(b.weighted_predictions for b in buckets)
    return {EXAMPLE_COUNT: examples,
            MEAN_LABEL: _ratio(labels, examples),
            MEAN_PREDICTION: _ratio(predictions, examples),
            CALIBRATION: _ratio(predictions, labels)}

  return _derive(computations, (EXAMPLE_COUNT, MEAN_LABEL, MEAN_PREDICTION, CALIBRATION),
                 means, model_name, output_name, sub_key, example_weighted)


class DecisionMetrics(metric_types.Metric):
  """Accuracy, precision, recall and the confusion matrix at one threshold."""

  def __init__(self, threshold: float = 0.5, name: str = "decision_metrics",
               code_fingerprint: str = ""):
    del code_fingerprint  # only keys the Evaluator's cache (evaluation.tfma_config)
    super().__init__(metric_util.merge_per_key_computations(_decision_metrics),
                     threshold=threshold, name=name)


metric_types.register_metric(DecisionMetrics)


def _decision_metrics(threshold: float,
                      name: str = "decision_metrics",
                      eval_config: Optional[config_pb2.EvalConfig] = None,
                      model_name: str = "",
                      output_name: str = "",
                      sub_key: Optional[metric_types.SubKey] = None,
                      aggregation_type: Optional[metric_types.AggregationType] = None,
                      class_weights: Optional[Dict[int, float]] = None,
                      example_weighted: bool = False
                      ) -> metric_types.MetricComputations:
  del name
  computations = binary_confusion_matrices.binary_confusion_matrices(
      thresholds=[threshold], use_histogram=True, eval_config=eval_config,
      model_name=model_name, output_name=output_name, sub_key=sub_key,
      aggregation_type=aggregation_type, class_weights=class_weights,
      example_weighted=example_weighted)

  def at_threshold(matrices) -> Dict[str, Any]:
    tp, tn = matrices.tp[0], matrices.tn[0]
    fp, fn = matrices.fp[0], matrices.fn[0]
    return {BINARY_ACCURACY: _ratio(tp + tn, tp + tn + fp + fn),
            PRECISION: _ratio(tp, tp + fp),
            RECALL: _ratio(tp, tp + fn),
            CONFUSION_MATRIX: matrices}

  return _derive(computations, (BINARY_ACCURACY, PRECISION, RECALL, CONFUSION_MATRIX),
                 at_threshold, model_name, output_name, sub_key, example_weighted)


# TFMA's own per-example step of the calibration histogram, for every input the
# fast path below does not take.
# pylint: disable=protected-access
_generic_add_input = calibration_histogram._CalibrationHistogramCombiner.add_input


def _single_number(value: Any, model_name: str) -> Optional[float]:
  """A label or prediction as a float, if it is one number (per model); else None."""
  if isinstance(value, dict):  # keyed by model name when TFMA compares two models
    value = value.get(model_name)
  if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
    return float(value.item())
  return None


def _add_binary_input(self, accumulator, element):
  """The calibration histogram's add_input, fast for a 0/1 label and one prediction.

  TFMA calls this for every example once per slice the example falls in, and its
  generic path (metric_util.to_label_prediction_example_weight: multi-class,
  top-k, class weights, fractional labels split into two weighted rows) was a
  large share of an Evaluator's time at MovieLens-1M scale (docs/performance.md).
  For an unweighted example with a label of exactly 0 or 1 those rows add up to
  one: (label, prediction, weight 1) in the prediction's bucket, the same sums.
  Any other input takes TFMA's own path.
  """
  key = self._key
  if (self._prediction_based_bucketing and not self._example_weighted
      and self._aggregation_type is None and self._class_weights is None
      and key.sub_key is None and not key.output_name):
    label = _single_number(element.label, key.model_name)
    prediction = _single_number(element.prediction, key.model_name)
    if prediction is not None and label in (0.0, 1.0):
      bucket_index = self._bucket_index(prediction)
      bucket = accumulator.get(bucket_index)
      if bucket is None:
        accumulator[bucket_index] = calibration_histogram.Bucket(
            bucket_index, label, prediction, 1.0)
      else:
        bucket.weighted_labels += label
        bucket.weighted_predictions += prediction
        bucket.weighted_examples += 1.0
      return accumulator
  return _generic_add_input(self, accumulator, element)


calibration_histogram._CalibrationHistogramCombiner.add_input = _add_binary_input
# pylint: enable=protected-access
