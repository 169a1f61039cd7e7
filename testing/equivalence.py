"""What two runs of the pipeline's Beam steps made, compared: the same examples in each
split, the same statistics, the same Transform vocabularies, the same metrics.

Used to check that a Beam engine (the Flink cluster) computes what the DirectRunner
does, by tests/test_flink.py on synthetic data and bench/engine_equivalence.py on
real MovieLens. Each comparison returns the differences it found, described for a
person; an empty list means equal.
"""
import glob
import math
import os
from typing import Dict, List, Optional, Set, Tuple

import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.components import Evaluator
from tfx.dsl.components.common.importer import Importer
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.types import standard_artifacts

from evaluation import tfma_config
from models import features
from pipeline import configs
from pipeline import pipeline as pipeline_dsl

Pair = Tuple[bytes, bytes]
# The pipeline's nodes up to and including Transform, as `create_components` makes them.
BEAM_STEPS_NODES = ("ImportSchemaGen", "MovieLensExampleGen", "StatisticsGen",
                    "ExampleValidator", "AnomaliesGate", "Transform")


def beam_steps_pipeline(config: configs.PipelineConfig, model_uri: Optional[str],
                        model: str = "cf") -> tfx_pipeline.Pipeline:
  """The pipeline's Beam steps on `config`'s runner: ingestion, statistics, Transform,
  and the Evaluator of `model` judging a given trained model (`model_uri`, e.g.
  another run's Trainer output) on this run's test split, as the pipeline's does.
  Without `model_uri`, the steps before the Evaluator: a later run with one reuses
  them from the cache.

  The Evaluator runs last, after Transform, so that a test knows which Beam job
  is whose.
  """
  nodes = {node.id: node for node in pipeline_dsl.create_components(config)}
  components = [nodes[node_id] for node_id in BEAM_STEPS_NODES]
  if model_uri is not None:
    components.extend(_evaluation(config, nodes, model_uri, model))
  return tfx_pipeline.Pipeline(
      pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
      components=components, enable_cache=config.enable_cache,
      metadata_connection_config=metadata.sqlite_metadata_connection_config(
          config.metadata_path),
      beam_pipeline_args=config.beam_args)


def _evaluation(config, nodes, model_uri: str, model: str) -> list:
  trained = Importer(source_uri=model_uri, artifact_type=standard_artifacts.Model
                     ).with_id(f"ImportedModel.{model}")
  evaluator = Evaluator(
      examples=nodes["MovieLensExampleGen"].outputs["examples"],
      model=trained.outputs["result"],
      example_splits=[tfma_config.EVAL_SPLIT],
      eval_config=tfma_config.eval_config(config.auc_floor, config.max_auc_drop),
  ).with_id(pipeline_dsl.evaluator_id(model))
  evaluator.add_upstream_node(nodes["Transform"])
  return [trained, evaluator]


def _split_folders(artifact_uri: str) -> Dict[str, str]:
  return {os.path.basename(path)[len("Split-"):]: path
          for path in sorted(glob.glob(os.path.join(artifact_uri, "Split-*")))}


def example_pairs(examples_uri: str) -> Dict[str, Set[Pair]]:
  """Split name -> the (user id, movie id) pairs of its tf.Examples."""
  pairs = {}
  for split, folder in _split_folders(examples_uri).items():
    files = sorted(glob.glob(os.path.join(folder, "*")))
    split_pairs = set()
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
      example = tf.train.Example.FromString(record.numpy())
      values = example.features.feature
      split_pairs.add((values[features.USER_ID].bytes_list.value[0],
                       values[features.MOVIE_ID].bytes_list.value[0]))
    pairs[split] = split_pairs
  return pairs


def compare_example_pairs(expected: Dict[str, Set[Pair]],
                          actual: Dict[str, Set[Pair]]) -> List[str]:
  differences = []
  if set(expected) != set(actual):
    differences.append(f"splits {sorted(expected)} != {sorted(actual)}")
  for split in sorted(set(expected) & set(actual)):
    missing, extra = expected[split] - actual[split], actual[split] - expected[split]
    if missing or extra:
      differences.append(f"{split}: {len(missing)} pairs missing, {len(extra)} extra "
                         f"(of {len(expected[split])}), e.g. {sorted(missing | extra)[:3]}")
  return differences


