"""Both models: output shapes, learning, and export/reload through the serving signatures."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from export import saved_model
from export import signatures
from models import cf
from models import data
from models import deepfm
from models import features
from models import hparams as hp
from models import layers
from models import retrieval
from models import runtime
from models import training

MODELS = {"cf": (cf, features.CF_RAW_FEATURES), "deepfm": (deepfm, features.DEEPFM_RAW_FEATURES)}


def _small(model_name, preset="best"):
  return dataclasses.replace(hp.preset(model_name, preset), epochs=2)


def _build(model_name, transformed, preset="best", **overrides):
  module, _ = MODELS[model_name]
  tf.keras.utils.set_random_seed(0)
  hparams = dataclasses.replace(_small(model_name, preset), **overrides)
  with runtime.precision_policy(runtime.uses_bfloat16(hparams)):
    return module.build(data.vocabulary_sizes(transformed.output), hparams)


def _inputs(transformed, rows=slice(None)):
  return {k: tf.constant(v[rows]) for k, v in transformed.columns.items()
          if k != features.LABEL}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("preset", ["seed", "best"])
def test_output_is_a_probability_per_example(model_name, preset, transformed_1m):
  model = _build(model_name, transformed_1m, preset)
  probabilities = model(_inputs(transformed_1m, slice(0, 300)))
  assert probabilities.dtype == tf.float32  # also under bfloat16 compute
  probabilities = probabilities.numpy()
  assert probabilities.shape == (300, 1)
  assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_training_lowers_the_loss(model_name, transformed_1m):
  model = _build(model_name, transformed_1m)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  batch = (_inputs(transformed_1m, slice(0, 1024)),
           tf.constant(transformed_1m.columns[features.LABEL][:1024]))
  before = model.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0,
                          return_dict=True)["log_loss"]
  model.fit(tf.data.Dataset.from_tensors(batch).repeat(30), verbose=0)
  after = model.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0,
                         return_dict=True)["log_loss"]
  assert after < before - 0.02


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("preset", ["seed", "best"])
def test_export_and_reload_give_identical_predictions(model_name, preset, transformed_1m,
                                                      tmp_path):
  module, raw_keys = MODELS[model_name]
  model = _build(model_name, transformed_1m, preset)
  columns = transformed_1m.columns
  train = {k: v[:4000] for k, v in columns.items()}
  held_out = {k: v[4000:4500] for k, v in columns.items()}
  training.train(model, model_name, _small(model_name, preset), train, held_out,
                 str(tmp_path / "logs"), seed=0)
  expected = model(_inputs(transformed_1m, slice(4000, 4500))).numpy().ravel()
  # float32 models match to 1e-6. bfloat16 compute keeps ~3 significant digits, and
  # the saved graph may fuse ops differently, so those match to bfloat16 precision
  # (DeepFM best, with its id statistics and larger weights: up to ~2e-3 apart).
  atol = 5e-3 if runtime.uses_bfloat16(_small(model_name, preset)) else 1e-6
  saved_model.export(model, transformed_1m.output, raw_keys, str(tmp_path / "export"))
  del model

  loaded = tf.saved_model.load(str(tmp_path / "export"))
  assert set(loaded.signatures) == {"serving_default", "predict_raw", "transform_features"}
  # serving_default: serialized raw tf.Examples, as TF Serving sends them.
  examples = tf.constant(transformed_1m.serialized[4000:4500])
  served = loaded.signatures["serving_default"](examples=examples)
  np.testing.assert_allclose(served[signatures.OUTPUT_KEY].numpy(), expected, atol=atol)
  # predict_raw: one plain tensor per raw feature, genres as "A|B".
  raw_rows = transformed_1m.raw[4000:4500]
  raw_inputs = {}
  for key in raw_keys:
    values = [row[key] for row in raw_rows]
    if key == features.MOVIE_GENRES:
      raw_inputs[key] = tf.constant([b"|".join(v) for v in values])
    elif isinstance(values[0][0], int):
      raw_inputs[key] = tf.constant([v[0] for v in values], tf.int64)  # JSON ints
    else:
      raw_inputs[key] = tf.constant([v[0] for v in values])
  served_raw = loaded.signatures["predict_raw"](**raw_inputs)
  np.testing.assert_allclose(served_raw[signatures.OUTPUT_KEY].numpy(), expected, atol=atol)
  # serving_default needs only the features the model uses.
  slim = []
  for serialized in transformed_1m.serialized[4000:4005]:
    example = tf.train.Example()
    example.ParseFromString(serialized)
    for key in list(example.features.feature):
      if key not in raw_keys:
        del example.features.feature[key]
    slim.append(example.SerializeToString())
  assert loaded.signatures["serving_default"](examples=tf.constant(slim))[
      signatures.OUTPUT_KEY].shape == (5,)
  # transform_features: what the Evaluator feeds the model.
  transformed = loaded.signatures["transform_features"](examples=examples)
  np.testing.assert_array_equal(transformed[features.transformed_name(features.USER_ID)],
                                columns[features.transformed_name(features.USER_ID)][4000:4500])


def test_an_ensemble_of_towers_scores_the_mean_of_its_pairs_through_one_index(
    transformed_1m):
  """What the BruteForce index serves (query . candidate) is the towers' mean score."""
  tf.keras.utils.set_random_seed(0)
  # The user towers alone: how a history joins each pair's query is test_sequence's.
  model = retrieval.build(data.vocabulary_sizes(transformed_1m.output),
                          dataclasses.replace(hp.preset("retrieval", "best"), towers=3,
                                              history_encoder="none"))
  inputs = _inputs(transformed_1m, slice(0, 200))
  pair_scores = [tf.reduce_sum(user(inputs) * movie(inputs), -1)
                 for user, movie in zip(model.user_towers, model.movie_towers)]
  # Different starting points: the pairs disagree, or averaging would buy nothing.
  assert np.corrcoef(pair_scores[0].numpy(), pair_scores[1].numpy())[0, 1] < 0.9
  expected = tf.reduce_mean(tf.stack(pair_scores), 0).numpy()
  np.testing.assert_allclose(model(inputs).numpy()[:, 0], expected, rtol=1e-5, atol=1e-6)
  queries, offsets = model.query_vectors(inputs)
  candidates = model.candidate_vectors(inputs)
  assert queries.shape == candidates.shape == (200, 3 * model.hparams.embedding_dim)
  np.testing.assert_allclose(tf.reduce_sum(queries * candidates, -1) + offsets, expected,
                             rtol=1e-5, atol=1e-6)
  # Training lowers every pair's own softmax loss.
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  batch = (_inputs(transformed_1m, slice(0, 1024)),
           tf.constant(transformed_1m.columns[features.LABEL][:1024]))

  def losses():
    return np.array([float(loss) for loss in model.pair_losses(batch)])
  before = losses()
  for _ in range(20):
    model.train_step(batch)
  assert np.all(losses() < before), (before, losses())


