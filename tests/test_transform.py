"""The pipeline's Transform executor: a window of Examples artifacts analyzed as one."""
import filecmp
import os
import shutil

import pytest
import tensorflow as tf
from google.protobuf import json_format
from tfx.components.transform import executor as tfx_transform_executor
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import transform_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import transform
from pipeline import configs
from pipeline import pipeline as pipeline_dsl
from tests.conftest import ingest

pytestmark = pytest.mark.slow


def _examples(uri):
  examples = standard_artifacts.Examples()
  examples.uri = uri
  examples.split_names = artifact_utils.encode_split_names(["train", "eval", "test"])
  return examples


def _window_of(ingested, folder, num_spans):
  """The ingested artifact's examples dealt out to `num_spans` Examples artifacts,
  as a span run's window holds one artifact per span."""
  window = [_examples(str(folder / f"span-{span}")) for span in range(num_spans)]
  for split in ("train", "eval", "test"):
    [shard] = tf.io.gfile.glob(os.path.join(ingested.uri, f"Split-{split}", "*"))
    records = list(tf.data.TFRecordDataset(shard, compression_type="GZIP").as_numpy_iterator())
    for span, examples in enumerate(window):
      os.makedirs(os.path.join(examples.uri, f"Split-{split}"))
      with tf.io.TFRecordWriter(os.path.join(examples.uri, f"Split-{split}", "data.gz"),
                                options="GZIP") as writer:
        for record in records[span::num_spans]:
          writer.write(record)
  return window


def _run_transform(examples, folder):
  schema = standard_artifacts.Schema()
  schema.uri = str(folder / "schema")
  os.makedirs(schema.uri)
  shutil.copy(configs.SCHEMA_FILE, schema.uri)
  graph = standard_artifacts.TransformGraph()
  graph.uri = str(folder / "transform_graph")
  os.makedirs(graph.uri)
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=configs.default_beam_args(), tmp_dir=str(folder / "tmp"))
  transform.Executor(context).Do({"examples": examples, "schema": [schema]},
                                 {"transform_graph": [graph]}, {
      "preprocessing_fn": pipeline_dsl.PREPROCESSING_FN,
      "splits_config": json_format.MessageToJson(
          transform_pb2.SplitsConfig(analyze=["train"])),
      "disable_statistics": 1, "disable_analyzer_cache": True, "custom_config": "{}"})
  return os.path.join(graph.uri, "transform_fn", "assets")


def test_a_window_is_analyzed_as_one_dataset_with_the_same_vocabularies(
    synthetic_100k, tmp_path, monkeypatch):
  ingested = ingest(synthetic_100k.folder, str(tmp_path / "ingested"))
  window = _window_of(ingested, tmp_path, num_spans=3)

  # What reaches TFX's own processor, which hands each dataset to tf.Transform.
  datasets_analyzed = []
  tfx_run_beam = tfx_transform_executor.TransformProcessor._RunBeamImpl  # pylint: disable=protected-access

  def recording_run_beam(self, analyze_data_list, *args, **kwargs):
    datasets_analyzed.append([d.file_pattern for d in analyze_data_list])
    return tfx_run_beam(self, analyze_data_list, *args, **kwargs)

  monkeypatch.setattr(tfx_transform_executor.TransformProcessor, "_RunBeamImpl",
                      recording_run_beam)
  from_window = _run_transform(window, tmp_path / "from-window")
  from_one = _run_transform([ingested], tmp_path / "from-one")

  train_patterns = [os.path.join(e.uri, "Split-train", "*") for e in window]
  assert datasets_analyzed == [[train_patterns],
                               [os.path.join(ingested.uri, "Split-train", "*")]]
  # TFX's processor is itself again once the executor is done.
  assert tfx_transform_executor.TransformProcessor.__name__ == "TransformProcessor"

  vocabularies = sorted(os.listdir(from_one))
  assert vocabularies and sorted(os.listdir(from_window)) == vocabularies
  _, different, missing = filecmp.cmpfiles(from_one, from_window, vocabularies,
                                           shallow=False)
  assert not different and not missing
