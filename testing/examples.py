"""Examples artifacts for tests and benchmarks: ingested as the pipeline does, or
dealt out into a window of one artifact per span."""
import os
from typing import List, Optional


def ingest(data_dir: str, output_uri: str, **exec_properties):
  """MovieLensExampleGen's executor as TFX runs it, Beam in this process: the
  Examples artifact it wrote into `output_uri` (a 100K-layout release).

  `exec_properties` add to or replace the defaults (random split, seed 42).
  """
  # TFX and TensorFlow load only when a test or benchmark ingests.
  # pylint: disable=g-import-not-at-top
  from tfx.dsl.components.base import base_beam_executor
  from tfx.types import standard_artifacts
  from tfx.utils import proto_utils

  from components.movielens_example_gen import component
  from components.movielens_example_gen import executor
  from pipeline import configs
  # pylint: enable=g-import-not-at-top
  examples = standard_artifacts.Examples()
  examples.uri = output_uri
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=configs.default_beam_args())
  executor.Executor(context).Do({}, {executor.EXAMPLES_KEY: [examples]}, {
      "dataset": "100k", "data_dir": data_dir, "seed": 42, "lines_per_shard": 700,
      "output_config": proto_utils.proto_to_json(component.default_output_config()),
      "split": "random", **exec_properties})
  return examples


def with_histories(table, length: Optional[int] = None):
  """`table` (an Arrow table as parsing.read_release gives it) with each rating's
  history, as ingestion writes it with every rating in one split
  (components/movielens_example_gen/histories.py)."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import pyarrow.compute as pc

  from components.movielens_example_gen import histories
  from models import features
  # pylint: enable=g-import-not-at-top
  users, movies, times = (np.array(pc.list_flatten(table.column(name)).to_pylist())
                          for name in (features.USER_ID, features.MOVIE_ID,
                                       features.TIMESTAMP))
  users, movies = users.astype(str).astype(object), movies.astype(str).astype(object)
  splits = np.zeros(len(times), np.int64)
  built = histories.RatingHistories.of(
      users, movies, times, splits,
      length=features.HISTORY_LENGTH if length is None else length)
  movie_ids, ages = built.arrow_columns(users, times, splits)
  return table.append_column(features.HISTORY_MOVIE_IDS, movie_ids).append_column(
      features.HISTORY_AGE_SECONDS, ages)


def dealt_out(examples, folder: str, num_artifacts: int) -> List:
  """`examples`' records dealt out, split by split, to `num_artifacts` Examples
  artifacts in `folder`: a window as a span run's Transform and Trainers read it,
  one artifact per span."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from tfx.types import artifact_utils
  from tfx.types import standard_artifacts
  # pylint: enable=g-import-not-at-top
  window = []
  for index in range(num_artifacts):
    artifact = standard_artifacts.Examples()
    artifact.uri = os.path.join(folder, f"span-{index}")
    artifact.split_names = examples.split_names
    window.append(artifact)
  for split in artifact_utils.decode_split_names(examples.split_names):
    files = tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{split}", "*"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    for index, artifact in enumerate(window):
      os.makedirs(os.path.join(artifact.uri, f"Split-{split}"))
      with tf.io.TFRecordWriter(os.path.join(artifact.uri, f"Split-{split}", "data.gz"),
                                options="GZIP") as writer:
        for record in records[index::num_artifacts]:
          writer.write(record)
  return window


def run_transform(executor_class, examples: List, folder: str) -> str:
  """`executor_class` (TFX's Transform executor or the pipeline's) on `examples`,
  with the exec properties of the pipeline's own Transform: the Transform graph's
  folder, in `folder`."""
  # pylint: disable=g-import-not-at-top
  import shutil

  from tfx.dsl.components.base import base_beam_executor
  from tfx.types import standard_artifacts

  from pipeline import configs
  from pipeline import pipeline as pipeline_dsl
  # pylint: enable=g-import-not-at-top
  config = configs.PipelineConfig(dataset="100k", data_dir=folder,
                                  output_dir=os.path.join(folder, "run"))
  transform = next(c for c in pipeline_dsl.create_components(config) if c.id == "Transform")
  schema = standard_artifacts.Schema()
  schema.uri = os.path.join(folder, "schema")
  os.makedirs(schema.uri)
  shutil.copy(configs.SCHEMA_FILE, schema.uri)
  graph = standard_artifacts.TransformGraph()
  graph.uri = os.path.join(folder, "transform_graph")
  os.makedirs(graph.uri)
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=configs.default_beam_args(), tmp_dir=os.path.join(folder, "tmp"))
  executor_class(context).Do(
      {"examples": examples, "schema": [schema]}, {"transform_graph": [graph]},
      {k: v for k, v in transform.exec_properties.items() if v is not None})
  return graph.uri