def test_same_seed_same_auc(transformed_1m, tmp_path):
  def auc_once(run):
    model = _build("cf", transformed_1m)
    columns = transformed_1m.columns
    history = training.train(model, "cf", _small("cf"), {k: v[:4500] for k, v in columns.items()},
                             {k: v[4500:] for k, v in columns.items()},
                             str(tmp_path / run), seed=7)
    return history["val_auc"][-1]
  assert round(auc_once("a"), 3) == round(auc_once("b"), 3)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_seed_presets_use_no_id_statistics_and_no_rating_target(model_name):
  seed = hp.preset(model_name, "seed")
  assert not seed.use_id_statistics and not seed.rating_loss_weight


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_best_presets_train_in_larger_batches_at_1m_scale_and_seed_presets_do_not(
    model_name):
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  at_100k = configs.PipelineConfig(dataset="100k").hparams(model_name)
  at_1m = configs.PipelineConfig(dataset="1m").hparams(model_name)
  assert at_100k == hp.preset(model_name, "best")
  assert at_1m.batch_size == hp.LARGE_DATA_OVERRIDES[model_name]["batch_size"] > \
      at_100k.batch_size
  assert at_1m.epochs < at_100k.epochs
  if model_name == "deepfm":  # 10x the ratings, a 10x weaker prior
    assert at_1m.l2_embedding == at_100k.l2_embedding / 10
    assert at_1m.l2_dnn == at_100k.l2_dnn / 10
  seed_config = configs.PipelineConfig(dataset="1m", presets={"cf": "seed", "deepfm": "seed"})
  assert seed_config.hparams(model_name) == hp.preset(model_name, "seed")
  # A setting the user gives wins over the scale's.
  chosen = configs.PipelineConfig(dataset="1m", overrides={model_name: {"batch_size": 512}})
  assert chosen.hparams(model_name).batch_size == 512


