"""Transform: TFX's, analyzing a window of Examples artifacts as one dataset.

A span run's Transform reads its window as one Examples artifact per span. TFX
1.16's executor hands each artifact's split to tf.Transform as a dataset of its own,
and tf.Transform builds every analyzer's Beam stages once per dataset, so that they
can be cached per dataset, even when the analysis cache is off. On the DirectRunner
each stage costs a fixed share of a second, and a weekly window of MovieLens-100K
holds dozens of spans (docs/performance.md#transform has the measurement).

This executor joins the datasets to analyze into one, read from all their file
patterns, before tf.Transform sees them. The vocabularies and statistics it writes
are those of the same ratings analyzed as one artifact (tests/test_transform.py).
With the analysis cache on, each dataset must stay its own to be cached, and the
executor leaves them so.
"""
import contextlib
from typing import Any, Dict, List

from tfx import types
from tfx.components import Transform as TfxTransform
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec


class _WindowAsOneDatasetProcessor(transform_executor.TransformProcessor):
  """TFX's TransformProcessor, with the datasets to analyze joined into one."""

  def _RunBeamImpl(self, analyze_data_list, transform_data_list, preprocessing_fn,
                   stats_options_updater_fn, force_tf_compat_v1, save_options,
                   input_dataset_metadata, transform_output_path,
                   raw_examples_data_format, temp_path, input_cache_dir,
                   output_cache_dir, *args, **kwargs):
    if len(analyze_data_list) > 1 and not (input_cache_dir or output_cache_dir):
      analyze_data_list = [self._joined(analyze_data_list, input_dataset_metadata.schema)]
    return super()._RunBeamImpl(
        analyze_data_list, transform_data_list, preprocessing_fn,
        stats_options_updater_fn, force_tf_compat_v1, save_options,
        input_dataset_metadata, transform_output_path, raw_examples_data_format,
        temp_path, input_cache_dir, output_cache_dir, *args, **kwargs)

  def _joined(self, datasets, schema):
    """One dataset reading every file pattern of `datasets`."""
    first = datasets[0]
    joined = transform_executor._Dataset(  # pylint: disable=protected-access
        first.file_pattern, first.file_format, first.data_format,
        first.data_view_uri)
    # make_tfxio takes a list of patterns (one format each) for one TFXIO.
    joined._file_pattern = [d.file_pattern for d in datasets]  # pylint: disable=protected-access
    joined._file_format = [d.file_format for d in datasets]  # pylint: disable=protected-access
    joined.dataset_key = joined.dataset_key.non_cacheable()
    joined.index = 0
    joined.tfxio = self._CreateTFXIO(joined, schema)
    return joined


@contextlib.contextmanager
def _transform_processor(processor_class):
  # TFX's Executor.Do builds its inputs, then calls the module's TransformProcessor;
  # it takes no other processor. The swap lasts for one Do, in the process running
  # the executor (Beam workers never call Do).
  tfx_processor = transform_executor.TransformProcessor
  transform_executor.TransformProcessor = processor_class
  try:
    yield
  finally:
    transform_executor.TransformProcessor = tfx_processor


class Executor(transform_executor.Executor):
  """TFX's Transform executor, analyzing its input artifacts as one dataset."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    with _transform_processor(_WindowAsOneDatasetProcessor):
      super().Do(input_dict, output_dict, exec_properties)


class Transform(TfxTransform):
  """TFX's Transform with the executor above."""
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
