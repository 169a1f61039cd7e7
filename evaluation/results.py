"""One model's evaluation read back from its Evaluator and Trainer artifacts.

TFMA writes metrics, plots and the validation result per slice as protos; this
turns them into plain numbers the report, the figures and TensorBoard share.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer

from common import errors
from evaluation import histogram_metrics as hm
from evaluation import tfma_config
from models import history as training_history

_CANDIDATE = ("", "candidate")  # TFMA names the models once a baseline exists
_BASELINE = "baseline"


class EvaluationError(errors.RecsysError):
  """An evaluation artifact that is missing, unreadable or from another version."""


@dataclasses.dataclass
class ConfusionPoint:
  threshold: float
  true_positives: float
  false_positives: float
  true_negatives: float
  false_negatives: float

  @classmethod
  def from_proto(cls, matrix) -> "ConfusionPoint":
    return cls(matrix.threshold, matrix.true_positives, matrix.false_positives,
               matrix.true_negatives, matrix.false_negatives)

  def counts(self) -> Dict[str, int]:
    """The four cells as whole numbers of examples (the Evaluator weighs none)."""
    return {name: int(round(getattr(self, name))) for name in CONFUSION_CELLS}


# The confusion matrix's cells, in the order reports show them.
CONFUSION_CELLS = ("true_positives", "false_positives", "true_negatives",
                   "false_negatives")


@dataclasses.dataclass
class ModelResults:
  """What the report says about one model."""
  metrics: Dict[str, float]  # overall, REPORTED_METRICS order
  slice_metrics: Dict[str, Dict[str, Dict[str, float]]]  # feature -> value -> auc, count
  curve: List[ConfusionPoint]  # overall, thresholds ascending
  decision: Optional[ConfusionPoint]  # overall, at tfma_config.DECISION_THRESHOLD
  blessed: bool
  reason: str
  baseline_auc: Optional[float]
  history: Dict[str, List[float]]  # per epoch: loss, val_loss, auc, val_auc
  evaluation_uri: str
  model_run_uri: str

  @property
  def roc(self) -> Tuple[List[float], List[float]]:
    """False and true positive rates, from threshold 1 down to 0."""
    fpr, tpr = [], []
    for p in reversed(self.curve):
      fpr.append(p.false_positives / max(p.false_positives + p.true_negatives, 1e-12))
      tpr.append(p.true_positives / max(p.true_positives + p.false_negatives, 1e-12))
    return fpr, tpr

  @property
  def epochs(self) -> int:
    """Epochs the model trained, from its Trainer's history."""
    return len(self.history.get("loss", []))

  def to_json(self) -> Dict:
    return {"split": tfma_config.EVAL_SPLIT, **self.metrics,
            "blessed": self.blessed, "blessing_reason": self.reason,
            "baseline_auc": self.baseline_auc,
            "epochs": self.epochs,
            "confusion_matrix": ({"threshold": self.decision.threshold,
                                  **self.decision.counts()}
                                 if self.decision else None),
            "slices": self.slice_metrics}


def _slice_name(slice_key) -> Optional[Tuple[str, str]]:
  """(feature, value) of a single-feature slice; None for the overall slice."""
  if not slice_key.single_slice_keys:
    return None
  key = slice_key.single_slice_keys[0]
  value = getattr(key, key.WhichOneof("kind"))
  if isinstance(value, bytes):
    value = value.decode("utf-8", "replace")
  elif isinstance(value, float) and value.is_integer():
    value = int(value)
  return key.column, str(value)


def _read(loader, uri: str, what: str) -> list:
  try:
    return list(loader(uri))
  except (tf.errors.OpError, OSError, ValueError) as e:
    raise EvaluationError(f"cannot read the {what} in {uri}: {e}") from e


def _metric_values(metrics_for_slice, model_names) -> Dict[str, float]:
  values = {}
  for entry in metrics_for_slice.metric_keys_and_values:
    key = entry.key
    if (key.model_name in model_names and not key.is_diff
        and entry.value.HasField("double_value")):
      values[key.name] = entry.value.double_value.value
  return values


def _decision_matrix(metrics_for_slice) -> Optional[ConfusionPoint]:
  """The candidate's confusion matrix at the decision threshold, if TFMA wrote it."""
  for entry in metrics_for_slice.metric_keys_and_values:
    key = entry.key
    if (key.name == hm.CONFUSION_MATRIX and key.model_name in _CANDIDATE
        and not key.is_diff and entry.value.HasField("confusion_matrix_at_thresholds")):
      return ConfusionPoint.from_proto(entry.value.confusion_matrix_at_thresholds.matrices[0])
  return None


