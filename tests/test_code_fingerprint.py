"""Code and schema fingerprints in the components' parameters (TFX's cache keys).

A component's fingerprint covers the project modules its entry point imports,
transitively. These tests edit a copy of the project's packages and check which
components' fingerprints move. That a moved fingerprint reruns the component
under LocalDagRunner, and nothing else, is checked end to end in test_pipeline.py
(test_reruns_cache_reject_worse_models_and_keep_pushed_ones).
"""
import json
import pathlib
import shutil

import pytest

from common import code_fingerprint
from evaluation import histogram_metrics
from evaluation import tfma_config
from pipeline import configs
from pipeline import pipeline as pipeline_dsl
from tests.conftest import REPO


def _copy_project(folder: pathlib.Path) -> pathlib.Path:
  """The project's packages (sources only) copied under `folder`."""
  for package in code_fingerprint.PROJECT_PACKAGES:
    shutil.copytree(REPO / package, folder / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  return folder


def _fingerprints(root: pathlib.Path) -> dict:
  return {component: code_fingerprint.of(module, root=str(root))
          for component, module in pipeline_dsl.ENTRY_MODULES.items()}


def _changed(before: dict, after: dict) -> set:
  return {component for component in before if before[component] != after[component]}


@pytest.fixture
def project(tmp_path) -> pathlib.Path:
  return _copy_project(tmp_path / "project")


def test_the_project_packages_are_the_ones_setup_installs():
  on_disk = {path.parent.name for path in REPO.glob("*/__init__.py")} - {"tests"}
  assert set(code_fingerprint.PROJECT_PACKAGES) == on_disk


def test_editing_deepfm_reruns_only_its_trainer(project):
  before = _fingerprints(project)
  deepfm = project / "models" / "deepfm.py"
  deepfm.write_text(deepfm.read_text().replace("dropout", "dropout_rate"))
  assert _changed(before, _fingerprints(project)) == {"Trainer.deepfm"}


def test_editing_a_test_helper_reruns_nothing(project):
  before = _fingerprints(project)
  synthetic = project / "testing" / "synthetic.py"
  synthetic.write_text(synthetic.read_text() + "\nEXTRA = 1\n")
  assert _changed(before, _fingerprints(project)) == set()


def test_shared_code_reruns_every_component_that_imports_it(project):
  before = _fingerprints(project)
  features = project / "models" / "features.py"
  features.write_text(features.read_text() + "\nEXTRA = 1\n")
  changed = _changed(before, _fingerprints(project))
  # The Pusher and the anomalies gate import no feature facts.
  assert changed == set(pipeline_dsl.ENTRY_MODULES) - {"Pusher", "AnomaliesGate"}


def test_comments_and_docstrings_do_not_count_but_undoing_an_edit_restores(project):
  hparams = project / "models" / "hparams.py"
  original = hparams.read_text()
  before = _fingerprints(project)
  docstring = original[:original.index('"""', 3) + 3]
  hparams.write_text('"""Another docstring."""\n# A new comment.\n'
                     + original[len(docstring):] + "\n# end\n")
  assert _fingerprints(project) == before
  hparams.write_text(original.replace("epochs", "num_epochs"))
  # The Trainers' settings, and the recommender's blend (RecommenderHparams).
  assert _changed(before, _fingerprints(project)) == {"Trainer.cf", "Trainer.deepfm",
                                                      "Trainer.retrieval",
                                                      "RecommenderBuilder"}
  hparams.write_text(original)
  assert _fingerprints(project) == before


def test_imports_inside_functions_and_relative_imports_are_followed(project):
  helper = project / "models" / "helper_for_test.py"
  helper.write_text("VALUE = 1\n")
  layers = project / "models" / "layers.py"
  lazy_import = "\n\ndef _late():\n  from . import helper_for_test\n  return helper_for_test\n"
  layers.write_text(layers.read_text() + lazy_import)
  assert "models.helper_for_test" in code_fingerprint.imported_modules(
      "trainer.cf", root=str(project))
  before = _fingerprints(project)
  helper.write_text("VALUE = 2\n")
  assert _changed(before, _fingerprints(project)) == {"Trainer.cf", "Trainer.deepfm",
                                                      "Trainer.retrieval"}


def test_the_same_code_elsewhere_has_the_same_fingerprint(project, tmp_path):
  elsewhere = _copy_project(tmp_path / "b" / "c")
  assert _fingerprints(elsewhere) == _fingerprints(project)
  assert _fingerprints(project) == {component: pipeline_dsl.code_fingerprint_of(component)
                                    for component in pipeline_dsl.ENTRY_MODULES}


def test_unknown_modules_are_refused():
  with pytest.raises(ValueError, match="no Python source for module 'no_such_module'"):
    code_fingerprint.of("no_such_module")
  with pytest.raises(ValueError, match="no Python source for module 'models.no_such'"):
    code_fingerprint.of("models.no_such")


def test_every_component_of_ours_carries_its_fingerprint(tmp_path):
  schema = tmp_path / "schema.pbtxt"
  shutil.copy(configs.SCHEMA_FILE, schema)
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "u.data").write_text("1\t2\t5\t881250949\n")
  config = configs.PipelineConfig(dataset="100k", data_dir=str(tmp_path / "data"),
                                  output_dir=str(tmp_path / "run"), schema_file=str(schema))

  def parameters():
    return {node.id: node.exec_properties
            for node in pipeline_dsl.create_components(config)}

  nodes = parameters()
  code = {component: code_fingerprint.of(module)
          for component, module in pipeline_dsl.ENTRY_MODULES.items()}
  assert nodes["MovieLensExampleGen"]["code_fingerprint"] == code["MovieLensExampleGen"]
  assert nodes["AnomaliesGate"]["code_fingerprint"] == code["AnomaliesGate"]
  assert nodes["ModelReport"]["code_fingerprint"] == code["ModelReport"]
  assert json.loads(nodes["Transform"]["custom_config"])["code_fingerprint"] == (
      code["Transform"])
  for model in pipeline_dsl.MODELS:
    trainer = pipeline_dsl.trainer_id(model)
    assert json.loads(nodes[trainer]["custom_config"])["code_fingerprint"] == code[trainer]
  for model in (*pipeline_dsl.LIKE_MODELS, pipeline_dsl.RECOMMENDER):
    assert json.loads(nodes[pipeline_dsl.pusher_id(model)]["custom_config"])[
        "code_fingerprint"] == code["Pusher"]
  assert nodes["RecommenderBuilder"]["code_fingerprint"] == code["RecommenderBuilder"]
  assert nodes["RankingEvaluator"]["code_fingerprint"] == code["RankingEvaluator"]
  assert code["Trainer.cf"] != code["Trainer.deepfm"]
  # The data by its files: editing one reruns the ingestion
  # (test_the_data_folder_fingerprint_follows_its_files).
  data_fingerprint = configs.fingerprint_folder(config.data_dir)
  assert data_fingerprint is not None
  assert nodes["MovieLensExampleGen"]["source_fingerprint"] == data_fingerprint
  # The schema by content: TFX's own ImportSchemaGen keys on the path alone.
  before = nodes["ImportSchemaGen"]["schema_fingerprint"]
  schema.write_text(schema.read_text() + "\n# reviewed\n")
  assert parameters()["ImportSchemaGen"]["schema_fingerprint"] != before


def test_the_evaluators_custom_metrics_carry_their_fingerprint():
  config = tfma_config.eval_config(auc_floor=0.75, max_auc_drop=0.005)
  ours = [m for spec in config.metrics_specs for m in spec.metrics
          if m.module == histogram_metrics.__name__]
  assert len(ours) == 2
  for metric in ours:
    assert json.loads(metric.config)["code_fingerprint"] == code_fingerprint.of(
        histogram_metrics.__name__)


def test_the_data_folder_fingerprint_follows_its_files(tmp_path):
  (tmp_path / "ratings.dat").write_text("1::2::5::978300760\n")
  before = configs.fingerprint_folder(str(tmp_path))
  assert configs.fingerprint_folder(str(tmp_path)) == before
  (tmp_path / "ratings.dat").write_text("1::2::4::978300760\n1::3::5::978300761\n")
  edited = configs.fingerprint_folder(str(tmp_path))
  assert edited != before
  (tmp_path / "users.dat").write_text("")
  assert configs.fingerprint_folder(str(tmp_path)) != edited
  assert configs.fingerprint_folder(str(tmp_path / "missing")) is None
