"""The Pusher's executor on a real SavedModel: versions appear whole or not at all."""
import os
import pathlib
import subprocess
import sys
import types

import pytest
import tensorflow as tf
from tfx.dsl.io import fileio
from tfx.dsl.io import filesystem
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import io_utils
from tfx.utils import proto_utils

from components import pusher


def _files(folder: pathlib.Path):
  return {str(p.relative_to(folder)): p.stat().st_size
          for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> pathlib.Path:
  """A Trainer-like model artifact folder holding a small real SavedModel."""
  model_uri = tmp_path_factory.mktemp("model")
  module = tf.Module()
  module.weights = tf.Variable(tf.ones([64, 8]))
  module.score = tf.function(lambda x: tf.reduce_sum(x * module.weights),
                             input_signature=[tf.TensorSpec([64, 8])])
  tf.saved_model.save(module, str(model_uri / "Format-Serving"))
  return model_uri


def _push(model_uri, serving_dir, tmp_path, blessed=True):
  """Runs the executor as TFX would; returns the ModelPushPath artifact."""
  model = standard_artifacts.Model()
  model.uri = str(model_uri)
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(tmp_path / "blessing")
  blessing.set_int_custom_property("blessed", int(blessed))
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(tmp_path / f"pushed-{len(list(tmp_path.glob('pushed-*')))}")
  destination = pusher_pb2.PushDestination(
      filesystem=pusher_pb2.PushDestination.Filesystem(
          base_directory=str(serving_dir / "cf")))
  pusher.Executor().Do({"model": [model], "model_blessing": [blessing]},
                       {"pushed_model": [pushed]},
                       {"push_destination": proto_utils.proto_to_json(destination)})
  return pushed


def test_push_copies_into_a_hidden_folder_then_renames(saved_model, tmp_path, monkeypatch):
  serving = tmp_path / "serving"
  source = saved_model / "Format-Serving"
  seen_while_copying = []
  copy = fileio.copy

  def watching_copy(src, dst, *args, **kwargs):
    if str(dst).startswith(str(serving)):  # not the copy kept in the artifact
      seen_while_copying.append(sorted(os.listdir(serving / "cf")))
    return copy(src, dst, *args, **kwargs)

  monkeypatch.setattr(fileio, "copy", watching_copy)
  pushed = _push(saved_model, serving, tmp_path)

  version = pushed.get_string_custom_property("pushed_version")
  assert pusher.pushed_versions(str(serving / "cf")) == [version]
  assert pushed.get_int_custom_property("pushed") == 1
  assert _files(serving / "cf" / version) == _files(source)
  # While files were copied, the model folder held only the hidden temporary one.
  assert len(seen_while_copying) == len(_files(source))
  assert {tuple(names) for names in seen_while_copying} == {
      (f"{pusher.TEMPORARY_PREFIX}{version}-{os.getpid()}",)}
  assert sorted(os.listdir(serving / "cf")) == [version]
  assert (serving / "models.config").read_text().count("config {") == 1
  loaded = tf.saved_model.load(str(serving / "cf" / version))
  assert float(loaded.score(tf.ones([64, 8]))) == 512.0

  # The same SavedModel again: recorded as the version already served, no copy.
  again = _push(saved_model, serving, tmp_path)
  assert again.get_string_custom_property("pushed_version") == version
  assert pusher.pushed_versions(str(serving / "cf")) == [version]


def test_failed_copy_leaves_no_version_and_keeps_earlier_ones(saved_model, tmp_path):
  serving = tmp_path / "serving"
  earlier = serving / "cf" / "1000"
  io_utils.copy_dir(str(saved_model / "Format-Serving"), str(earlier))
  broken = tmp_path / "broken-model"
  io_utils.copy_dir(str(saved_model), str(broken))
  # A file that cannot be read, even by root (tests may run as root): a dangling link.
  (broken / "Format-Serving" / "variables" / "extra.data").symlink_to(tmp_path / "gone")
  (broken / "Format-Serving" / "fingerprint.pb").write_bytes(b"another model")

  with pytest.raises(filesystem.NotFoundError):
    _push(broken, serving, tmp_path)
  assert sorted(os.listdir(serving / "cf")) == ["1000"]  # no temporary folder either
  assert _files(earlier) == _files(saved_model / "Format-Serving")


def test_rejected_model_is_not_pushed(saved_model, tmp_path):
  pushed = _push(saved_model, tmp_path / "serving", tmp_path, blessed=False)
  assert pushed.get_int_custom_property("pushed") == 0
  assert not (tmp_path / "serving").exists()


def test_next_push_removes_what_a_killed_push_left(saved_model, tmp_path):
  serving = tmp_path / "serving"
  ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)
  dead_pid = int(ended.stdout)
  killed = serving / "cf" / f"{pusher.TEMPORARY_PREFIX}1000-{dead_pid}"
  killed.mkdir(parents=True)
  (killed / "variables").mkdir()
  # A push in progress in another live process (here: pytest's parent) is left alone.
  live = serving / "cf" / f"{pusher.TEMPORARY_PREFIX}1001-{os.getppid()}"
  live.mkdir()

  pushed = _push(saved_model, serving, tmp_path)
  version = pushed.get_string_custom_property("pushed_version")
  assert sorted(os.listdir(serving / "cf")) == sorted([version, live.name])


