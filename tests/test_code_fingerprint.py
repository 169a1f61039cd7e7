"""Code and schema fingerprints in the components' parameters (TFX's cache keys).

That an edit then reruns the component under LocalDagRunner is checked end to end
in test_pipeline.py (test_reruns_cache_reject_worse_models_and_keep_pushed_ones).
"""
import importlib
import json
import shutil
import sys

import pytest

from pipeline import code_fingerprint
from pipeline import configs
from pipeline import evaluation
from pipeline import histogram_metrics
from pipeline import pipeline as pipeline_dsl

_PROBE = "fingerprint_probe"  # a package made for these tests


@pytest.fixture
def probe_package(tmp_path, monkeypatch):
  """A two-module package on sys.path, and a function to move it elsewhere."""
  def place(folder):
    package = folder / _PROBE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("SIZE = 16\n")
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    sys.modules.pop(_PROBE, None)
    return package

  yield place
  sys.modules.pop(_PROBE, None)


def test_an_edit_changes_the_fingerprint_and_undoing_it_restores_it(probe_package, tmp_path):
  package = probe_package(tmp_path / "a")
  before = code_fingerprint.of(_PROBE)
  assert code_fingerprint.of(_PROBE) == before  # stable
  (package / "layers.py").write_text("SIZE = 32\n")
  assert code_fingerprint.of(_PROBE) != before
  (package / "layers.py").write_text("SIZE = 16\n")
  assert code_fingerprint.of(_PROBE) == before
  (package / "extra.py").write_text("")  # a new module counts too
  assert code_fingerprint.of(_PROBE) != before


def test_the_same_code_elsewhere_has_the_same_fingerprint(probe_package, tmp_path):
  first = probe_package(tmp_path / "a")
  here = code_fingerprint.of(_PROBE)
  shutil.rmtree(first)
  probe_package(tmp_path / "b" / "c")
  assert code_fingerprint.of(_PROBE) == here


def test_modules_of_a_package_and_unknown_modules():
  assert code_fingerprint.of("models") != code_fingerprint.of("models.features")
  assert code_fingerprint.of("models.cf", "models.deepfm") == code_fingerprint.of(
      "models.deepfm", "models.cf")
  with pytest.raises(ValueError, match="no Python source for module 'no_such_module'"):
    code_fingerprint.of("no_such_module")


def test_every_component_of_ours_carries_its_fingerprint(tmp_path):
  schema = tmp_path / "schema.pbtxt"
  shutil.copy(configs.SCHEMA_FILE, schema)
  config = configs.PipelineConfig(dataset="100k", output_dir=str(tmp_path / "run"),
                                  schema_file=str(schema))

  def parameters():
    return {node.id: node.exec_properties
            for node in pipeline_dsl.create_components(config)}

  nodes = parameters()
  code = {name: code_fingerprint.of(*modules)
          for name, modules in pipeline_dsl.CODE.items()}
  assert nodes["MovieLensExampleGen"]["code_fingerprint"] == code["MovieLensExampleGen"]
  assert nodes["AnomaliesGate"]["code_fingerprint"] == code["AnomaliesGate"]
  assert nodes["ModelReport"]["code_fingerprint"] == code["ModelReport"]
  assert json.loads(nodes["Transform"]["custom_config"])["code_fingerprint"] == (
      code["Transform"])
  for model in pipeline_dsl.MODELS:
    assert json.loads(nodes[pipeline_dsl.trainer_id(model)]["custom_config"])[
        "code_fingerprint"] == code["Trainer"]
    assert json.loads(nodes[pipeline_dsl.pusher_id(model)]["custom_config"])[
        "code_fingerprint"] == code["Pusher"]
  # The schema by content: TFX's own ImportSchemaGen keys on the path alone.
  before = nodes["ImportSchemaGen"]["schema_fingerprint"]
  schema.write_text(schema.read_text() + "\n# reviewed\n")
  assert parameters()["ImportSchemaGen"]["schema_fingerprint"] != before


def test_the_evaluators_custom_metrics_carry_their_fingerprint():
  config = evaluation.eval_config(auc_floor=0.75, max_auc_drop=0.005)
  ours = [m for spec in config.metrics_specs for m in spec.metrics
          if m.module == histogram_metrics.__name__]
  assert len(ours) == 2
  for metric in ours:
    assert json.loads(metric.config)["code_fingerprint"] == code_fingerprint.of(
        histogram_metrics.__name__)
