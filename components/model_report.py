"""ModelReport: both exported models scored on the test split, side by side.

Scores go through each SavedModel's `serving_default` signature on the raw test
tf.Examples, exactly as TF Serving would call it, so the report also checks the
export. The run copies the result to `<output_dir>/report/metrics.json`.
"""
import json
import os
from typing import Dict

import numpy as np
import pandas as pd
import tensorflow as tf
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from models import features
from serving import signatures

METRICS_FILE = "metrics.json"
TEST_SPLIT = "test"
_BATCH = 8192


class ReportArtifact(types.Artifact):
  """A folder holding metrics.json: per model, its test-split metrics."""
  TYPE_NAME = "RecsysModelReport"


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> Dict[str, float]:
  """AUC (exact, ties averaged), log loss, accuracy at 0.5, counts."""
  labels = labels.astype(np.float64)
  positives = labels.sum()
  negatives = len(labels) - positives
  ranks = pd.Series(probabilities).rank(method="average").to_numpy()
  auc = (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
  clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
  log_loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
  return {"auc": round(float(auc), 4),
          "log_loss": round(float(log_loss), 4),
          "accuracy": round(float(np.mean((probabilities >= 0.5) == (labels == 1))), 4),
          "example_count": int(len(labels)),
          "positive_rate": round(float(positives / len(labels)), 4)}


def score_split(model_dir: str, example_files) -> Dict[str, np.ndarray]:
  """Like probabilities of the model for every example in the files, with labels."""
  serve = tf.saved_model.load(model_dir).signatures["serving_default"]
  labels, scores = [], []
  dataset = tf.data.TFRecordDataset(example_files, compression_type="GZIP").batch(_BATCH)
  label_spec = {features.LABEL: tf.io.FixedLenFeature([], tf.int64)}
  for serialized in dataset:
    labels.append(tf.io.parse_example(serialized, label_spec)[features.LABEL].numpy())
    scores.append(serve(examples=serialized)[signatures.OUTPUT_KEY].numpy())
  return {"labels": np.concatenate(labels), "probabilities": np.concatenate(scores)}


@component
def ModelReport(examples: InputArtifact[standard_artifacts.Examples],
                cf_model: InputArtifact[standard_artifacts.Model],
                deepfm_model: InputArtifact[standard_artifacts.Model],
                report: OutputArtifact[ReportArtifact]):
  """Writes metrics.json with each model's test-split metrics, AUC first."""
  files = tf.io.gfile.glob(os.path.join(
      artifact_utils.get_split_uri([examples], TEST_SPLIT), "*"))
  result = {}
  for name, model in (("cf", cf_model), ("deepfm", deepfm_model)):
    scored = score_split(path_utils.serving_model_path(model.uri), files)
    result[name] = {"split": TEST_SPLIT, **binary_metrics(scored["labels"],
                                                         scored["probabilities"])}
  with tf.io.gfile.GFile(os.path.join(report.uri, METRICS_FILE), "w") as f:
    json.dump(result, f, indent=2)
