"""Warm start: a new span's model begins where the latest blessed model of its kind ended.

Ratings arrive in time spans, and each span's Transform computes new vocabularies:
ids are ordered by frequency, new users and movies appear, and row i of a new
embedding table is not row i of the base model's. So the tables whose rows are
vocabulary indices (each model lists them, `vocabulary_tables()`) are carried
over **by id**: every base row goes to the new index of the same id. Ids the
base never saw keep their fresh initialisation, as a cold start would give them;
base ids the new vocabulary lacks are left behind. Each field's out-of-vocabulary
bucket carries over as well: it is what the base served for any id it did not
know, and still means that. (Genres' padding, -1, is masked, never a row.) Every
other variable (the DNN, the global bias, the rating head, the towers'
projections) is copied as it is when the base has one at the same place with the
same shape; anything else stays fresh and is reported by name. The optimizer is
not carried: its moments belong to steps on another span's data.

With `shrink` below 1, every carried value is pulled toward the fresh model's:
shrink * base + (1 - shrink) * fresh, the "shrink and perturb" of Ash and Adams
(2020, "On Warm-Starting Neural Network Training"), the fresh initialisation
being the perturbation. A network trained on from its base's exact weights
settles below a cold start's eval AUC on ratings it mostly fitted already; a
shrunk start keeps most of the head start and ends above it (bench/warm_start.py,
docs/models.md#warm-start).

Where things are found in the base model, the SavedModel its Trainer exported
(`fn_args.base_model`):

- Its variables, after `tf.saved_model.load`, by their path in the object graph
  from the model down ("embeddings/table/embeddings",
  "dnn/layer_with_weights-0/kernel", "user_towers/0/projection/kernel"), the
  names tf.train.Checkpoint gives them. A path names the same layer in every
  build of the same class, unlike a variable's `name` (Keras numbers layer names
  per process: "embedding_3") or its place in `model.variables`, which moves
  whenever a preset adds a layer.
- Its vocabularies, from the Transform graph's vocabulary files, which the
  export carries as SavedModel assets (`<dir>/assets/<name>`, named by
  `preprocessing.vocabulary_name`): the very files its rows were indexed by, for
  every field. (The Recommender's id tables hold user and movie ids only.) A
  file is used only if its length matches the base table's rows.
"""
import collections
import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from common import progress
from models import features
from models import layers
from models import preprocessing

Path = Tuple[str, ...]


@dataclasses.dataclass
class WarmStartSummary:
  """What a warm start carried over, for the Trainer's log and for tests."""
  base_model_dir: str
  tables: List[str]  # paths of the tables carried over by id
  rows_carried: int  # rows copied by id over all tables, out-of-vocabulary rows included
  ids_kept: Dict[str, int]  # per field: ids in both vocabularies (their rows carried)
  ids_new: Dict[str, int]  # per field: ids the base never saw (fresh rows)
  ids_dropped: Dict[str, int]  # per field: base ids the new vocabulary lacks
  copied: List[str]  # paths of the other variables, copied by path
  left_fresh: Dict[str, str]  # path -> why it could not be matched
  seconds: float
  shrink: float = 1.0  # carried values are shrink * base + (1 - shrink) * fresh

  def describe(self) -> str:
    new = ", ".join(f"{field} {count:,}" for field, count in self.ids_new.items() if count)
    fresh = f" ({', '.join(self.left_fresh)})" if self.left_fresh else ""
    shrunk = (f", shrunk to {self.shrink:g} of the base's values (the rest fresh)"
              if self.shrink != 1 else "")
    return (f"{len(self.tables)} tables carried over by id ({self.rows_carried:,} rows; "
            f"new ids: {new or 'none'}), {len(self.copied)} variables copied, "
            f"{len(self.left_fresh)} left fresh{fresh}{shrunk}, in {self.seconds:.1f} s")


