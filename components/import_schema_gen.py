"""ImportSchemaGen: TFX's, rerun when the schema file's content changes, and fitted
to the release.

TFX's ImportSchemaGen keys its cache on the file's path alone, so an edited
schema (say, a genre added to its domain) would be served from the cache, and
the data checks would go on using the old one. This one also takes the content's
fingerprint (common.code_fingerprint.of_file) as a parameter.

One schema file describes every release; `for_dataset` fits it to what a release
holds, so that the checks, Transform and the models see only features the data has
(MovieLens 20M and 25M have no user demographics and rate in half stars).
"""
import os

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import types
from tfx.components.schema_gen import executor as schema_gen_executor
from tfx.components.schema_gen.import_schema_gen import component as tfx_import_schema_gen
from tfx.components.schema_gen.import_schema_gen import executor as tfx_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils

from models import features


def for_dataset(schema: schema_pb2.Schema, dataset: str) -> schema_pb2.Schema:
  """A copy of `schema` for the examples of `dataset`: without the features it does
  not have, its ratings from its lowest, and for releases without demographics
  (20M, 25M) any number of genres a movie has (the models read the first
  `features.MAX_GENRES`)."""
  fitted = schema_pb2.Schema()
  fitted.CopyFrom(schema)
  if dataset in features.WITH_DEMOGRAPHICS:
    return fitted
  kept = [f for f in fitted.feature if f.name not in features.DEMOGRAPHIC_FEATURES]
  del fitted.feature[:]
  fitted.feature.extend(kept)
  used_domains = {f.domain for f in kept if f.domain}
  kept_domains = [d for d in fitted.string_domain if d.name in used_domains]
  del fitted.string_domain[:]
  fitted.string_domain.extend(kept_domains)
  for feature in fitted.feature:
    if feature.name == features.USER_RATING:
      feature.float_domain.min = features.LOWEST_RATING[dataset]
    if feature.name == features.MOVIE_GENRES:
      feature.value_count.ClearField("max")
  return fitted


class Executor(tfx_executor.Executor):
  """TFX's executor, then the copied schema fitted to the run's dataset."""

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    super().Do(input_dict, output_dict, exec_properties)
    path = os.path.join(artifact_utils.get_single_uri(
        output_dict[standard_component_specs.SCHEMA_KEY]), schema_gen_executor.DEFAULT_FILE_NAME)
    schema = io_utils.SchemaReader().read(path)
    io_utils.write_pbtxt_file(path, for_dataset(schema, exec_properties["dataset"]))


class ImportSchemaGenSpec(standard_component_specs.ImportSchemaGenSpec):
  PARAMETERS = {**standard_component_specs.ImportSchemaGenSpec.PARAMETERS,
                "schema_fingerprint": ExecutionParameter(type=str),
                "dataset": ExecutionParameter(type=str)}


class ImportSchemaGen(tfx_import_schema_gen.ImportSchemaGen):
  """Copies `schema_file` into the pipeline as its Schema artifact, fitted to `dataset`."""
  SPEC_CLASS = ImportSchemaGenSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, schema_file: str, schema_fingerprint: str,  # pylint: disable=super-init-not-called
               dataset: str = features.DEFAULT_DATASET):
    spec = ImportSchemaGenSpec(
        schema_file=schema_file, schema_fingerprint=schema_fingerprint, dataset=dataset,
        schema=types.Channel(type=standard_artifacts.Schema))
    # TFX's __init__ builds its own spec; BaseComponent's takes this one.
    super(tfx_import_schema_gen.ImportSchemaGen, self).__init__(spec=spec)
