"""The training history a Trainer leaves beside its TensorBoard logs, and reading it back."""
import json
import os
from typing import Dict, List

import tensorflow as tf

HISTORY_FILE = "history.json"


def write(history: Dict[str, list], model_run_dir: str) -> None:
  """Saves per-epoch metrics (and training speed) in the Trainer's model_run_dir."""
  tf.io.gfile.makedirs(model_run_dir)
  with tf.io.gfile.GFile(os.path.join(model_run_dir, HISTORY_FILE), "w") as f:
    json.dump(history, f, indent=1)


def read(model_run_dir: str) -> Dict[str, List[float]]:
  """What `write` saved in `model_run_dir`; {} for a Trainer that saved none."""
  path = os.path.join(model_run_dir, HISTORY_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