def warm_start(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
               base_model_dir: str, model_name: str = "model",
               shrink: float = 1.0) -> WarmStartSummary:
  """Sets `model`'s weights from the base SavedModel at `base_model_dir`.

  `model` is freshly built, and called once so that its variables exist, on the
  vocabularies of `tf_transform_output` (the new span's Transform graph), and not
  yet compiled. Each carried value becomes shrink * base + (1 - shrink) * fresh.
  Returns what was carried over, and prints it as a progress line.
  """
  if not 0 < shrink <= 1:
    raise ValueError(f"warm start shrink must be in (0, 1], got {shrink}")
  started = time.perf_counter()
  if not model.variables:
    raise ValueError("warm_start needs the model's variables: call the model once first")
  if not hasattr(model, "vocabulary_tables"):
    # Copied by shape, such a table's rows would each land on another id.
    raise TypeError(f"{type(model).__name__} lists no vocabulary_tables(): its embedding "
                    "rows cannot be carried over by id")
  base = tf.saved_model.load(base_model_dir)
  paths = variable_paths(model)
  summary = WarmStartSummary(base_model_dir, [], 0, {}, {}, {}, [], {}, 0.0, shrink)
  vocabularies = _Vocabularies(lambda field: tf_transform_output.vocabulary_by_name(
      preprocessing.vocabulary_name(field)))
  base_vocabularies = _Vocabularies(lambda field: _read_asset_vocabulary(
      base_model_dir, preprocessing.vocabulary_name(field)))

  tables = model.vocabulary_tables()
  for table in tables:
    name = "/".join(paths[id(table.variable)])
    base_values = _base_value(base, paths[id(table.variable)])
    problem = ("not in the base model" if base_values is None else
               _carry_by_id(table, base_values, vocabularies, base_vocabularies, summary))
    if problem:
      summary.left_fresh[name] = problem
    else:
      summary.tables.append(name)

  # Keras' weights: the metrics' accumulators, reset every epoch, are not among them.
  carried_by_id = {id(table.variable) for table in tables}
  for variable in _unique(model.variables):
    if id(variable) in carried_by_id:
      continue
    if id(variable) not in paths:  # not reachable by attribute: nothing to name it by
      summary.left_fresh[variable.name] = "no path in the model's object graph"
      continue
    name = "/".join(paths[id(variable)])
    base_values = _base_value(base, paths[id(variable)])
    if base_values is None:
      summary.left_fresh[name] = "not in the base model"
    elif base_values.shape != tuple(variable.shape):
      summary.left_fresh[name] = (f"shape {tuple(variable.shape)}, the base's "
                                  f"{base_values.shape}")
    else:
      variable.assign(_shrunk(base_values, variable.numpy(), shrink)
                      .astype(variable.dtype.as_numpy_dtype))
      summary.copied.append(name)
  summary.seconds = time.perf_counter() - started
  progress.report(f"train {model_name}",
                  f"warm start from {base_model_dir}: {summary.describe()}")
  return summary


def variable_paths(root: tf.Module) -> Dict[int, Path]:
  """id(variable) -> its path from `root` in the object graph, as checkpoints name it.

  Breadth first, so a variable reachable two ways gets its shortest path, the
  same rule tf.train.Checkpoint follows.
  """
  paths: Dict[int, Path] = {}
  seen = {id(root)}
  queue = collections.deque([(root, ())])
  while queue:
    parent, parent_path = queue.popleft()
    for name, child in tf.train.TrackableView.children(parent).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      if isinstance(child, tf.Variable):
        paths[id(child)] = parent_path + (name,)
      else:
        queue.append((child, parent_path + (name,)))
  return paths


def _base_value(base, path: Path) -> Optional[np.ndarray]:
  """The value of the base model's variable at `path`, None if there is none."""
  node = base
  for name in path:
    node = tf.train.TrackableView.children(node).get(name)
    if node is None:
      return None
  return node.numpy() if isinstance(node, tf.Variable) else None


