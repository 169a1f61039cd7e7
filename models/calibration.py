"""Platt scaling of a like model's probabilities, fitted on the eval split.

The served like probability is shown to people ("like 0.85"), so it should mean
what it says: over many predictions, the share of likes. A model trained with
early stopping, L2 penalties and an auxiliary rating loss is not calibrated by
construction. After training, the Trainer fits p' = sigmoid(slope * logit(p) +
intercept) to the eval split's labels (`fit`) and exports the model with it
(`Calibration`): a monotone map, so rankings and AUC are unchanged.
"""
from typing import Tuple

import numpy as np
import tensorflow as tf

_EPSILON = 1e-6
_NEWTON_STEPS = 25


def _logit(probabilities):
  p = np.clip(np.asarray(probabilities, np.float64), _EPSILON, 1 - _EPSILON)
  return np.log(p) - np.log1p(-p)


def fit(probabilities: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
  """(slope, intercept) of the logistic regression of `labels` on logit(p).

  Newton's method on the mean log loss, from the identity (1, 0); a small ridge
  keeps it defined on degenerate data (one class, or constant predictions).
  """
  x = _logit(probabilities).reshape(-1)
  y = np.asarray(labels, np.float64).reshape(-1)
  design = np.stack([x, np.ones_like(x)], axis=1)
  weights = np.array([1.0, 0.0])
  ridge = 1e-6 * np.eye(2)
  for _ in range(_NEWTON_STEPS):
    p = 1 / (1 + np.exp(-design @ weights))
    gradient = design.T @ (p - y) / len(y) + ridge @ (weights - [1.0, 0.0])
    hessian = (design * (p * (1 - p))[:, None]).T @ design / len(y) + ridge
    step = np.linalg.solve(hessian, gradient)
    weights -= step
    if np.max(np.abs(step)) < 1e-9:
      break
  return float(weights[0]), float(weights[1])


class Calibration(tf.Module):
  """p -> sigmoid(slope * logit(p) + intercept), saved with the model."""

  def __init__(self, slope: float = 1.0, intercept: float = 0.0):
    super().__init__(name="calibration")
    self.slope = tf.Variable(slope, dtype=tf.float32, trainable=False, name="slope")
    self.intercept = tf.Variable(intercept, dtype=tf.float32, trainable=False,
                                 name="intercept")

  def __call__(self, probabilities: tf.Tensor) -> tf.Tensor:
    p = tf.clip_by_value(tf.cast(probabilities, tf.float32), _EPSILON, 1 - _EPSILON)
    return tf.sigmoid(self.slope * (tf.math.log(p) - tf.math.log1p(-p)) + self.intercept)
