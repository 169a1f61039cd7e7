"""Pusher: TFX's, plus atomic versions, TF Serving's models.config, no duplicates.

TFX's Pusher copies the SavedModel file by file straight into
`<base>/<version>/`, so TF Serving, which polls the folder, could load a version
that is still being copied, and a push killed midway leaves a broken version
there for good. This one copies into a hidden sibling `<base>/.tmp-<version>-<pid>/`
(TF Serving only loads folders named by a number) and renames it into place, which
is atomic on the local file system the serving folder is on; leftovers of a
killed push are deleted by the next push.

After a push it (re)writes `<serving-dir>/models.config`, listing every model
folder for `tensorflow_model_server --model_config_file`, each served with its
latest `SERVED_VERSIONS` versions, so that a client can roll back to the version
before the newest by asking for it. And TFX re-evaluates a
cached model once it has become its own baseline (the latest blessed model), and
its Pusher would then copy the same SavedModel a second time under a new version
number. This one compares SavedModel fingerprints (`fingerprint.pb`, written by
TensorFlow on export) with the versions already served and records the existing
version instead.
"""
import os
import time
from typing import Any, Dict, List, Optional

from absl import logging
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tfx import types
from tfx.components import Pusher as TfxPusher
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import proto_utils

FINGERPRINT_FILE = "fingerprint.pb"


def _fingerprint(model_dir: str) -> Optional[bytes]:
  path = os.path.join(model_dir, FINGERPRINT_FILE)
  if not fileio.exists(path):
    return None
  with fileio.open(path, "rb") as f:
    return f.read()


def pushed_versions(base_directory: str) -> List[str]:
  """The numbered versions of one model in the serving folder, oldest first."""
  if not fileio.isdir(base_directory):
    return []
  names = (name.rstrip("/") for name in fileio.listdir(base_directory))
  return sorted((name for name in names if name.isdigit()), key=int)


def served_version_of(model_dir: str, base_directory: str) -> Optional[str]:
  """The numbered version under `base_directory` holding this very SavedModel."""
  fingerprint = _fingerprint(model_dir)
  if fingerprint is None:
    return None
  for version in pushed_versions(base_directory):
    if _fingerprint(os.path.join(base_directory, version)) == fingerprint:
      return version
  return None


MODELS_CONFIG_FILE = "models.config"
# Where `docker run -v <serving-dir>:/models tensorflow/serving` sees the serving dir.
CONTAINER_MODELS_DIR = "/models"


# TF Serving keeps this many of a model's newest versions loaded (its version
# policy); older ones stay on disk for the record.
SERVED_VERSIONS = 2


def models_config(serving_dir: str, base_dir: str = CONTAINER_MODELS_DIR) -> str:
  """TF Serving's model_config_list for every model folder in `serving_dir`."""
  names = sorted(name.rstrip("/") for name in fileio.listdir(serving_dir)
                 if fileio.isdir(os.path.join(serving_dir, name)))
  config = model_server_config_pb2.ModelServerConfig()
  for name in names:
    entry = config.model_config_list.config.add(
        name=name, base_path=f"{base_dir}/{name}", model_platform="tensorflow")
    entry.model_version_policy.latest.num_versions = SERVED_VERSIONS
  return text_format.MessageToString(config)


def write_models_config(serving_dir: str) -> str:
  """Writes `<serving_dir>/models.config` (via a temporary file, then a rename)."""
  path = os.path.join(serving_dir, MODELS_CONFIG_FILE)
  temporary = path + ".tmp"
  with fileio.open(temporary, "w") as f:
    f.write(models_config(serving_dir))
  fileio.rename(temporary, path, overwrite=True)
  return path


TEMPORARY_PREFIX = ".tmp-"
SAVED_MODEL_FILE = "saved_model.pb"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  return True


def remove_stale_temporaries(base_directory: str) -> List[str]:
  """Deletes the temporary folders of pushes whose process has ended; returns them.

  Another live process may be pushing into the same serving folder (a run with
  another output folder), so its temporary folder is left alone.
  """
  if not fileio.isdir(base_directory):
    return []
  removed = []
  for name in fileio.listdir(base_directory):
    name = name.rstrip("/")
    if not name.startswith(TEMPORARY_PREFIX):
      continue
    pid = name.rsplit("-", 1)[-1]
    if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
      continue
    fileio.rmtree(os.path.join(base_directory, name))
    removed.append(name)
  return removed


def copy_version(model_dir: str, base_directory: str, version: str) -> bool:
  """Copies the SavedModel to `<base_directory>/<version>/` all at once, or not at all.

  Returns False (copying nothing) when that version already exists.
  """
  serving_path = os.path.join(base_directory, version)
  if fileio.exists(serving_path):
    return False
  temporary = os.path.join(base_directory,
                           f"{TEMPORARY_PREFIX}{version}-{os.getpid()}")
  try:
    # saved_model.pb last, as TFX does: readers that do not know about the rename
    # take a folder with saved_model.pb as complete.
    io_utils.copy_dir(model_dir, temporary,
                      deny_regex_patterns=[r"/saved_model\.pb$"])
    io_utils.copy_file(os.path.join(model_dir, SAVED_MODEL_FILE),
                       os.path.join(temporary, SAVED_MODEL_FILE))
    fileio.rename(temporary, serving_path)
  except BaseException:
    if fileio.exists(temporary):
      fileio.rmtree(temporary)
    raise
  return True


class Executor(pusher_executor.Executor):
  """Pushes a blessed model atomically, unless the same SavedModel is already served.

  After a push, (re)writes TF Serving's models.config beside the model folders.
  """

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
    if not destination.HasField("filesystem"):
      raise NotImplementedError(
          f"push destination {destination.WhichOneof('destination')}: only a "
          "file system folder is supported")
    if destination.filesystem.versioning not in (
        pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
      raise NotImplementedError(
          f"versioning {destination.filesystem.versioning}: only Unix time is supported")
    base_directory = destination.filesystem.base_directory
    model_path = self.GetModelPath(input_dict)
    for name in remove_stale_temporaries(base_directory):
      logging.info("Removed %s, left by an interrupted push.", name)

    version = served_version_of(model_path, base_directory)
    if version is not None:
      logging.info("This model is already served as version %s; not pushing it again.",
                   version)
      self._MarkPushed(model_push, os.path.join(base_directory, version), version)
      return
    version = str(int(time.time()))
    serving_path = os.path.join(base_directory, version)
    if copy_version(model_path, base_directory, version):
      logging.info("Model written to serving path %s.", serving_path)
    else:
      logging.info("Destination directory %s already exists, skipping current push.",
                   serving_path)
    # As TFX's Pusher: a copy in the artifact's own folder, for the record.
    io_utils.copy_dir(model_path, model_push.uri)
    self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
    write_models_config(os.path.dirname(base_directory.rstrip("/")))


class Pusher(TfxPusher):
  """TFX's Pusher with the executor above."""
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
