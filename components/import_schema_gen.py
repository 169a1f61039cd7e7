"""ImportSchemaGen: TFX's, rerun when the schema file's content changes.

TFX's ImportSchemaGen keys its cache on the file's path alone, so an edited
schema (say, a genre added to its domain) would be served from the cache, and
the data checks would go on using the old one. This one also takes the content's
fingerprint (common.code_fingerprint.of_file) as a parameter; its executor,
TFX's, does not read it.
"""
from tfx import types
from tfx.components.schema_gen.import_schema_gen import component as tfx_import_schema_gen
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.types.component_spec import ExecutionParameter


class ImportSchemaGenSpec(standard_component_specs.ImportSchemaGenSpec):
  PARAMETERS = {**standard_component_specs.ImportSchemaGenSpec.PARAMETERS,
                "schema_fingerprint": ExecutionParameter(type=str)}


class ImportSchemaGen(tfx_import_schema_gen.ImportSchemaGen):
  """Copies `schema_file` into the pipeline as its Schema artifact."""
  SPEC_CLASS = ImportSchemaGenSpec

  def __init__(self, schema_file: str, schema_fingerprint: str):  # pylint: disable=super-init-not-called
    spec = ImportSchemaGenSpec(
        schema_file=schema_file, schema_fingerprint=schema_fingerprint,
        schema=types.Channel(type=standard_artifacts.Schema))
    # TFX's __init__ builds its own spec; BaseComponent's takes this one.
    super(tfx_import_schema_gen.ImportSchemaGen, self).__init__(spec=spec)
