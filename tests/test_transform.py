"""The pipeline's Transform executor: a window of Examples artifacts analyzed as one."""
import filecmp
import os

import pytest
from tfx.components.transform import executor as tfx_transform_executor

from components import transform
from testing.examples import dealt_out
from testing.examples import ingest
from testing.examples import run_transform

pytestmark = pytest.mark.slow


def _assets(transform_graph: str) -> str:
  return os.path.join(transform_graph, "transform_fn", "assets")


def test_a_window_is_analyzed_as_one_dataset_with_the_same_vocabularies(
    synthetic_100k, tmp_path, monkeypatch):
  ingested = ingest(synthetic_100k.folder, str(tmp_path / "ingested"))
  window = dealt_out(ingested, str(tmp_path / "window"), num_artifacts=3)

  # What reaches TFX's own processor, which hands each dataset to tf.Transform.
  datasets_analyzed = []
  tfx_run_beam = tfx_transform_executor.TransformProcessor._RunBeamImpl  # pylint: disable=protected-access

  def recording_run_beam(self, analyze_data_list, *args, **kwargs):
    datasets_analyzed.append([d.file_pattern for d in analyze_data_list])
    return tfx_run_beam(self, analyze_data_list, *args, **kwargs)

  monkeypatch.setattr(tfx_transform_executor.TransformProcessor, "_RunBeamImpl",
                      recording_run_beam)
  from_window = _assets(run_transform(transform.Executor, window,
                                      str(tmp_path / "from-window")))
  from_one = _assets(run_transform(transform.Executor, [ingested], str(tmp_path / "from-one")))

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
