"""The histogram-derived metrics equal TFMA's own, and add no combiner of their own.

TFMA runs here for real (Beam DirectRunner, model-agnostic: labels and
predictions are features of the examples), once with its standard metrics and
once with ours, over the same examples and slices.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_plots_and_validations_evaluator
from tensorflow_model_analysis.metrics import metric_specs

from evaluation import histogram_metrics as hm
from evaluation import tfma_config

_THRESHOLD = 0.5
_TFMA_METRICS = ("ExampleCount", "MeanLabel", "MeanPrediction", "Calibration",
                 "BinaryAccuracy", "Precision", "Recall", "ConfusionMatrixAtThresholds")


def _write_examples(path: str, count: int = 3000) -> None:
  rng = np.random.default_rng(7)
  predictions = rng.uniform(0.0, 1.0, count)
  # Within one 1e-4 bucket above the threshold the two may differ by design.
  predictions = predictions[~((predictions > _THRESHOLD) & (predictions < _THRESHOLD + 2e-4))]
  labels = (rng.uniform(0.0, 1.0, len(predictions)) < predictions).astype(np.int64)
  groups = rng.choice([b"a", b"b", b"c"], len(predictions))
  with tf.io.TFRecordWriter(path) as writer:
    for label, prediction, group in zip(labels, predictions, groups):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
          "prediction": tf.train.Feature(float_list=tf.train.FloatList(value=[prediction])),
          "group": tf.train.Feature(bytes_list=tf.train.BytesList(value=[group])),
      })).SerializeToString())


def _config(metrics) -> tfma.EvalConfig:
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key="label", prediction_key="prediction")],
      slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["group"])],
      metrics_specs=[tfma.MetricsSpec(metrics=metrics)])


def _metrics_by_slice(output_path: str):
  by_slice = {}
  for metrics_for_slice in tfma.load_metrics(output_path):
    keys = metrics_for_slice.slice_key.single_slice_keys
    values = {}
    for entry in metrics_for_slice.metric_keys_and_values:
      if entry.value.HasField("double_value"):
        values[entry.key.name] = entry.value.double_value.value
      elif entry.value.HasField("confusion_matrix_at_thresholds"):
        matrix = entry.value.confusion_matrix_at_thresholds.matrices[0]
        values[entry.key.name] = (matrix.threshold, matrix.true_positives,
                                  matrix.false_positives, matrix.true_negatives,
                                  matrix.false_negatives)
    by_slice[keys[0].bytes_value if keys else b""] = values
  return by_slice


@pytest.fixture(scope="module")
def both_evaluations(tmp_path_factory):
  root = tmp_path_factory.mktemp("histogram_metrics")
  data = str(root / "examples.tfrecord")
  _write_examples(data)
  ours = [tfma.MetricConfig(class_name="HistogramMeans", module=hm.__name__),
          tfma.MetricConfig(class_name="DecisionMetrics", module=hm.__name__,
                            config=f'{{"threshold": {_THRESHOLD}}}'),
          tfma.MetricConfig(class_name="AUC")]
  theirs = [tfma.MetricConfig(class_name=name, config=(
      f'{{"thresholds": [{_THRESHOLD}]}}' if name in ("Precision", "Recall",
                                                       "ConfusionMatrixAtThresholds")
      else f'{{"threshold": {_THRESHOLD}}}' if name == "BinaryAccuracy" else ""))
      for name in _TFMA_METRICS]
  results = {}
  for name, metrics in (("ours", ours), ("tfma", theirs)):
    output = str(root / name)
    tfma.run_model_analysis(eval_config=_config(metrics), data_location=data,
                            output_path=output)
    results[name] = _metrics_by_slice(output)
  return results


def test_histogram_metrics_equal_tfma_standard_metrics_on_every_slice(both_evaluations):
  ours, tfma_metrics = both_evaluations["ours"], both_evaluations["tfma"]
  assert set(ours) == set(tfma_metrics) == {b"", b"a", b"b", b"c"}
  for slice_value, expected in tfma_metrics.items():
    for name, value in expected.items():
      assert name in ours[slice_value], name
      assert ours[slice_value][name] == pytest.approx(value, rel=1e-6), (slice_value, name)
  assert ours[b""][hm.EXAMPLE_COUNT] == sum(ours[g][hm.EXAMPLE_COUNT] for g in (b"a", b"b", b"c"))


def test_the_evaluator_config_runs_one_combiner_per_model_and_slice():
  config = tfma_config.eval_config(auc_floor=0.75, max_auc_drop=0.01)
  computations = metric_specs.to_computations(config.metrics_specs, eval_config=config)
  combiners, *_ = metrics_plots_and_validations_evaluator._filter_and_separate_computations(
      computations)
  assert len(combiners) == 1, [c.keys for c in combiners]
  assert "_calibration_histogram" in combiners[0].keys[0].name
  derived = {key.name for c in computations for key in c.keys}
  assert set(tfma_config.REPORTED_METRICS) <= derived


def _histogram_combiner(model_name: str = ""):
  from tensorflow_model_analysis.metrics import calibration_histogram  # pylint: disable=g-import-not-at-top
  return calibration_histogram.calibration_histogram(
      model_name=model_name, example_weighted=False)[0].combiner


def _inputs(label, prediction):
  from tensorflow_model_analysis.metrics import metric_types  # pylint: disable=g-import-not-at-top
  return metric_types.StandardMetricInputs(labels=label, predictions=prediction)


def _histogram(combiner, add_input, elements):
  accumulator = combiner.create_accumulator()
  for element in elements:
    accumulator = add_input(combiner, accumulator, element)
  return {index: (b.weighted_labels, b.weighted_predictions, b.weighted_examples)
          for index, b in sorted(accumulator.items())}


@pytest.mark.parametrize("model_name,wrap", [
    ("", lambda value: value),
    ("candidate", lambda value: {"candidate": value, "baseline": value * 0.5})])
def test_fast_histogram_path_adds_what_tfma_generic_path_adds(model_name, wrap):
  """The fast path for 0/1 labels, and TFMA's own for anything else (a fractional
  label, several predictions), give the same buckets as TFMA's generic path alone."""
  rng = np.random.default_rng(3)
  elements = [_inputs(np.array([label]), wrap(np.array([prediction], np.float32)))
              for label, prediction in zip(rng.integers(0, 2, 500), rng.uniform(0, 1, 500))]
  elements += [_inputs(np.array([0.25]), wrap(np.array([0.7], np.float32))),
               _inputs(np.array([1]), wrap(np.array([0.2, 0.9], np.float32))),
               _inputs(np.array([1.0]), wrap(np.array([1.0], np.float32)))]
  combiner = _histogram_combiner(model_name)
  fast = _histogram(combiner, hm._add_binary_input, elements)  # pylint: disable=protected-access
  generic = _histogram(combiner, hm._generic_add_input, elements)  # pylint: disable=protected-access
  assert fast == generic
  assert sum(examples for _, _, examples in fast.values()) == len(elements) + 1


def test_the_fast_path_is_what_tfma_runs_once_the_module_is_loaded():
  from tensorflow_model_analysis.metrics import calibration_histogram  # pylint: disable=g-import-not-at-top
  assert (calibration_histogram._CalibrationHistogramCombiner.add_input  # pylint: disable=protected-access
          is hm._add_binary_input)  # pylint: disable=protected-access
