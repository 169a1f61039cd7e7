"""A model's evaluation as TensorBoard summaries, beside the Trainers' curves.

Per model: every overall test metric as a scalar (`test/<metric>`), the
confusion matrix at the decision threshold (`test/true_positives@0.5`...), AUC and
example count per slice (`test_slices/<feature>/<value>/auc`), the precision-
recall curve from TFMA's confusion matrices, and a Fairness Indicators summary
pointing the plugin at the Evaluator's output. Scalars are logged at the model's
last training epoch, so they line up with its training curves.
"""
from typing import Callable

import numpy as np
import tensorflow as tf
from tensorboard.plugins.pr_curve import summary as pr_curve_summary
from tensorboard_plugin_fairness_indicators import summary_v2 as fairness_summary

from evaluation import tfma_config
from evaluation import topk

PR_CURVE_TAG = "test/pr_curve"


def _pr_curve(results, step: int) -> None:
  points = [p for p in results.curve if 0 <= p.threshold <= 1]
  if len(points) < 2:
    return
  tp = np.array([p.true_positives for p in points], np.float32)
  fp = np.array([p.false_positives for p in points], np.float32)
  tn = np.array([p.true_negatives for p in points], np.float32)
  fn = np.array([p.false_negatives for p in points], np.float32)
  precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
  recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
  summary = pr_curve_summary.raw_data_pb(
      PR_CURVE_TAG, true_positive_counts=tp, false_positive_counts=fp,
      true_negative_counts=tn, false_negative_counts=fn, precision=precision,
      recall=recall, num_thresholds=len(points),
      description="Precision and recall on the test split over thresholds 0..1 "
                  "(TFMA's confusion matrices)")
  tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)


def write(results, logdir: str, slice_label: Callable[[str, str], str]) -> None:
  """Writes `results` (evaluation_results.ModelResults) as one TensorBoard run."""
  step = max(results.epochs, 1)
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for name, value in results.metrics.items():
      tf.summary.scalar(f"test/{name}", value, step=step)
    tf.summary.scalar("test/blessed", float(results.blessed), step=step,
                      description=results.reason)
    if results.decision is not None:
      for cell, count in results.decision.counts().items():
        tf.summary.scalar(f"test/{cell}@{tfma_config.DECISION_THRESHOLD:g}", count, step=step)
    for feature, slices in results.slice_metrics.items():
      for value, metrics in slices.items():
        label = slice_label(feature, value).replace("=", "/")
        tf.summary.scalar(f"test_slices/{label}/{tfma_config.AUC}",
                          metrics[tfma_config.AUC], step=step)
    _pr_curve(results, step)
    fairness_summary.FairnessIndicators(results.evaluation_uri, step=step)
  writer.close()


def write_ranking(system, logdir: str) -> None:
  """One system's top-k metrics (a ranking.json entry) into its TensorBoard run.

  NDCG@k and recall@k are drawn against k (the step), so the systems' curves share
  one chart; the other metrics at k stand at step k.
  """
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for curve, values in system["curves"].items():
      for k, value in zip(topk.CURVE_KS, values):
        tf.summary.scalar(f"ranking/{curve}@k", value, step=k)
    for name, value in system["metrics"].items():
      tf.summary.scalar(f"ranking/{name}", value, step=system["k"])
    tf.summary.scalar("ranking/coverage", system["coverage"], step=system["k"])
    tf.summary.scalar("ranking/already_rated", system["already_rated_share"],
                      step=system["k"])
  writer.close()
