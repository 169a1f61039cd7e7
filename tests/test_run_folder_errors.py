"""`recsys report`, `card`, `tensorboard` and `recommend` on run folders that cannot answer.

Each case must end in one `error:` line that says what is missing and where,
with exit code 1 and no traceback. The finished-run cases (a report from another
version, a deleted report file) are in test_pipeline.py; these need no pipeline.
"""
import pathlib

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from components import model_report
from pipeline import run_store
from tests.conftest import cli_error


def _empty_run(folder: pathlib.Path) -> pathlib.Path:
  """A run folder whose ML Metadata store exists but holds nothing yet."""
  folder.mkdir()
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      str(folder / run_store.METADATA_FILE))) as m:
    m.store.get_artifact_types()
  return folder


@pytest.mark.parametrize("command", ["report", "tensorboard"])
def test_folders_that_are_no_runs(command, tmp_path, capsys):
  assert cli_error(capsys, command, str(tmp_path / "nowhere")) == (
      f"error: {tmp_path / 'nowhere'}: no such folder")
  assert cli_error(capsys, command, str(tmp_path)) == (
      f"error: {tmp_path} is not a pipeline run folder: it has no metadata.sqlite "
      "(run `recsys run --output-dir` there first)")


def test_a_run_that_stopped_before_its_report(tmp_path, capsys):
  run = _empty_run(tmp_path / "run")
  assert cli_error(capsys, "card", str(run)) == (
      f"error: no model cards in {run / 'report' / 'cards'}: run the pipeline (recsys run) "
      "to the end first")
  assert cli_error(capsys, "report", str(run)) == (
      f"error: {run} has no evaluation report yet: the run did not get that far "
      f"(see {run / 'logs'})")
  assert cli_error(capsys, "tensorboard", str(run)) == (
      f"error: {run} has no training logs of cf yet from Trainer.cf: the run did not "
      f"get that far (see {run / 'logs'})")


def test_a_report_whose_folder_was_deleted(tmp_path, capsys):
  run = _empty_run(tmp_path / "run")
  gone = tmp_path / "run" / "tfx" / "ModelReport" / "report" / "7"
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      str(run / run_store.METADATA_FILE))) as m:
    type_id = m.store.put_artifact_type(metadata_store_pb2.ArtifactType(
        name=model_report.ReportArtifact.TYPE_NAME))
    m.store.put_artifacts([metadata_store_pb2.Artifact(
        type_id=type_id, uri=str(gone), state=metadata_store_pb2.Artifact.LIVE)])
  assert cli_error(capsys, "report", str(run)) == (
      f"error: evaluation report of {run} is registered at {gone}, which no longer "
      "exists")


def test_a_corrupt_metadata_store(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  (run / run_store.METADATA_FILE).write_bytes(b"not a database" * 100)
  assert cli_error(capsys, "report", str(run)).startswith(
      f"error: cannot read {run / run_store.METADATA_FILE}: ")


@pytest.mark.parametrize("model", ["cf", "deepfm"])
def test_recommend_before_any_model_was_blessed(model, tmp_path, capsys):
  run = _empty_run(tmp_path / "run")
  (run / "serving" / model).mkdir(parents=True)  # a serving folder with no version
  assert cli_error(capsys, "recommend", "--user", "42", "--model", model,
                   "--run-dir", str(run)) == (
      f"error: no pushed model in {run / 'serving' / model}: a model is pushed once "
      "its evaluation blesses it (see `recsys report`)")