def test_rating_head_is_the_weighted_squared_error_of_an_affine_rating():
  head = layers.RatingHead(0.5)
  logits = tf.constant([[0.0], [1.0]])
  ratings = {features.transformed_name(features.USER_RATING): tf.constant([3.5, 5.0])}
  # Starts at rating = 3.5 + logit: errors 0 and 0.5.
  np.testing.assert_allclose(head(ratings, logits).numpy(), 0.5 * (0.0 + 0.25) / 2)
  assert head({}, logits).numpy() == 0.0  # serving and tests without ratings


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_id_statistics_change_the_prediction(model_name, transformed_1m):
  """With the statistics on (DeepFM's best preset does), serving must supply them."""
  module, _ = MODELS[model_name]
  hparams = dataclasses.replace(_small(model_name), use_id_statistics=True)
  tf.keras.utils.set_random_seed(0)
  with runtime.precision_policy(runtime.uses_bfloat16(hparams)):
    model = module.build(data.vocabulary_sizes(transformed_1m.output), hparams)
  inputs = _inputs(transformed_1m, slice(0, 100))
  rate = features.transformed_name(features.ID_STATISTICS[1][1])
  changed = {**inputs, rate: 1 - inputs[rate]}
  assert not np.allclose(model(inputs).numpy(), model(changed).numpy())


def _deepfm_with_drawn_weights(transformed, preset, **overrides):
  """DeepFM with every weight drawn anew, at a scale where each term matters."""
  model = _build("deepfm", transformed, preset, **overrides)
  model(_inputs(transformed, slice(0, 1)))
  rng = np.random.default_rng(0)
  for variable in model.variables:
    variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
  return model


def _every_pair_both_ways(model, transformed, num_users=7):
  """Logits of the first users for every movie: (`logits_of_every_pair`, `_logits`)."""
  from export import recommend  # pylint: disable=g-import-not-at-top
  tables = recommend.CandidateTables.from_train_split(transformed.columns,
                                                      transformed.output)
  users = {k: tf.constant(v[:num_users]) for k, v in tables.user_features.items()}
  movies = {k: tf.constant(v) for k, v in tables.movie_features.items()}
  num_movies = len(tables.movie_ids) + 1  # the unseen movie's row too
  pairs = {k: tf.repeat(v, num_movies, axis=0) for k, v in users.items()}
  pairs.update({k: tf.tile(v, [num_users] + [1] * (len(v.shape) - 1))
                for k, v in movies.items()})
  whole = model._logits(pairs).numpy()  # pylint: disable=protected-access
  return (model.logits_of_every_pair(users, movies).numpy(),
          whole.reshape(num_users, num_movies))


@pytest.mark.parametrize("preset,overrides", [
    ("seed", {}), ("seed", {"dropout": 0.3}), ("best", {"mixed_precision": "off"})])
def test_deepfm_scores_every_pair_from_its_user_and_movie_parts_as_whole(
    preset, overrides, transformed_1m):
  """`logits_of_every_pair` (what `recommend` calls) is `_logits` of each pair.

  In float32, with and without the id statistics (the best preset's first-order
  term and extra DNN inputs): a wrong split of the first DNN layer's rows, or a
  term left out, changes the logits far beyond float32's rounding.
  """
  model = _deepfm_with_drawn_weights(transformed_1m, preset, **overrides)
  every_pair, whole = _every_pair_both_ways(model, transformed_1m)
  assert every_pair.shape == whole.shape and whole.shape[0] == 7
  np.testing.assert_allclose(every_pair, whole, atol=1e-4 * np.std(whole))


