"""Warm start: rows follow their ids into a new span's vocabulary, and the Trainer uses it.

Two spans of the synthetic 1M-layout release, each through the project's
tf.Transform preprocessing: the base span (the earlier half of the ratings, some
users and movies held back) and the new span (every rating). Their vocabularies
order the shared ids differently, and the new one has ids the base never saw.
"""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer import fn_args_utils

from export import saved_model
from models import cf
from models import data
from models import deepfm
from models import features
from models import hparams as hp
from models import retrieval
from models import runtime
from models import training
from models import warm_start
from serving import contract
from tests import transform_fixture
from trainer import run

MODELS = {"cf": (cf.build, features.CF_RAW_FEATURES),
          "deepfm": (deepfm.build, features.DEEPFM_RAW_FEATURES),
          "retrieval": (retrieval.build, features.RETRIEVAL_RAW_FEATURES),
          # Its history encoder's movie table is carried over by id too.
          "retrieval-history": (retrieval.build, features.RETRIEVAL_RAW_FEATURES)}
# Users and movies only the new span has.
HELD_BACK_USERS = {str(u).encode() for u in range(1, 16)}
HELD_BACK_MOVIES = {str(m).encode() for m in range(1, 21)}


def _hparams(model_name):
  if model_name == "retrieval-history":  # one pair: the ensemble is "retrieval"'s
    return dataclasses.replace(hp.preset("retrieval", "best"), towers=1,
                               history_encoder="mean", history_ages=True)
  if model_name == "retrieval":  # the ensemble, its history left to "retrieval-history"
    return dataclasses.replace(hp.preset("retrieval", "best"), history_encoder="none")
  hparams = hp.preset(model_name, "best")
  if model_name == "deepfm":
    # The id statistics are the span's own Transform constants: with them, the same
    # weights rightly predict differently on another span. And float32, to compare
    # predictions closely.
    hparams = dataclasses.replace(hparams, use_id_statistics=False, mixed_precision="off")
  return hparams


def _fresh(model_name, transformed, hparams=None):
  """The model as a Trainer builds it on `transformed`'s vocabularies, variables created."""
  build, _ = MODELS[model_name]
  hparams = hparams or _hparams(model_name)
  tf.keras.utils.set_random_seed(0)
  with runtime.precision_policy(runtime.uses_bfloat16(hparams)):
    model = build(data.vocabulary_sizes(transformed.output), hparams)
  training.create_variables(model, transformed.columns)
  return model


def _vocabulary(transformed, field):
  return transformed.output.vocabulary_by_name(field)


@pytest.fixture(scope="module")
def spans(transformed_1m):
  """(base span, new span), each transformed with its own vocabularies."""
  rows = transformed_1m.raw
  middle = np.median([row[features.TIMESTAMP][0] for row in rows])
  base_rows = [row for row in rows if row[features.TIMESTAMP][0] < middle
               and row[features.USER_ID][0] not in HELD_BACK_USERS
               and row[features.MOVIE_ID][0] not in HELD_BACK_MOVIES]
  return transform_fixture.run_transform(base_rows), transformed_1m


@pytest.fixture(scope="module")
def base_models(spans, tmp_path_factory):
  """Model name -> (the base model in memory, its export), trained briefly on the base span."""
  base, _ = spans
  models = {}
  for model_name, (_, raw_keys) in MODELS.items():
    model = _fresh(model_name, base)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    inputs = {k: tf.constant(v[:2048]) for k, v in base.columns.items()
              if k != features.LABEL}
    labels = tf.constant(base.columns[features.LABEL][:2048])
    for _ in range(30):  # eager steps: rows move well away from their initial values
      model.train_step((inputs, labels))
    export_dir = str(tmp_path_factory.mktemp("base") / model_name)
    saved_model.export(model, base.output, raw_keys, export_dir, train_examples=base.columns)
    models[model_name] = (model, export_dir)
  return models


@pytest.fixture(scope="module")
def warm_started(spans, base_models):
  """Model name -> (warm-started model, summary, a fresh model of the same seed)."""
  _, new = spans
  started = {}
  for model_name, (_, export_dir) in base_models.items():
    model = _fresh(model_name, new)
    summary = warm_start.warm_start(model, new.output, export_dir, model_name)
    started[model_name] = (model, summary, _fresh(model_name, new))
  return started


