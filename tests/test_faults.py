"""Runs that must stop before anything runs: a folder another run holds, folders that
cannot be written, unknown hyperparameters, too little free space.

Runs interrupted on the way (SIGKILL, Ctrl-C, a push cut short) and two replays on
one folder are test_replay.py's: its replay is stopped each of those ways.
"""
import os
import re

import pytest

from pipeline import cli
from pipeline import run_lock
from tests.conftest import BRIEF_TRAINING
from tests.conftest import E2E_AUC_FLOOR


def _cli_run_args(data_dir, output_dir):
  """`recsys run` with the settings of `finished_run`."""
  args = ["--dataset", "1m", "--data-dir", str(data_dir), "--output-dir", str(output_dir),
          "--beam-arg=--direct_num_workers=1", "--auc-floor", str(E2E_AUC_FLOOR)]
  for model, overrides in BRIEF_TRAINING.items():
    for name, value in overrides.items():
      args += ["--set", f"{model}.{name}={value}"]
  return args


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
