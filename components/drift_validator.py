"""DriftValidator: stops a span whose data moved too far from the previous span's.

TFX 1.16's ExampleValidator checks statistics against the schema alone: it never
hands TFDV the previous statistics, so the schema's drift comparators check
nothing there. This component does: the newest span's statistics (its train
split) against those of the span before it, through `tfdv.validate_statistics`
with the comparators and thresholds of components/drift.py for the span length. Every distance is
written to drift.json (the timeline of a replay reads it); a distance over its
threshold fails the run before anything trains, naming the feature and the
distance, unless `accept_drift` (`recsys run --accept-drift`).
"""
import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from common import progress
from components import drift
from components.anomalies_gate import DataValidationError

COMPARED_SPLIT = "train"  # the largest share of each span
REPORT_FILE = "drift.json"
_DRIFT_TYPES = {anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
                anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH}
_COMPARATOR_NAMES = {drift.INFINITY_NORM: "L-infinity distance",
                     drift.JENSEN_SHANNON: "Jensen-Shannon divergence"}


class DriftReport(types.Artifact):
  """drift.json: each compared feature's distance from the previous span's data."""
  TYPE_NAME = "recsys.DriftReport"


def compare(current: statistics_pb2.DatasetFeatureStatisticsList,
            previous: statistics_pb2.DatasetFeatureStatisticsList,
            schema, thresholds=drift.THRESHOLDS) -> Dict[str, Dict]:
  """Per feature compared (those of `thresholds` both spans have): comparator,
  distance, threshold and whether it drifted.

  A user feature's threshold is its calibrated one or, if larger, the distance the
  two spans' numbers of users give by chance (`drift.sampling_thresholds`): both
  are in the result, with those numbers.
  """
  sampling = drift.sampling_thresholds(current.datasets[0], previous.datasets[0], thresholds)
  fitted = {name: (comparator, max(threshold, sampling.get(name, {}).get("chance_distance", 0.0)))
            for name, (comparator, threshold) in thresholds.items()}
  with_comparators = drift.with_drift_comparators(schema, fitted)
  anomalies = tfdv.validate_statistics(current, with_comparators,
                                       previous_statistics=previous)
  drifted = {name for name, info in anomalies.anomaly_info.items()
             if any(reason.type in _DRIFT_TYPES for reason in info.reason)}
  measured = {}
  for info in anomalies.drift_skew_info:
    name = ".".join(info.path.step)
    for measurement in info.drift_measurements:
      measured[name] = (measurement.value, measurement.threshold)
  return {name: {"comparator": thresholds[name][0], "distance": float(distance),
                 "threshold": float(threshold), "drifted": name in drifted,
                 "calibrated_threshold": float(thresholds[name][1]), **sampling.get(name, {})}
          for name, (distance, threshold) in sorted(measured.items())}


def describe(distances: Dict[str, Dict]) -> List[str]:
  """One line per drifted feature: name, distance, threshold (and where it comes from
  when the spans' numbers of users set it)."""
  lines = []
  for name, d in sorted(distances.items()):
    if not d["drifted"]:
      continue
    line = (f"feature '{name}': {_COMPARATOR_NAMES[d['comparator']]} {d['distance']:.4g} "
            f"above its threshold {d['threshold']:.4g}")
    if d["threshold"] > d.get("calibrated_threshold", d["threshold"]):
      users = d["effective_users"]
      line += (f" (what spans of {users[0]:,} and then {users[1]:,} effective users show "
               f"by chance; calibrated {d['calibrated_threshold']:g})")
    lines.append(line)
  return lines


def previous_span(current: types.Artifact, candidates: List[types.Artifact]
                  ) -> Optional[types.Artifact]:
  """The statistics of the latest span before `current`'s (the newest such artifact)."""
  earlier = [c for c in candidates if c.span < current.span]
  return max(earlier, key=lambda c: (c.span, c.id)) if earlier else None


def _statistics(artifact) -> statistics_pb2.DatasetFeatureStatisticsList:
  return stats_artifact_utils.load_statistics(artifact, COMPARED_SPLIT).proto()


@component
def DriftValidator(statistics: InputArtifact[standard_artifacts.ExampleStatistics],
                   schema: InputArtifact[standard_artifacts.Schema],
                   report: OutputArtifact[DriftReport],
                   accept_drift: Parameter[int],
                   thresholds: Parameter[str],
                   code_fingerprint: Parameter[str],
                   every_span: InputArtifact[List[standard_artifacts.ExampleStatistics]] = None):
  """Compares `statistics` with the previous span's among `every_span` (every
  StatisticsGen output the run folder holds); see the module docstring.

  `thresholds`: JSON of {feature: [comparator, threshold]} (drift.thresholds_for).

  `code_fingerprint` (common.code_fingerprint) only keys the cache.
  """
  del code_fingerprint
  previous = previous_span(statistics, every_span or [])
  result = {"span": statistics.span, "previous_span": None, "features": {},
            "accepted": bool(accept_drift)}
  if previous is None:
    progress.report("drift", f"span {statistics.span}: no earlier span to compare with")
  else:
    schema_proto = io_utils.SchemaReader().read(
        io_utils.get_only_uri_in_dir(schema.uri))
    result["previous_span"] = previous.span
    result["features"] = compare(_statistics(statistics), _statistics(previous),
                                 schema_proto, {name: tuple(pair) for name, pair in
                                                json.loads(thresholds).items()})
  problems = describe(result["features"])
  tf.io.gfile.makedirs(report.uri)
  with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_FILE), "w") as f:
    json.dump(result, f, indent=1)
  report.set_int_custom_property("drifted", int(bool(problems)))
  if previous is None:
    return
  against = f"span {statistics.span} against span {previous.span}"
  if not problems:
    progress.report("drift", f"{against}: every compared feature within its threshold")
    return
  if accept_drift:
    progress.report("drift", f"{against}: drift accepted (--accept-drift): "
                    + "; ".join(problems))
    return
  raise DataValidationError(
      f"{against}: the data drifted; nothing was trained or pushed.\n  "
      + "\n  ".join(problems)
      + "\nIf the change is real (a new feed, a new season), run again with --accept-drift.")