def test_the_spans_vocabularies_reorder_shared_ids_and_add_new_ones(spans):
  base, new = spans
  for field in (features.USER_ID, features.MOVIE_ID):
    base_ids, new_ids = _vocabulary(base, field), _vocabulary(new, field)
    shared = set(base_ids) & set(new_ids)
    moved = [i for i in shared if base_ids.index(i) != new_ids.index(i)]
    assert len(moved) > len(shared) / 2, field
    assert set(new_ids) - set(base_ids), field


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_rows_are_carried_over_by_id_and_new_ids_keep_fresh_rows(model_name, spans,
                                                                 base_models, warm_started):
  base, new = spans
  base_model, _ = base_models[model_name]
  model, summary, fresh = warm_started[model_name]
  tables = model.vocabulary_tables()
  assert len(summary.tables) == len(tables) and not summary.left_fresh
  for table, base_table, fresh_table in zip(tables, base_model.vocabulary_tables(),
                                            fresh.vocabulary_tables()):
    values = table.variable.numpy()
    base_values = base_table.variable.numpy()
    fresh_values = fresh_table.variable.numpy()
    new_start = base_start = 0
    for field in table.fields:
      new_ids, base_ids = _vocabulary(new, field), _vocabulary(base, field)
      base_index = {value: i for i, value in enumerate(base_ids)}
      kept = [(i, base_index[value]) for i, value in enumerate(new_ids) if value in base_index]
      added = [i for i, value in enumerate(new_ids) if value not in base_index]
      new_rows = new_start + np.array([i for i, _ in kept])
      np.testing.assert_array_equal(
          values[new_rows], base_values[base_start + np.array([b for _, b in kept])])
      if added:
        np.testing.assert_array_equal(values[new_start + np.array(added)],
                                      fresh_values[new_start + np.array(added)])
      # The out-of-vocabulary row serves unseen ids as the base did.
      np.testing.assert_array_equal(values[new_start + len(new_ids)],
                                    base_values[base_start + len(base_ids)])
      assert summary.ids_kept[field] == len(kept)
      assert summary.ids_new[field] == len(added)
      new_start += len(new_ids) + features.NUM_OOV_BUCKETS
      base_start += len(base_ids) + features.NUM_OOV_BUCKETS
  # Not vacuous: training moved the base's rows away from any fresh initialisation.
  user_table = tables[0].variable.numpy()
  assert not np.allclose(user_table, fresh.vocabulary_tables()[0].variable.numpy())
  assert summary.ids_new[features.USER_ID] >= len(HELD_BACK_USERS)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_every_other_variable_is_copied_by_its_path(model_name, base_models, warm_started):
  base_model, _ = base_models[model_name]
  model, summary, _ = warm_started[model_name]
  base_variables = {"/".join(path): v for v, path in _by_path(base_model)}
  tables = {id(t.variable) for t in model.vocabulary_tables()}
  copied = [(v, "/".join(path)) for v, path in _by_path(model) if id(v) not in tables]
  assert sorted(name for _, name in copied) == sorted(summary.copied)
  assert copied
  for variable, name in copied:
    np.testing.assert_array_equal(variable.numpy(), base_variables[name].numpy(), name)


def test_shrink_pulls_every_carried_value_toward_the_fresh_one(spans, base_models,
                                                                 warm_started):
  _, new = spans
  _, base_dir = base_models["cf"]
  exact, _, fresh = warm_started["cf"]  # shrink 1: the base's values
  model = _fresh("cf", new)
  summary = warm_start.warm_start(model, new.output, base_dir, "cf", shrink=0.3)
  assert "shrunk to 0.3" in summary.describe()
  fresh_values = {"/".join(path): v.numpy() for v, path in _by_path(fresh)}
  exact_values = {"/".join(path): v.numpy() for v, path in _by_path(exact)}
  for variable, path in _by_path(model):
    name = "/".join(path)
    np.testing.assert_allclose(variable.numpy(),
                               0.3 * exact_values[name] + 0.7 * fresh_values[name],
                               rtol=1e-5, atol=1e-7, err_msg=name)
  # Rows of ids new to the span stay exactly fresh, since they carry nothing.
  user_table = model.vocabulary_tables()[0].variable.numpy()
  new_ids = _vocabulary(new, features.USER_ID)
  base_ids = set(_vocabulary(spans[0], features.USER_ID))
  added = [i for i, value in enumerate(new_ids) if value not in base_ids]
  np.testing.assert_array_equal(user_table[added],
                                fresh.vocabulary_tables()[0].variable.numpy()[added])
  with pytest.raises(ValueError, match="shrink"):
    warm_start.warm_start(_fresh("cf", new), new.output, base_dir, "cf", shrink=0.0)


def _by_path(model):
  """(variable, path) of the model's trainable variables (metrics' counters left out)."""
  paths = warm_start.variable_paths(model)
  return [(v, paths[id(v)]) for v in model.trainable_variables]


def _predict(export_dir, user_ids, movie_ids):
  loaded = tf.saved_model.load(export_dir)
  outputs = loaded.signatures[contract.PREDICT](user_id=tf.constant(user_ids),
                                                movie_id=tf.constant(movie_ids))
  (scores,) = outputs.values()
  return scores.numpy()


