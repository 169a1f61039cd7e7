"""Interrupted, concurrent and impossible runs.

The end-to-end test drives real `recsys run` processes (conftest's `start_cli`) on
a small synthetic release: it kills them (SIGKILL during Transform, SIGINT during a
Trainer, SIGKILL during the Pusher), starts a second run beside the first, reruns
to the end, and compares the result with `finished_run`, the uninterrupted run of
the same data and settings.
"""
import json
import os
import pathlib
import re
import signal
import time

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from components import pusher
from pipeline import cli
from pipeline import run_lock
from pipeline import run_state
from testing import synthetic
from tests.conftest import BRIEF_TRAINING
from tests.conftest import E2E_AUC_FLOOR
from tests.conftest import E2E_RELEASE
from tests.conftest import first_report
from tests.conftest import pipeline_config


def _cli_run_args(data_dir, output_dir):
  """`recsys run` with the settings of `finished_run`."""
  args = ["--dataset", "1m", "--data-dir", str(data_dir), "--output-dir", str(output_dir),
          "--beam-arg=--direct_num_workers=1", "--auc-floor", str(E2E_AUC_FLOOR)]
  for model, overrides in BRIEF_TRAINING.items():
    for name, value in overrides.items():
      args += ["--set", f"{model}.{name}={value}"]
  return args


def _states(config):
  """Node id -> state of the latest run, as ML Metadata recorded it."""
  return {c.node_id: c.state for c in run_state.summarize_run(config).components}


def _published_by(config, node_id):
  """The live artifacts that executions of `node_id` output."""
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(
      config.metadata_path)) as m:
    context = m.store.get_context_by_type_and_name("node",
                                                   f"{config.pipeline_name}.{node_id}")
    executions = m.store.get_executions_by_context(context.id)
    outputs = {e.artifact_id for e in m.store.get_events_by_execution_ids(
        [x.id for x in executions]) if e.type == metadata_store_pb2.Event.OUTPUT}
    return [a for a in m.store.get_artifacts_by_id(list(outputs))
            if a.state == metadata_store_pb2.Artifact.LIVE]


def _files(folder: pathlib.Path):
  return {str(p.relative_to(folder)): p.stat().st_size
          for p in folder.rglob("*") if p.is_file()}


def _serving_folders(config, model):
  folder = pathlib.Path(config.serving_model_dir(model))
  return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _assert_only_complete_versions(config):
  """Every numbered version folder holds a whole SavedModel: TF Serving may load it."""
  for model in ("cf", "deepfm"):
    for version in pusher.pushed_versions(config.serving_model_dir(model)):
      files = _files(pathlib.Path(config.serving_model_dir(model)) / version)
      assert {"saved_model.pb", "fingerprint.pb", "variables/variables.index"} <= set(
          files), (model, version, files)


def _pushed_model_dir(config, model) -> pathlib.Path:
  """The latest SavedModel that `Pusher.<model>` pushes: ServedModelBuilder's."""
  runs = pathlib.Path(config.pipeline_root, f"ServedModelBuilder.{model}",
                      "served_model").iterdir()
  return max(runs, key=lambda p: int(p.name)) / "Format-Serving"


_UPSTREAM = ["MovieLensExampleGen", "StatisticsGen", "ExampleValidator", "AnomaliesGate"]


