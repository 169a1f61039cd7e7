"""Runs the project's preprocessing_fn with tf.Transform on Beam, outside TFX, for unit tests."""
import dataclasses
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata
from tensorflow_transform.tf_metadata import metadata_io
from tensorflow_transform.tf_metadata import schema_utils
from tfx.utils import io_utils

from models import features
from models import preprocessing
from pipeline import configs


@dataclasses.dataclass
class Transformed:
  output: tft.TFTransformOutput
  raw: List[Dict[str, list]]  # instance dicts
  serialized: List[bytes]  # the same rows as raw tf.Examples
  columns: Dict[str, np.ndarray]  # transformed features, one array each


def raw_feature_spec(without=()):
  schema = io_utils.parse_pbtxt_file(configs.SCHEMA_FILE, schema_pb2.Schema())
  spec = schema_utils.schema_as_feature_spec(schema).feature_spec
  return {k: v for k, v in spec.items() if k not in without}


def to_tf_example(row: Dict[str, list]) -> bytes:
  def feature(key, values):
    if not values:  # an empty history: the type its feature has in the schema
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=[])) if (
          key == features.HISTORY_MOVIE_IDS) else tf.train.Feature(
              int64_list=tf.train.Int64List(value=[]))
    if isinstance(values[0], bytes):
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if isinstance(values[0], float):
      return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Example(features=tf.train.Features(
      feature={k: feature(k, v) for k, v in row.items()})).SerializeToString()


def run_transform(rows: List[Dict[str, list]], output_dir: Optional[str] = None
                  ) -> Transformed:
  """Analyzes and transforms `rows` (instance dicts of raw features); the transform
  graph goes to `output_dir` (default: a new temporary folder)."""
  spec = raw_feature_spec(without=[k for k in raw_feature_spec() if k not in rows[0]])
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
  output_dir = output_dir or tempfile.mkdtemp(prefix="transform_fn_")
  with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
    (transformed, _), transform_fn = (
        (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing.preprocessing_fn, output_record_batches=False))
    _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
  # The raw schema, which TFX's Transform writes beside the transform graph.
  metadata_io.write_metadata(metadata, os.path.join(
      output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
  columns = {k: np.array([row[k] for row in transformed]) for k in transformed[0]}
  return Transformed(tft.TFTransformOutput(output_dir), rows,
                     [to_tf_example(r) for r in rows], columns)


def rows_from_table(table) -> List[Dict[str, list]]:
  """Arrow batch rows (as parsing.read_release gives them) to instance dicts."""
  return [{k: v for k, v in row.items() if k != features.RAW_USER_AGE}
          for row in table.to_pylist()]
