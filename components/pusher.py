"""Pusher: TFX's, plus TF Serving's models.config, and no duplicate versions.

After a push it (re)writes `<serving-dir>/models.config`, listing every model
folder for `tensorflow_model_server --model_config_file`. And TFX re-evaluates a
cached model once it has become its own baseline (the latest blessed model), and
its Pusher would then copy the same SavedModel a second time under a new version
number. This one compares SavedModel fingerprints (`fingerprint.pb`, written by
TensorFlow on export) with the versions already served and records the existing
version instead.
"""
import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx import v1 as tfx
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
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


def models_config(serving_dir: str, base_dir: str = CONTAINER_MODELS_DIR) -> str:
  """TF Serving's model_config_list for every model folder in `serving_dir`."""
  names = sorted(name.rstrip("/") for name in fileio.listdir(serving_dir)
                 if fileio.isdir(os.path.join(serving_dir, name)))
  entries = "".join(
      f'  config {{\n    name: "{name}"\n    base_path: "{base_dir}/{name}"\n'
      f'    model_platform: "tensorflow"\n  }}\n' for name in names)
  return f"model_config_list {{\n{entries}}}\n"


def write_models_config(serving_dir: str) -> str:
  """Writes `<serving_dir>/models.config` (via a temporary file, then a rename)."""
  path = os.path.join(serving_dir, MODELS_CONFIG_FILE)
  temporary = path + ".tmp"
  with fileio.open(temporary, "w") as f:
    f.write(models_config(serving_dir))
  fileio.rename(temporary, path, overwrite=True)
  return path


class Executor(pusher_executor.Executor):
  """Pushes a blessed model unless the same SavedModel is already served.

  After a push, (re)writes TF Serving's models.config beside the model folders.
  """

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
    to_filesystem = self.CheckBlessing(input_dict) and destination.HasField("filesystem")
    if to_filesystem:
      base_directory = destination.filesystem.base_directory
      version = served_version_of(self.GetModelPath(input_dict), base_directory)
      if version is not None:
        logging.info("This model is already served as version %s; not pushing it again.",
                     version)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        self._MarkPushed(model_push, os.path.join(base_directory, version), version)
        return
    super().Do(input_dict, output_dict, exec_properties)
    if to_filesystem:
      write_models_config(os.path.dirname(destination.filesystem.base_directory.rstrip("/")))


class Pusher(tfx.components.Pusher):
  """TFX's Pusher with the executor above."""
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