def _read_asset_vocabulary(saved_model_dir: str, name: str) -> Optional[List[bytes]]:
  """A vocabulary file the SavedModel carries as an asset, read as tf.Transform reads
  its own (one id a line); None if the model has no such asset."""
  path = os.path.join(saved_model_dir, tf.saved_model.ASSETS_DIRECTORY, name)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "rb") as f:
    return [line.rstrip(os.linesep.encode()) for line in f]


class _Vocabularies:
  """Each field's vocabulary, read once, with its index by id."""

  def __init__(self, read):
    self._read = read
    self._ids: Dict[str, Optional[List[bytes]]] = {}
    self._index: Dict[str, Dict[bytes, int]] = {}

  def ids(self, field: str) -> Optional[List[bytes]]:
    if field not in self._ids:
      self._ids[field] = self._read(field)
    return self._ids[field]

  def index(self, field: str) -> Dict[bytes, int]:
    if field not in self._index:
      self._index[field] = {value: i for i, value in enumerate(self.ids(field))}
    return self._index[field]


def _block_starts(fields: Sequence[str], vocabularies: _Vocabularies) -> List[int]:
  """Where each field's block of rows starts, then the total: [0, n0, n0 + n1, ...]."""
  sizes = [len(vocabularies.ids(field)) + features.NUM_OOV_BUCKETS for field in fields]
  return list(np.cumsum([0] + sizes))


def _carry_by_id(table: layers.VocabularyTable, base_values: np.ndarray,
                 new_vocabularies: _Vocabularies, base_vocabularies: _Vocabularies,
                 summary: WarmStartSummary) -> Optional[str]:
  """Copies each base row to the new row of the same id; returns why not, or None."""
  missing = [f for f in table.fields if base_vocabularies.ids(f) is None]
  if missing:
    return f"the base model has no vocabulary asset for {', '.join(missing)}"
  new_starts = _block_starts(table.fields, new_vocabularies)
  if new_starts[-1] != table.variable.shape[0]:  # the model and its declaration disagree
    raise ValueError(f"{table.fields} need {new_starts[-1]} rows, the table has "
                     f"{table.variable.shape[0]}")
  base_starts = _block_starts(table.fields, base_vocabularies)
  if base_values.shape != (base_starts[-1],) + tuple(table.variable.shape[1:]):
    return (f"shape {base_values.shape} in the base, which its vocabularies do not "
            f"explain ({base_starts[-1]} rows by {tuple(table.variable.shape[1:])})")
  values = table.variable.numpy()
  for field, new_start, base_start in zip(table.fields, new_starts, base_starts):
    new_ids, base_index = new_vocabularies.ids(field), base_vocabularies.index(field)
    pairs = [(new_row, base_index[value]) for new_row, value in enumerate(new_ids)
             if value in base_index]
    new_rows = np.array([new for new, _ in pairs], np.int64)
    base_rows = np.array([old for _, old in pairs], np.int64)
    # The out-of-vocabulary buckets follow each vocabulary, bucket to bucket.
    oov = np.arange(features.NUM_OOV_BUCKETS)
    new_rows = np.concatenate([new_rows, len(new_ids) + oov])
    base_rows = np.concatenate([base_rows, len(base_index) + oov])
    values[new_start + new_rows] = _shrunk(base_values[base_start + base_rows],
                                           values[new_start + new_rows], summary.shrink)
    summary.rows_carried += len(new_rows)
    summary.ids_kept[field] = len(pairs)
    summary.ids_new[field] = len(new_ids) - len(pairs)
    summary.ids_dropped[field] = len(base_index) - len(pairs)
  table.variable.assign(values)
  return None


def _shrunk(base: np.ndarray, fresh: np.ndarray, shrink: float) -> np.ndarray:
  return base if shrink == 1 else shrink * base + (1 - shrink) * fresh


def _unique(variables: Sequence[tf.Variable]) -> List[tf.Variable]:
  seen, unique = set(), []
  for variable in variables:
    if id(variable) not in seen:
      seen.add(id(variable))
      unique.append(variable)
  return unique
