"""Hostile inputs to the served models and to the client: a clear error or a
documented answer, and the server still answers the next request.

Both models (CF and DeepFM, `exported_models` in conftest) are called in process
through every signature a client can reach (`predict_raw`, `predict`, `recommend`,
`serving_default`), and through `serving/client.py` over REST and gRPC against the
TF Serving double. What each odd input gives is listed in the README ("Odd inputs").
"""
import contextlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from models import features
from serving import client as serving_client
from serving import contract
from tests import tf_serving_double

MODELS = ("cf", "deepfm")
PROTOCOLS = ("rest", "grpc")
RAW_FEATURES = {"cf": features.CF_RAW_FEATURES, "deepfm": features.DEEPFM_RAW_FEATURES}
LONG_ID = "7" * 100_000  # 100 KB
ODD_IDS = [LONG_ID, "", "\x00", "42\x00", "Amélie", "\U0001F600", "1; DROP TABLE"]
K_MESSAGE = f"k must be between 1 and {contract.MAX_K}"
ServingError = serving_client.ServingError


@pytest.fixture(scope="module")
def loaded(exported_models):
  return {name: tf.saved_model.load(str(exported_models / name / "1")).signatures
          for name in MODELS}


def _raw_rows(transformed, model_name, count=2):
  """Raw features of some examples as a client sends them (genres "A|B")."""
  rows = []
  for example in transformed.raw[:count]:
    row = {}
    for key in RAW_FEATURES[model_name]:
      values = example[key]
      if key == features.MOVIE_GENRES:
        row[key] = contract.GENRE_SEPARATOR.join(v.decode() for v in values)
      else:
        row[key] = values[0].decode() if isinstance(values[0], bytes) else values[0]
    rows.append(row)
  return rows


def _tensors(rows):
  return {key: tf.constant([row[key] for row in rows],
                           tf.int64 if isinstance(rows[0][key], int) else tf.string)
          for key in rows[0]}


def _assert_probabilities(result, count):
  probabilities = result[contract.LIKE_PROBABILITY].numpy()
  assert probabilities.shape == (count,)
  assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.fixture(scope="module")
def good(loaded, transformed_1m):
  """A known-good call per model and signature, to show the model still serves."""
  def check(model_name):
    signatures = loaded[model_name]
    rows = _raw_rows(transformed_1m, model_name)
    _assert_probabilities(signatures[contract.PREDICT_RAW](**_tensors(rows)), 2)
    ids = {k: v for k, v in _tensors(rows).items()
           if k in (contract.USER_ID, contract.MOVIE_ID)}
    _assert_probabilities(signatures[contract.PREDICT](**ids), 2)
    top = signatures[contract.RECOMMEND](user_id=ids[contract.USER_ID], k=tf.constant(3))
    assert top[contract.MOVIE_IDS].shape == (2, 3)
  return check