@pytest.mark.e2e
def test_killed_runs_resume_to_the_uninterrupted_result(finished_run, start_cli, tmp_path):
  # The same release as finished_run's, written afresh (its own may be edited later).
  synthetic.write_release(str(tmp_path / "data"), **E2E_RELEASE)
  config = pipeline_config(tmp_path / "data", tmp_path / "run")
  args = _cli_run_args(tmp_path / "data", tmp_path / "run")

  # 1. A second run on the same folder is refused while the first runs; SIGKILL
  #    the first during Transform.
  first = start_cli("run", args, tmp_path / "run-1.log")
  first.wait_for(r"stage \d+/\d+: MovieLensExampleGen running")
  # Paused (SIGSTOP) while the second run starts and is refused, so that the first
  # is still before Transform afterwards however long the second takes to start.
  first.popen.send_signal(signal.SIGSTOP)
  try:
    second = start_cli("run", args, tmp_path / "run-concurrent.log")
    assert second.finish(timeout=300) == 1
  finally:
    first.popen.send_signal(signal.SIGCONT)
  assert re.search(rf"^error: {re.escape(str(tmp_path / 'run'))} is in use by another run "
                   rf"\(pid {first.popen.pid}, started [-0-9T:+]+\); wait for it to finish",
                   second.output, re.MULTILINE), second.output[-2000:]
  assert "Traceback" not in second.output
  first.wait_for(r"stage \d+/\d+: Transform running")
  # tf.Transform's executor logs this as it starts analysing the train split.
  first.wait_for_log(r"Not using the in-place Transform")
  assert "Transform done" not in first.output, "Transform ended before the kill"
  assert first.kill(signal.SIGKILL) == -signal.SIGKILL
  states = _states(config)
  assert [states[node] for node in _UPSTREAM] == ["done"] * 4
  assert states["Transform"] == "running"  # what a kill leaves in ML Metadata
  assert not _published_by(config, "Transform")
  # The killed Transform's output folders (<key>/<execution id>), never registered.
  half_written = [folder for folder in pathlib.Path(config.pipeline_root, "Transform")
                  .glob("*/*") if folder.name.isdigit()]
  assert half_written
  assert not _serving_folders(config, "cf")

  # 2. Rerun (the dead run's lock went with it): upstream from the cache, Transform
  #    again. SIGINT (Ctrl-C) during the CF Trainer, which trains long enough here
  #    for the signal to land in `fit` (6 epochs of the small set take about a
  #    second once the first is traced); the canceled Trainer is never reused.
  second = start_cli("run", args + ["--set", "cf.epochs=2000",
                                    "--set", "cf.early_stopping_patience=0"],
                     tmp_path / "run-2.log")
  second.wait_for(r"an earlier run was interrupted in Transform; resuming")
  second.wait_for(r"train cf: epoch 1/")
  assert second.kill(signal.SIGINT) == 130
  assert "interrupted: run the same command again to resume" in second.output
  assert "Traceback" not in second.output
  states = _states(config)
  assert [states[node] for node in _UPSTREAM] == ["cached"] * 4
  assert states["Transform"] == "done"
  assert not [folder for folder in half_written if folder.exists()]  # deleted
  assert states["Trainer.cf"] == "canceled"
  assert not _published_by(config, "Trainer.cf")

  # 3. Rerun; SIGKILL the CF Pusher in the middle of copying the model. A FIFO in
  #    the pushed model's folder holds the copy there (reading it blocks).
  third = start_cli("run", args, tmp_path / "run-3.log")
  third.wait_for(r"ServedModelBuilder\.cf done")
  hold = _pushed_model_dir(config, "cf") / "hold-the-copy"
  os.mkfifo(hold)
  third.wait_for(r"Pusher\.cf running")
  serving_cf = pathlib.Path(config.serving_model_dir("cf"))
  deadline = time.monotonic() + 60
  # Until the copy into the temporary folder has begun: some files in, the FIFO not.
  while not any(name.startswith(pusher.TEMPORARY_PREFIX) and any((serving_cf / name).iterdir())
                for name in _serving_folders(config, "cf")):
    assert time.monotonic() < deadline, third.output[-2000:]
    time.sleep(0.2)
  assert third.kill(signal.SIGKILL) == -signal.SIGKILL
  assert _states(config)["Pusher.cf"] == "running"
  left = _serving_folders(config, "cf")
  assert len(left) == 1 and left[0].startswith(pusher.TEMPORARY_PREFIX), left
  assert list((serving_cf / left[0]).iterdir())  # half copied, but not a version
  _assert_only_complete_versions(config)
  hold.unlink()

  # 4. Rerun to the end: everything trained comes from the cache, the stale
  #    temporary folder is gone, and the result is the uninterrupted run's.
  fourth = start_cli("run", args, tmp_path / "run-4.log")
  assert fourth.finish() == 0, fourth.output[-3000:]
  # Until the run's summary, the console is our progress lines only: TFX's, Beam's
  # and TensorFlow's logs and warnings, Python's and C++'s, went to the log file.
  during_the_run = fourth.output.split("\nRun ", 1)[0].splitlines()
  assert during_the_run and all(re.match(r"\[recsys \d\d:\d\d:\d\d\] ", line)
                                for line in during_the_run), fourth.output[-3000:]
  assert "an earlier run was interrupted in Pusher.cf; resuming" in fourth.output
  states = _states(config)
  for node in _UPSTREAM + ["Transform", "Trainer.cf", "Trainer.deepfm",
                           "ServedModelBuilder.cf", "ServedModelBuilder.deepfm"]:
    assert states[node] == "cached", (node, states)
  assert states["Pusher.cf"] == states["Pusher.deepfm"] == "done"
  _assert_only_complete_versions(config)
  for model in ("cf", "deepfm"):
    versions = _serving_folders(config, model)
    assert len(versions) == 1 and versions[0].isdigit(), versions
    assert _files(serving_cf.parent / model / versions[0]) == _files(
        _pushed_model_dir(config, model))
  resumed = json.loads(
      (pathlib.Path(config.output_dir) / "report" / "metrics.json").read_text())
  reference = first_report(finished_run)
  for model in ("cf", "deepfm"):
    assert resumed["models"][model]["auc"] == pytest.approx(
        reference["models"][model]["auc"], abs=1e-3), (model, resumed, reference)


