"""Platt scaling of the like probability (models/calibration.py)."""
import numpy as np
import pytest
import tensorflow as tf

from models import calibration


def _overconfident(seed=0, n=50_000):
  """Labels drawn from true probabilities, and a model's too-sure, too-high guesses."""
  rng = np.random.default_rng(seed)
  true_logits = rng.normal(0, 1.2, n)
  labels = (rng.random(n) < 1 / (1 + np.exp(-true_logits))).astype(np.int64)
  predicted = 1 / (1 + np.exp(-(2.0 * true_logits + 0.5)))
  return predicted, labels


def test_fit_recovers_the_distortion_and_calibrates_the_mean():
  predicted, labels = _overconfident()
  slope, intercept = calibration.fit(predicted, labels)
  # predicted logit = 2 t + 0.5, so t = 0.5 * logit - 0.25.
  assert slope == pytest.approx(0.5, abs=0.03)
  assert intercept == pytest.approx(-0.25, abs=0.05)
  calibrated = calibration.Calibration(slope, intercept)(tf.constant(predicted)).numpy()
  assert abs(predicted.mean() / labels.mean() - 1) > 0.05  # miscalibrated before
  assert calibrated.mean() / labels.mean() == pytest.approx(1.0, abs=0.01)


def test_keeps_the_order_so_rankings_and_auc_do_not_change():
  predicted, labels = _overconfident(seed=1, n=2_000)
  calibrate = calibration.Calibration(*calibration.fit(predicted, labels))
  calibrated = calibrate(tf.constant(predicted)).numpy()
  assert (np.argsort(calibrated, kind="stable") == np.argsort(predicted, kind="stable")).all()


def test_a_calibrated_model_is_left_nearly_as_it_is():
  rng = np.random.default_rng(2)
  probabilities = rng.uniform(0.05, 0.95, 40_000)
  labels = (rng.random(40_000) < probabilities).astype(np.int64)
  slope, intercept = calibration.fit(probabilities, labels)
  assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05)


def test_degenerate_eval_data_gives_finite_weights():
  slope, intercept = calibration.fit(np.full(100, 0.7), np.ones(100))
  assert np.isfinite([slope, intercept]).all()
  assert 0 < calibration.Calibration(slope, intercept)(tf.constant([0.7])).numpy()[0] <= 1


def test_saved_and_loaded_with_its_weights(tmp_path):
  module = tf.Module()
  module.calibration = calibration.Calibration(0.5, -0.25)
  module.apply = tf.function(lambda p: module.calibration(p),
                             input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path))
  expected = 1 / (1 + np.exp(-(0.5 * np.log(0.8 / 0.2) - 0.25)))
  assert loaded.apply(tf.constant([0.8])).numpy()[0] == pytest.approx(expected, rel=1e-5)