# Not retrieval-history: its `predict` reads each user's latest history, which the
# new span's export stores anew.
@pytest.mark.parametrize("model_name", sorted(set(MODELS) - {"retrieval-history"}))
def test_a_warm_started_export_predicts_like_the_base_for_ids_both_know(
    model_name, spans, base_models, warm_started, tmp_path):
  base, new = spans
  _, base_dir = base_models[model_name]
  model, _, _ = warm_started[model_name]
  export_dir = str(tmp_path / model_name)
  saved_model.export(model, new.output, MODELS[model_name][1], export_dir,
                     train_examples=new.columns)
  users = sorted(set(_vocabulary(base, features.USER_ID))
                 & set(_vocabulary(new, features.USER_ID)))
  movies = sorted(set(_vocabulary(base, features.MOVIE_ID))
                  & set(_vocabulary(new, features.MOVIE_ID)))
  rng = np.random.default_rng(0)
  user_ids = [users[i] for i in rng.integers(0, len(users), 300)]
  movie_ids = [movies[i] for i in rng.integers(0, len(movies), 300)]
  expected = _predict(base_dir, user_ids, movie_ids)
  assert expected.std() > 1e-3  # pairs the base tells apart
  np.testing.assert_allclose(_predict(export_dir, user_ids, movie_ids), expected,
                             rtol=1e-5, atol=1e-5)


def test_variables_the_base_has_in_another_shape_stay_fresh_and_are_named(spans,
                                                                          base_models):
  _, new = spans
  _, base_dir = base_models["deepfm"]
  narrower = dataclasses.replace(_hparams("deepfm"), dnn_units=(128, 64))
  model = _fresh("deepfm", new, narrower)
  fresh = _fresh("deepfm", new, narrower)
  summary = warm_start.warm_start(model, new.output, base_dir, "deepfm")
  # (256, 128, 64) in the base: the first two layers' kernels and biases differ in
  # shape, and the output layer's input width too.
  assert set(summary.left_fresh) == {
      "dnn/layer_with_weights-0/kernel", "dnn/layer_with_weights-0/bias",
      "dnn/layer_with_weights-1/kernel", "dnn/layer_with_weights-1/bias",
      "dnn/layer_with_weights-2/kernel"}
  for layer, fresh_layer in zip(model.dnn.layers, fresh.dnn.layers):
    for variable, fresh_variable in zip(layer.weights, fresh_layer.weights):
      np.testing.assert_array_equal(variable.numpy(), fresh_variable.numpy())
  assert len(summary.tables) == 2 and summary.rows_carried > 0


def _write_examples(path, serialized):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in serialized:
      writer.write(example)
  return str(path)


def test_the_trainer_starts_from_fn_args_base_model(spans, base_models, tmp_path, capsys):
  """run.run with the base model and a learning rate of 0: the exported model's rows
  are the base's, each at its id's new index, shrunk as the hyperparameters say."""
  base, new = spans
  base_model, base_dir = base_models["cf"]
  hparams = dataclasses.replace(_hparams("cf"), learning_rate=0.0, epochs=1,
                                early_stopping_patience=0, warm_start_shrink=0.5)
  transform_dir = os.path.dirname(new.output.transform_savedmodel_dir)
  fn_args = fn_args_utils.FnArgs(
      train_files=[_write_examples(tmp_path / "train.tfrecord", new.serialized[:5000])],
      eval_files=[_write_examples(tmp_path / "eval.tfrecord", new.serialized[5000:])],
      transform_output=transform_dir, serving_model_dir=str(tmp_path / "model"),
      model_run_dir=str(tmp_path / "model_run"), base_model=base_dir,
      custom_config={"hparams": hp.to_config(hparams), "seed": 0})
  run.run(fn_args, "cf", cf.build, features.CF_RAW_FEATURES)
  log = capsys.readouterr().err
  assert f"train cf: warm start from {base_dir}: 4 tables carried over by id" in log
  assert "shrunk to 0.5 of the base's values" in log
  exported = tf.saved_model.load(str(tmp_path / "model")).movie_embedding.embeddings.numpy()
  base_rows = base_model.movie_embedding.embeddings.numpy()
  fresh_rows = _fresh("cf", new, hparams).movie_embedding.embeddings.numpy()  # seed 0 too
  base_ids = _vocabulary(base, features.MOVIE_ID)
  new_ids = _vocabulary(new, features.MOVIE_ID)
  shared = [movie for movie in new_ids if movie in set(base_ids)]
  rows = [new_ids.index(m) for m in shared]
  np.testing.assert_allclose(
      exported[rows], 0.5 * base_rows[[base_ids.index(m) for m in shared]]
      + 0.5 * fresh_rows[rows], rtol=1e-5, atol=1e-7)


def test_a_warm_start_trains_the_epochs_the_hyperparameters_set_for_it():
  best = hp.preset("retrieval", "best")
  assert hp.for_warm_start(best).epochs == best.warm_start_epochs < best.epochs
  assert hp.for_warm_start(dataclasses.replace(best, epochs=2)).epochs == 2  # never more
  # The like models stop early, warm-started or not: their epochs stay.
  for model_name in ("cf", "deepfm"):
    assert hp.for_warm_start(hp.preset(model_name, "best")) == hp.preset(model_name, "best")
