"""AnomaliesGate: stops the run when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets the pipeline go on; a recommender
trained on data that broke its schema is worse than no new model, so this gate
fails the run with a message naming each split, feature and problem.
"""
import os
from typing import List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from common import errors

ANOMALIES_FILE = "SchemaDiff.pb"  # ExampleValidator's output file per split


class DataValidationError(errors.RecsysError, RuntimeError):
  """The examples do not match the schema; the message lists each anomaly."""


def describe_anomalies(anomalies: standard_artifacts.ExampleAnomalies) -> List[str]:
  """One line per anomaly: `split 'train': feature 'x': what was wrong`."""
  problems = []
  for split in artifact_utils.decode_split_names(anomalies.split_names):
    path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
    found = anomalies_pb2.Anomalies()
    found.ParseFromString(io_utils.read_bytes_file(path))
    for feature, info in sorted(found.anomaly_info.items()):
      problems.append(f"split '{split}': feature '{feature}': {info.description.strip()} "
                      f"({info.short_description})")
    if found.HasField("dataset_anomaly_info"):
      problems.append(f"split '{split}': {found.dataset_anomaly_info.description}")
  return problems


@component
def AnomaliesGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
                  code_fingerprint: Parameter[str]):
  """Raises DataValidationError when any split has an anomaly; passes otherwise.

  `code_fingerprint` (common.code_fingerprint) only keys the cache.
  """
  del code_fingerprint
  problems = describe_anomalies(anomalies)
  if problems:
    raise DataValidationError(
        "Data validation failed: the examples do not match the schema in "
        "pipeline/schema/schema.pbtxt.\n  " + "\n  ".join(problems))