@pytest.mark.parametrize("model_name", MODELS)
def test_predict_raw_odd_inputs(model_name, loaded, good, transformed_1m):
  predict_raw = loaded[model_name][contract.PREDICT_RAW]
  rows = _raw_rows(transformed_1m, model_name)
  inputs = _tensors(rows)
  # An empty batch: an empty answer.
  _assert_probabilities(predict_raw(**{k: v[:0] for k, v in inputs.items()}), 0)
  # Odd ids (100 KB, empty, NUL, non-ASCII): unseen ids, scored out of vocabulary.
  odd = {**inputs, contract.USER_ID: tf.constant(ODD_IDS),
         contract.MOVIE_ID: tf.constant(ODD_IDS[::-1])}
  odd = {k: (v if k in (contract.USER_ID, contract.MOVIE_ID)
             else tf.repeat(v[:1], len(ODD_IDS))) for k, v in odd.items()}
  _assert_probabilities(predict_raw(**odd), len(ODD_IDS))
  good(model_name)
  # Inputs of different lengths: no broadcasting, an error naming them.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="must have the same length \\(one value per example\\)"):
    predict_raw(**{**inputs, contract.MOVIE_ID: tf.constant(["1", "2", "3"])})
  good(model_name)
  # A missing feature and a wrong dtype: refused before anything runs.
  with pytest.raises(TypeError, match="missing a required argument: 'movie_id'"):
    predict_raw(**{k: v for k, v in inputs.items() if k != contract.MOVIE_ID})
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="expected to be a string tensor but is a int64 tensor"):
    predict_raw(**{**inputs, contract.MOVIE_ID: tf.constant([1, 2], tf.int64)})
  good(model_name)
  if model_name == "deepfm":
    # Side features outside the training data: the out-of-vocabulary bucket.
    strange = {**inputs,
               features.USER_GENDER: tf.constant([-5, 2**62], tf.int64),
               features.AGE_BUCKET: tf.constant([0, -1], tf.int64),
               features.MOVIE_GENRES: tf.constant(["", "|" * 1000 + "Cyberpunk"]),
               features.MOVIE_TITLE: tf.constant(["", "(19999)" * 10_000])}
    _assert_probabilities(predict_raw(**strange), 2)
    good(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_predict_by_ids_odd_inputs(model_name, loaded, good):
  predict = loaded[model_name][contract.PREDICT]
  empty = tf.constant([], tf.string)
  _assert_probabilities(predict(user_id=empty, movie_id=empty), 0)
  _assert_probabilities(predict(user_id=tf.constant(ODD_IDS),
                                movie_id=tf.constant(ODD_IDS)), len(ODD_IDS))
  # One user, two movies: an error, not two answers for a broadcast user.
  with pytest.raises(tf.errors.InvalidArgumentError, match="same length"):
    predict(user_id=tf.constant(["1"]), movie_id=tf.constant(["1", "2"]))
  good(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_recommend_odd_inputs(model_name, loaded, good):
  recommend = loaded[model_name][contract.RECOMMEND]
  for k in (0, -1, contract.MAX_K + 1, 2**31 - 1, -2**31):
    with pytest.raises(tf.errors.InvalidArgumentError, match=K_MESSAGE):
      recommend(user_id=tf.constant(["1"]), k=tf.constant(k, tf.int32))
    good(model_name)
  with pytest.raises(tf.errors.InvalidArgumentError, match="int32 tensor but is a int64"):
    recommend(user_id=tf.constant(["1"]), k=tf.constant(5, tf.int64))
  empty = recommend(user_id=tf.constant([], tf.string), k=tf.constant(5))
  assert empty[contract.MOVIE_IDS].shape == empty[contract.SCORES].shape == (0, 5)
  # Odd user ids are unseen users: the cold-start list, as for any unknown user.
  result = recommend(user_id=tf.constant(ODD_IDS + ["nobody"]), k=tf.constant(5))
  ids = result[contract.MOVIE_IDS].numpy()
  assert all(list(row) == list(ids[-1]) for row in ids)
  good(model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_serving_default_odd_inputs(model_name, loaded, good, transformed_1m):
  serve = loaded[model_name][contract.SERVING_DEFAULT]
  _assert_probabilities(serve(examples=tf.constant([], tf.string)), 0)
  example = tf.train.Example()
  example.ParseFromString(transformed_1m.serialized[0])
  without_movie = tf.train.Example()
  without_movie.CopyFrom(example)
  del without_movie.features.feature[features.MOVIE_ID]
  int_movie = tf.train.Example()
  int_movie.CopyFrom(example)
  int_movie.features.feature[features.MOVIE_ID].Clear()
  int_movie.features.feature[features.MOVIE_ID].int64_list.value.append(1193)
  long_user = tf.train.Example()
  long_user.CopyFrom(example)
  long_user.features.feature[features.USER_ID].bytes_list.value[0] = LONG_ID.encode()
  _assert_probabilities(serve(examples=tf.constant([long_user.SerializeToString()])), 1)
  # Bytes that are not UTF-8 in TensorFlow's own message come out of its Python
  # binding as a UnicodeDecodeError; TF Serving (C++) answers them with HTTP 400.
  with pytest.raises((tf.errors.InvalidArgumentError, UnicodeDecodeError)):
    serve(examples=tf.constant([b"\xff\xfe not a tf.Example"]))
  good(model_name)
  for examples, message in [
      ([b"not a tf.Example"], "Could not parse example input"),
      ([without_movie.SerializeToString()],
       "Feature: movie_id \\(data type: string\\) is required but could not be found"),
      ([b""], "Feature: .* is required but could not be found"),
      ([int_movie.SerializeToString()], "Key: movie_id.*Data types don't match"),
  ]:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      serve(examples=tf.constant(examples))
    good(model_name)


# The client against the TF Serving double, which runs these SavedModels.


@pytest.fixture(scope="module")
def server(exported_models):
  with tf_serving_double.TFServingDouble(str(exported_models)) as double:
    yield double


@contextlib.contextmanager
def _client(server, protocol, model):
  url = server.rest_url if protocol == "rest" else server.grpc_url
  client = serving_client.ServingClient.from_url(url, model)
  try:
    yield client
  finally:
    client.close()


def _bad_request(call, *message_parts):
  with pytest.raises(ServingError) as error:
    call()
  assert error.value.reason == "bad_request", str(error.value)
  for part in message_parts:
    assert part in str(error.value)
  return error.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model_name", MODELS)
def test_client_odd_predict_inputs(model_name, protocol, server, transformed_1m):
  rows = _raw_rows(transformed_1m, model_name)
  with _client(server, protocol, model_name) as client:
    assert client.predict_batch([]) == []  # nothing sent
    for user_id in ODD_IDS:
      assert 0 <= client.predict(user_id=user_id, movie_id=user_id) <= 1
    odd_rows = [{**rows[0], contract.USER_ID: user_id} for user_id in ODD_IDS]
    assert len(client.predict_batch(odd_rows)) == len(ODD_IDS)
    missing = {k: v for k, v in rows[0].items() if k != contract.MOVIE_ID}
    _bad_request(lambda: client.predict_batch([missing]), "movie_id")
    _bad_request(lambda: client.predict(user_id="1", movie_id=1193), "string")
    _bad_request(lambda: client.predict(user_id="1", movie_id=None))
    if model_name == "deepfm":
      _bad_request(lambda: client.predict_batch([{**rows[0], features.USER_GENDER: "M"}]),
                   "user_gender" if protocol == "rest" else "int64")
      _bad_request(lambda: client.predict_batch([{**rows[0],
                                                  features.AGE_BUCKET: float("nan")}]))
    np.testing.assert_array_less(-1e-9, client.predict_batch(rows))  # still serving


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model_name", MODELS)
def test_client_odd_recommend_inputs(model_name, protocol, server):
  with _client(server, protocol, model_name) as client:
    cold_start = client.recommend("nobody", k=5)
    assert len(cold_start) == 5
    for user_id in ODD_IDS:
      assert client.recommend(user_id, k=5) == cold_start
    for k in (0, -1, contract.MAX_K + 1, 2**31, 2.5, True, "10", None):
      _bad_request(lambda k=k: client.recommend("1", k=k), K_MESSAGE, repr(k))
    for user_id in (42, None, b"1", ["1"]):
      _bad_request(lambda u=user_id: client.recommend(u, k=5), "user_id must be a string")
    assert len(client.recommend("1", k=contract.MAX_K)) == contract.MAX_K


def _post(server, model_name, body):
  """A raw REST call, as a client other than ours might make it: (status, body)."""
  request = urllib.request.Request(f"{server.rest_url}/v1/models/{model_name}:predict",
                                   json.dumps(body).encode())
  try:
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.status, json.load(response)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


@pytest.mark.parametrize("model_name", MODELS)
def test_the_server_itself_refuses_bad_k_and_ragged_batches(model_name, server):
  """What reaches the SavedModel from clients that do not check: HTTP 400."""
  for k in (0, -1, contract.MAX_K + 1):
    status, body = _post(server, model_name, {"signature_name": contract.RECOMMEND,
                                              "inputs": {"user_id": ["1"], "k": k}})
    assert status == 400 and K_MESSAGE in body["error"]
  status, body = _post(server, model_name, {
      "signature_name": contract.PREDICT,
      "inputs": {"user_id": ["1", "2"], "movie_id": ["1"]}})
  assert status == 400 and "must have the same length" in body["error"]
  status, body = _post(server, model_name, {"signature_name": contract.RECOMMEND,
                                            "inputs": {"user_id": [], "k": 3}})
  assert status == 200 and body["outputs"]["movie_ids"] == []
  status, body = _post(server, model_name, {"signature_name": contract.RECOMMEND,
                                            "inputs": {"user_id": ["1"], "k": 3}})
  assert status == 200 and len(body["outputs"]["movie_ids"][0]) == 3