def _saved_model_scoring(tmp_path, scale: float) -> pathlib.Path:
  """A model artifact folder whose SavedModel's `score` is `scale` (its own fingerprint)."""
  model_uri = tmp_path / f"model-{scale:g}"
  module = tf.Module()
  module.scale = tf.Variable(scale)
  module.score = tf.function(lambda: module.scale, input_signature=[])
  tf.saved_model.save(module, str(model_uri / "Format-Serving"))
  return model_uri


def test_tf_serving_serves_the_latest_two_versions_so_a_client_can_roll_back(
    tmp_path, monkeypatch):
  from tests.tf_serving_double import ServingStatus  # pylint: disable=g-import-not-at-top
  from tests.tf_serving_double import TFServingDouble  # pylint: disable=g-import-not-at-top
  serving = tmp_path / "serving"
  models = [_saved_model_scoring(tmp_path, scale) for scale in (1.0, 2.0, 3.0)]
  # Versions are the push's Unix time; three pushes a minute apart.
  clock = iter([1_000_000, 1_000_060, 1_000_120])
  monkeypatch.setattr(pusher, "time", types.SimpleNamespace(time=lambda: next(clock)))
  for model in models:
    _push(model, serving, tmp_path)
  assert pusher.pushed_versions(str(serving / "cf")) == ["1000000", "1000060", "1000120"]

  config = (serving / pusher.MODELS_CONFIG_FILE).read_text()
  assert "num_versions: 2" in config and 'base_path: "/models/cf"' in config
  # TF Serving as `--model_config_file` starts it, on the same policy (here the test
  # double: the binary cannot be installed on these machines).
  local_config = tmp_path / "local.config"
  local_config.write_text(pusher.models_config(str(serving), base_dir=str(serving)))
  with TFServingDouble(model_config_file=str(local_config)) as server:
    assert [s["version"] for s in server.version_status("cf", None)[
        "model_version_status"]] == ["1000120", "1000060"]
    newest, model = server.servable("cf", None)
    assert (newest, float(model.score())) == (1000120, 3.0)
    _, previous = server.servable("cf", 1000060)  # the roll-back
    assert float(previous.score()) == 2.0
    with pytest.raises(ServingStatus, match=r"Specific\(cf, 1000000\)"):
      server.servable("cf", 1000000)
  assert pusher.pushed_versions(str(serving / "cf"))[0] == "1000000"  # kept on disk