def test_deepfm_every_pair_under_bfloat16_is_as_close_to_float32_as_whole(transformed_1m):
  """Under bfloat16 compute the split sums its parts in float32: its logits are
  no further from the float32 model's than the bfloat16 model's own."""
  if not runtime.uses_bfloat16(_small("deepfm", "best")):
    pytest.skip("this CPU computes DeepFM in float32 (no bfloat16 instructions)")
  model = _deepfm_with_drawn_weights(transformed_1m, "best")
  every_pair, whole = _every_pair_both_ways(model, transformed_1m)
  exact = _deepfm_with_drawn_weights(transformed_1m, "best", mixed_precision="off")
  _, reference = _every_pair_both_ways(exact, transformed_1m)
  assert np.abs(every_pair - reference).max() <= np.abs(whole - reference).max()


def test_training_batches_cover_every_row_once_per_epoch_in_a_new_order():
  examples = {features.LABEL: np.arange(10, dtype=np.int64) % 2,
              features.transformed_name(features.USER_ID): np.arange(10, dtype=np.int64)}
  dataset = data.make_dataset(examples, batch_size=4, shuffle=True, seed=1)
  epochs = [np.concatenate([batch[features.transformed_name(features.USER_ID)].numpy()
                            for batch, _ in dataset]) for _ in range(2)]
  for rows in epochs:
    assert sorted(rows) == list(range(10))
  assert list(epochs[0]) != list(epochs[1])
  # Drawn from the seed: a new dataset with the same seed repeats the epochs.
  again = data.make_dataset(examples, batch_size=4, shuffle=True, seed=1)
  assert list(np.concatenate([batch[features.transformed_name(features.USER_ID)].numpy()
                              for batch, _ in again])) == list(epochs[0])
  # Autotuning made deleting an epoch's iterator wait for its model thread (up to
  # a minute at the end of a long `fit`).
  assert dataset.options().autotune.enabled is False


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_chunked_step_makes_the_updates_of_its_batches_one_by_one(model_name,
                                                                  transformed_1m):
  columns = {k: v[:1000] for k, v in transformed_1m.columns.items()}
  in_order = dict(shuffle=False, seed=0)
  # Equal up to float rounding, in float32: bfloat16 rounds differently in the two graphs.
  float32 = {"mixed_precision": "off"} if model_name == "deepfm" else {}
  one_by_one = _build(model_name, transformed_1m, **float32)
  one_by_one.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  one_by_one.fit(data.make_dataset(columns, 64, **in_order), verbose=0)
  chunked = _build(model_name, transformed_1m, **float32)
  chunked.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  chunked.train_batch_size = 64
  # 1000 rows: chunks of 256 rows, the last one (232 rows) ending in a part batch.
  chunked.fit(data.make_dataset(columns, 256, **in_order), verbose=0)
  assert one_by_one.optimizer.iterations.numpy() == 16
  assert chunked.optimizer.iterations.numpy() == 16
  for expected, actual in zip(one_by_one.trainable_variables, chunked.trainable_variables):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_autograph_leaves_tf_keras_code_alone_but_converts_our_layers():
  from tensorflow.python.autograph.impl import conversion  # pylint: disable=g-import-not-at-top
  # tf-keras' layers are written for graphs; rewriting them on every trace made
  # DeepFM's first epoch three times slower (models.runtime). Training applies it
  # as it builds a model (training.build_seeded); here it is applied directly, so
  # the test does not depend on which tests trained a model before it.
  runtime.leave_tf_keras_to_tensorflow()
  assert conversion.is_allowlisted(tf.keras.layers.Dense.call)
  assert conversion.is_allowlisted(tf.keras.Model.train_step)
  assert not conversion.is_allowlisted(deepfm.DeepFM.call)
  assert not conversion.is_allowlisted(cf.CollaborativeFiltering.compute_loss)