def statistics(statistics_uri: str) -> Dict[str, statistics_pb2.DatasetFeatureStatistics]:
  """Split name -> TFDV's statistics of it."""
  result = {}
  for split, folder in _split_folders(statistics_uri).items():
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with tf.io.gfile.GFile(os.path.join(folder, "FeatureStats.pb"), "rb") as f:
      stats.ParseFromString(f.read())
    result[split] = stats.datasets[0]
  return result


def _numbers(message, prefix: str = "") -> Dict[str, object]:
  """Every scalar field of a proto, by path; repeated fields by index."""
  found = {}
  for field, value in message.ListFields():
    path = f"{prefix}{field.name}"
    if field.type == field.TYPE_MESSAGE:
      items = value if field.label == field.LABEL_REPEATED else [value]
      for index, item in enumerate(items):
        found.update(_numbers(item, f"{path}[{index}]." if field.label ==
                              field.LABEL_REPEATED else f"{path}."))
    elif field.label == field.LABEL_REPEATED:
      for index, item in enumerate(value):
        found[f"{path}[{index}]"] = item
    else:
      found[path] = value
  return found


def compare_statistics(expected: Dict[str, statistics_pb2.DatasetFeatureStatistics],
                       actual: Dict[str, statistics_pb2.DatasetFeatureStatistics],
                       rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> List[str]:
  """Every number of every feature's statistics, floats to `rel_tol` (sums of floats
  add up in another order when the work is split differently)."""
  differences = []
  if set(expected) != set(actual):
    differences.append(f"splits {sorted(expected)} != {sorted(actual)}")
  for split in sorted(set(expected) & set(actual)):
    if expected[split].num_examples != actual[split].num_examples:
      differences.append(f"{split}: {expected[split].num_examples} examples != "
                         f"{actual[split].num_examples}")
    want = {f.path.step[0]: _numbers(f) for f in expected[split].features}
    got = {f.path.step[0]: _numbers(f) for f in actual[split].features}
    if set(want) != set(got):
      differences.append(f"{split}: features {sorted(want)} != {sorted(got)}")
    for feature in sorted(set(want) & set(got)):
      for path in sorted(set(want[feature]) | set(got[feature])):
        a, b = want[feature].get(path), got[feature].get(path)
        same = (math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
                if isinstance(a, float) and isinstance(b, float) else a == b)
        if not same:
          differences.append(f"{split}/{feature}.{path}: {a!r} != {b!r}")
  return differences


def vocabularies(transform_graph_uri: str) -> Dict[str, bytes]:
  """Vocabulary file name -> its bytes, as tf.Transform wrote them."""
  assets = os.path.join(transform_graph_uri, "transform_fn", "assets")
  return {name: open(os.path.join(assets, name), "rb").read()  # pylint: disable=consider-using-with
          for name in sorted(os.listdir(assets))}


def compare_vocabularies(expected: Dict[str, bytes], actual: Dict[str, bytes]) -> List[str]:
  differences = []
  if set(expected) != set(actual):
    differences.append(f"vocabulary files {sorted(expected)} != {sorted(actual)}")
  for name in sorted(set(expected) & set(actual)):
    if expected[name] != actual[name]:
      differences.append(f"vocabulary {name} differs ({len(expected[name])} bytes "
                         f"against {len(actual[name])})")
  return differences


def overall_metrics(evaluation_uri: str) -> Dict[str, float]:
  """The candidate model's overall metrics of a TFMA evaluation, by name."""
  metrics = {}
  for metrics_for_slice in tfma.load_metrics(evaluation_uri):
    if metrics_for_slice.slice_key.single_slice_keys:
      continue
    for key_and_value in metrics_for_slice.metric_keys_and_values:
      key = key_and_value.key
      if key.is_diff or key.model_name == "baseline":
        continue
      if key_and_value.value.HasField("double_value"):
        metrics[key.name] = key_and_value.value.double_value.value
  return metrics


def compare_metrics(expected: Dict[str, float], actual: Dict[str, float],
                    abs_tol: float = 1e-6) -> List[str]:
  return [f"{name}: {expected.get(name)!r} != {actual.get(name)!r}"
          for name in sorted(set(expected) | set(actual))
          if name not in expected or name not in actual
          or not math.isclose(expected[name], actual[name], rel_tol=0, abs_tol=abs_tol)]