def _auc_failure_reason(validation, auc_floor: float) -> str:
  reasons = []
  for per_slice in validation.metric_validations_per_slice:
    for failure in per_slice.failures:
      value = failure.metric_value.double_value.value
      threshold = failure.metric_threshold
      if threshold.HasField("value_threshold"):
        reasons.append(f"{failure.metric_key.name} {value:.4f} is below the floor "
                       f"{threshold.value_threshold.lower_bound.value:.4f}")
      elif threshold.HasField("change_threshold"):
        allowed = -threshold.change_threshold.absolute.value
        reasons.append(f"{failure.metric_key.name} is {-value:.4f} below the latest "
                       f"blessed model's (allowed drop {allowed:.4f})")
      else:
        reasons.append(failure.message or str(failure.metric_key.name))
  if validation.missing_slices:
    reasons.append("no test examples to evaluate")
  return "; ".join(reasons) or (
      f"the Evaluator did not validate it (AUC floor {auc_floor})")


def read(evaluation_uri: str, blessed: bool, model_run_uri: str) -> ModelResults:
  """A model's results from its Evaluator's `evaluation` and Trainer's `model_run`."""
  if not tf.io.gfile.exists(os.path.join(evaluation_uri, "eval_config.json")):
    raise EvaluationError(f"{evaluation_uri} holds no TFMA evaluation "
                          "(eval_config.json is missing)")
  metrics_by_slice = _read(tfma.load_metrics, evaluation_uri, "metrics")
  plots_by_slice = _read(tfma.load_plots, evaluation_uri, "plots")
  validation = tfma.load_validation_result(evaluation_uri)

  overall, baseline, slices, curve, decision = {}, {}, {}, [], None
  for metrics_for_slice in metrics_by_slice:
    name = _slice_name(metrics_for_slice.slice_key)
    values = _metric_values(metrics_for_slice, _CANDIDATE)
    if name is None:
      overall = values
      baseline = _metric_values(metrics_for_slice, (_BASELINE,))
      decision = _decision_matrix(metrics_for_slice)
    elif tfma_config.AUC in values:
      feature, value = name
      slices.setdefault(feature, {})[value] = {
          tfma_config.AUC: round(values[tfma_config.AUC], 4),
          "example_count": int(values.get("example_count", 0))}
  if not overall:
    raise EvaluationError(f"{evaluation_uri} has no overall metrics")
  for plots_for_slice in plots_by_slice:
    if _slice_name(plots_for_slice.slice_key) is not None:
      continue
    for entry in plots_for_slice.plot_keys_and_values:
      if entry.key.model_name in _CANDIDATE and entry.value.HasField(
          "confusion_matrix_at_thresholds"):
        curve = sorted(map(ConfusionPoint.from_proto,
                           entry.value.confusion_matrix_at_thresholds.matrices),
                       key=lambda p: p.threshold)

  auc = overall[tfma_config.AUC]
  eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
  floor = _auc_floor(eval_config)
  baseline_auc = baseline.get(tfma_config.AUC)
  if blessed:
    reason = f"auc {auc:.4f} >= floor {floor:.4f}"
    if baseline_auc is not None:
      reason += f"; latest blessed model's auc {baseline_auc:.4f}"
  else:
    reason = _auc_failure_reason(validation, floor)

  history = training_history.read(model_run_uri)
  metrics = {name: round(overall[name], 4) if name != "example_count" else int(overall[name])
             for name in tfma_config.REPORTED_METRICS if name in overall}
  return ModelResults(
      metrics=metrics,
      slice_metrics={f: dict(sorted(v.items())) for f, v in sorted(slices.items())},
      curve=curve, decision=decision, blessed=blessed, reason=reason,
      baseline_auc=round(baseline_auc, 4) if baseline_auc is not None else None,
      history=history, evaluation_uri=evaluation_uri, model_run_uri=model_run_uri)


def _auc_floor(eval_config) -> float:
  for spec in eval_config.metrics_specs:
    for metric in spec.metrics:
      thresholds = [metric.threshold] + [t.threshold for t in metric.per_slice_thresholds]
      for threshold in thresholds:
        if threshold.HasField("value_threshold"):
          return threshold.value_threshold.lower_bound.value
  return float("nan")
