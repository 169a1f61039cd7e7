"""How a model is judged: the TFMA EvalConfig of its Evaluator, and its blessing.

Each model is evaluated on the test split through its `serving_default`
signature (raw tf.Examples in, like probability out), exactly as TF Serving
would call it. It is blessed when its AUC clears a floor and, once a model of
the same kind has been blessed before, when it is not worse than that model by
more than a tolerance.
"""
import json

import tensorflow_model_analysis as tfma

from common import code_fingerprint
from evaluation import histogram_metrics as hm
from models import features
from serving import contract

EVAL_SPLIT = "test"
AUC = "auc"  # the metric the blessing and the report lead with
# Raw features the metrics are sliced by; a movie with several genres counts in each.
SLICE_FEATURES = (features.USER_GENDER, features.AGE_BUCKET,
                  features.OCCUPATION_LABEL, features.MOVIE_GENRES)
DECISION_THRESHOLD = 0.5  # a like probability above this predicts a like

# Metric names as TFMA writes them, in the order reports show them.
REPORTED_METRICS = (AUC, "auc_precision_recall", hm.BINARY_ACCURACY, hm.PRECISION,
                    hm.RECALL, hm.CALIBRATION, hm.MEAN_LABEL, hm.MEAN_PREDICTION,
                    hm.EXAMPLE_COUNT)


def _auc_threshold(auc_floor: float, max_auc_drop: float) -> tfma.MetricThreshold:
  return tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(lower_bound={"value": auc_floor}),
      # TFMA drops change thresholds while no blessed baseline exists (first run).
      change_threshold=tfma.GenericChangeThreshold(
          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -max_auc_drop - 1e-10}))


def slice_features(dataset: str) -> tuple:
  """The SLICE_FEATURES `dataset`'s examples have (20M and 25M: genres alone)."""
  return tuple(f for f in SLICE_FEATURES if features.in_release(f, dataset))


def eval_config(auc_floor: float, max_auc_drop: float,
                dataset: str = features.DEFAULT_DATASET) -> tfma.EvalConfig:
  """The Evaluator's config: metrics, plots, slices and blessing thresholds."""
  metric = tfma.MetricConfig
  # The metrics' code in their config, which is part of the Evaluator's cache key:
  # edited metrics are computed again.
  ours = {"code_fingerprint": code_fingerprint.of(hm.__name__)}
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(signature_name=contract.SERVING_DEFAULT,
                                  label_key=features.LABEL,
                                  prediction_key=contract.LIKE_PROBABILITY)],
      slicing_specs=[tfma.SlicingSpec()] + [
          tfma.SlicingSpec(feature_keys=[key]) for key in slice_features(dataset)],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          # The blessing looks at the overall AUC only: small slices are noisy.
          metric(class_name="AUC", config=f'{{"name": "{AUC}"}}',
                 per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                     slicing_specs=[tfma.SlicingSpec()],
                     threshold=_auc_threshold(auc_floor, max_auc_drop))]),
          metric(class_name="AUCPrecisionRecall"),
          metric(class_name="ConfusionMatrixPlot"),
          metric(class_name="CalibrationPlot"),
          # Every metric above and below reads one calibration histogram per slice:
          # a combiner per metric made the Evaluator much slower (docs/performance.md).
          # Binary cross-entropy needs a combiner of its own, so it is left out.
          metric(class_name="HistogramMeans", module=hm.__name__,
                 config=json.dumps(ours)),
          metric(class_name="DecisionMetrics", module=hm.__name__,
                 config=json.dumps({"threshold": DECISION_THRESHOLD, **ours})),
      ])])