def _cli_error(capsys, data_dir, output_dir, *extra) -> str:
  """Runs `recsys run` here and returns its one error line."""
  assert cli.main(["run", *_cli_run_args(data_dir, output_dir), *extra]) == 1
  error = capsys.readouterr().err.strip()
  assert len(error.splitlines()) == 1 and "Traceback" not in error, error
  return error


def test_run_refuses_a_folder_another_run_holds(synthetic_1m, tmp_path, capsys):
  output_dir = tmp_path / "run"
  output_dir.mkdir()
  with run_lock.hold(str(output_dir)):
    error = _cli_error(capsys, synthetic_1m.folder, output_dir)
  assert re.fullmatch(rf"error: {re.escape(str(output_dir))} is in use by another run "
                      rf"\(pid {os.getpid()}, started [-0-9T:+]+\); wait for it to "
                      "finish, or pass another --output-dir", error), error
  assert not (output_dir / "metadata.sqlite").exists()
  # Released: the folder can be locked again, and the lock file lies outside tfx/.
  with run_lock.hold(str(output_dir)):
    pass
  assert sorted(p.name for p in output_dir.iterdir()) == [run_lock.LOCK_FILE]


def test_unwritable_folders_stop_the_run_before_anything_runs(synthetic_1m, tmp_path,
                                                               capsys):
  # chmod does not stop root (CI runs tests as root); a file where a folder should
  # be, or a folder under /proc, stops anyone.
  a_file = tmp_path / "a-file"
  a_file.write_text("not a folder")
  error = _cli_error(capsys, synthetic_1m.folder, a_file / "run")
  assert error == (f"error: cannot create the output folder {a_file / 'run'}: "
                   "Not a directory")
  error = _cli_error(capsys, synthetic_1m.folder, tmp_path / "run",
                     "--serving-dir", "/proc/recsys-serving")
  assert error.startswith("error: cannot create the serving folder /proc/recsys-serving: ")
  assert not (tmp_path / "run" / "metadata.sqlite").exists()


def test_unknown_hyperparameters_stop_the_run_before_anything_runs(synthetic_1m, tmp_path,
                                                                   capsys):
  output_dir = tmp_path / "run"
  errors = []
  for setting in ("cff.epochs=3", "deepfm.epoch=3"):
    with pytest.raises(SystemExit) as exit_info:  # a usage error, as argparse reports it
      cli.main(["run", *_cli_run_args(synthetic_1m.folder, output_dir), "--set", setting])
    assert exit_info.value.code == 2
    errors.append(capsys.readouterr().err.strip().splitlines()[-1])
  assert errors[0].endswith("error: no model 'cff' to set hyperparameters of; the models "
                            "are cf, deepfm, recommender, retrieval"), errors
  assert "error: deepfm has no hyperparameter 'epoch'; its hyperparameters are " in (
      errors[1]) and ", epochs, " in errors[1], errors
  assert not output_dir.exists()


def test_too_little_free_space_stops_the_run_before_anything_runs(synthetic_1m, tmp_path,
                                                                   capsys):
  output_dir = tmp_path / "run"
  error = _cli_error(capsys, synthetic_1m.folder, output_dir, "--min-free-gb", "100000")
  match = re.fullmatch(
      rf"error: not enough free disk space for {re.escape(str(output_dir))}: "
      r"([0-9.]+) GB free, a run needs at least 100000 GB; free some space, or set "
      r"the minimum with --min-free-gb", error)
  assert match, error
  free_gb = float(match.group(1))
  assert 0 < free_gb < 100000
  # Nothing ran, nothing was registered: no ML Metadata store, no component output.
  assert sorted(p.name for p in output_dir.iterdir()) == [run_lock.LOCK_FILE]
