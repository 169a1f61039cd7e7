"""The TF Serving client (serving/client.py) over REST and gRPC.

The TF Serving binary cannot be installed on these machines, so the client talks
to tests/tf_serving_double.py, an in-process stand-in that serves the same model
base path layout over TF Serving's documented REST and gRPC APIs. With
`tensorflow_model_server` on PATH, or TF_SERVING_URL set, `test_real_tf_serving`
also runs against the real server.
"""
import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from common import ports
from components import pusher
from export import signatures
from models import features
from serving import client as serving_client
from tests import tf_serving_double
from tests.conftest import cli_error

ServingError = serving_client.ServingError
PROTOCOLS = ["rest", "grpc"]
CF_MODEL = "cf"
# A tf.Module whose answers break the contract, to show the client refuses them.
TOY_MODEL = "toy"
TOY_MOVIES = [f"m{i}" for i in range(20)]
# The toy again, served under the two-stage recommender's name, with its
# `recommend_for_history`: the history tests need no trained model.
RECOMMENDER_MODEL = "recommender"


def _raw_rows(transformed, rows):
  """Raw CF features of some examples, as a client sends them: ids as strings."""
  return [{key: row[key][0].decode() for key in features.CF_RAW_FEATURES}
          for row in transformed.raw[rows]]


class _ToyRecommender(tf.Module):
  """Not a project model: signatures of the right names whose answers are wrong or
  partial (a `predict_raw` without `like_probability`, no `predict`), for the error
  tests, a `recommend` for the double's own tests, and a `recommend_for_history`
  for the history tests."""

  def __init__(self):
    super().__init__()
    self.movie_ids = tf.constant(TOY_MOVIES)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                tf.TensorSpec([], tf.int32, name="k")])
  def recommend(self, user_id, k):
    pairs = user_id[:, tf.newaxis] + "/" + self.movie_ids[tf.newaxis, :]
    scores = tf.cast(tf.strings.to_hash_bucket_fast(pairs, 10_000), tf.float32) / 10_000
    top = tf.math.top_k(scores, k)
    return {"movie_ids": tf.gather(self.movie_ids, top.indices), "scores": top.values}

  # The toy movies not in the history, in catalogue order, scored 1.0 down by 0.05;
  # past the movies left, "" and 0, as the recommender pads its lists. A k its 20
  # movies cannot fill is refused in the recommender's words.
  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history"),
                                tf.TensorSpec([], tf.int32, name="k")])
  def recommend_for_history(self, history, k):
    k_in_range = tf.debugging.assert_equal(
        tf.logical_and(k >= 1, k <= len(TOY_MOVIES)), True,
        message=f"k must be between 1 and {len(TOY_MOVIES)}")
    with tf.control_dependencies([k_in_range]):  # else top_k may fail first, in its words
      k = tf.identity(k)
    rated = tf.reduce_any(history[:, :, tf.newaxis] == self.movie_ids, axis=1)
    scores = tf.where(rated, -1.0, tf.linspace(1.0, 0.05, len(TOY_MOVIES)))
    top = tf.math.top_k(scores, k)
    left = top.values > 0
    return {"movie_ids": tf.where(left, tf.gather(self.movie_ids, top.indices), ""),
            "scores": tf.where(left, top.values, 0.0)}

  # Two outputs, neither `like_probability`: a response the client must refuse.
  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                tf.TensorSpec([None], tf.string, name="movie_id"),
                                tf.TensorSpec([None], tf.int64, name="user_gender")])
  def predict_raw(self, user_id, movie_id, user_gender):  # pylint: disable=unused-argument
    return {"score": tf.zeros(tf.shape(user_id)), "rank": tf.zeros(tf.shape(movie_id))}


@pytest.fixture(scope="module")
def model_base(exported_models, tmp_path_factory):
  """A TF Serving model base path: <base>/cf/1 (the project's CF model) and the toy."""
  base = tmp_path_factory.mktemp("serving")
  shutil.copytree(exported_models / CF_MODEL, base / CF_MODEL)
  toy = _ToyRecommender()
  tf.saved_model.save(toy, str(base / TOY_MODEL / "1"), signatures={
      "recommend": toy.recommend, "predict_raw": toy.predict_raw})
  return base


@pytest.fixture(scope="module")
def recommender_base(tmp_path_factory):
  """A serving folder holding only the toy, as `recommender` version 1."""
  base = tmp_path_factory.mktemp("toy-recommender")
  toy = _ToyRecommender()
  tf.saved_model.save(toy, str(base / RECOMMENDER_MODEL / "1"), signatures={
      "recommend": toy.recommend, "recommend_for_history": toy.recommend_for_history})
  return base


@pytest.fixture(scope="module")
def recommender_server(recommender_base):
  with tf_serving_double.TFServingDouble(str(recommender_base)) as double:
    yield double


@pytest.fixture(scope="module")
def server(model_base):
  with tf_serving_double.TFServingDouble(str(model_base)) as double:
    yield double


@pytest.fixture(scope="module")
def saved_models(model_base):
  """The exported models loaded in this process: what the served answers must equal."""
  return {name: tf.saved_model.load(str(model_base / name / "1"))
          for name in (CF_MODEL, TOY_MODEL)}


def _url(server, protocol):
  return server.rest_url if protocol == "rest" else server.grpc_url


@contextlib.contextmanager
def _client(url, model, timeout=10.0):
  client = serving_client.ServingClient.from_url(url, model, timeout=timeout)
  try:
    yield client
  finally:
    client.close()


# The request bodies, as the client builds them.


def test_rest_bodies_are_tf_servings_row_and_columnar_formats():
  assert serving_client.rest_predict_body([{"user_id": "42", "movie_id": "1193"}]) == {
      "signature_name": "predict", "instances": [{"user_id": "42", "movie_id": "1193"}]}
  with_side_features = [{"user_id": "42", "movie_id": "1193", "user_gender": 1}]
  assert serving_client.rest_predict_body(with_side_features) == {
      "signature_name": "predict_raw", "instances": with_side_features}
  assert serving_client.rest_recommend_body("42", 10) == {
      "signature_name": "recommend", "inputs": {"user_id": ["42"], "k": 10}}
  assert serving_client.rest_recommend_for_history_body(["1", "260"], 10) == {
      "signature_name": "recommend_for_history",
      "inputs": {"history": [["1", "260"]], "k": 10}}
  # No movie rated: one padding id, which the signature reads as "no known movie".
  assert serving_client.rest_recommend_for_history_body([], 10)["inputs"]["history"] == [[""]]


def test_grpc_requests_carry_one_tensor_per_input():
  request = serving_client.grpc_predict_request(
      "cf", [{"user_id": "42", "movie_id": "1193"}, {"user_id": "7", "movie_id": "1"}])
  assert request.model_spec.name == "cf"
  assert request.model_spec.signature_name == "predict"
  assert set(request.inputs) == {"user_id", "movie_id"}
  assert request.inputs["user_id"].dtype == tf.string.as_datatype_enum
  np.testing.assert_array_equal(tf.make_ndarray(request.inputs["user_id"]), [b"42", b"7"])
  age = serving_client.grpc_predict_request("deepfm", [{"bucketized_user_age": 25}])
  assert age.model_spec.signature_name == "predict_raw"
  assert age.inputs["bucketized_user_age"].dtype == tf.int64.as_datatype_enum  # as the schema

  request = serving_client.grpc_recommend_request("cf", "42", 10)
  assert request.model_spec.signature_name == "recommend"
  np.testing.assert_array_equal(tf.make_ndarray(request.inputs["user_id"]), [b"42"])
  assert request.inputs["k"].dtype == tf.int32.as_datatype_enum
  assert tf.make_ndarray(request.inputs["k"]).shape == ()
  assert int(tf.make_ndarray(request.inputs["k"])) == 10

  request = serving_client.grpc_recommend_for_history_request("recommender", ("1", "260"), 7)
  assert request.model_spec.name == "recommender"
  assert request.model_spec.signature_name == "recommend_for_history"
  assert set(request.inputs) == {"history", "k"}
  assert request.inputs["history"].dtype == tf.string.as_datatype_enum
  np.testing.assert_array_equal(tf.make_ndarray(request.inputs["history"]), [[b"1", b"260"]])
  assert request.inputs["k"].dtype == tf.int32.as_datatype_enum
  assert tf.make_ndarray(request.inputs["k"]).shape == ()
  assert int(tf.make_ndarray(request.inputs["k"])) == 7
  empty = serving_client.grpc_recommend_for_history_request("recommender", [], 7)
  np.testing.assert_array_equal(tf.make_ndarray(empty.inputs["history"]), [[b""]])


def test_from_url_picks_the_protocol():
  assert isinstance(serving_client.ServingClient.from_url("http://localhost:8501", "cf"),
                    serving_client.RestClient)
  for url in ("grpc://localhost:8500", "localhost:8500"):
    with _client(url, "cf") as client:
      assert isinstance(client, serving_client.GrpcClient)
      assert client.target == "localhost:8500"
  with pytest.raises(ValueError, match="unsupported"):
    serving_client.ServingClient.from_url("ftp://localhost:21", "cf")


def test_rows_must_share_their_features():
  client = serving_client.ServingClient.from_url("http://127.0.0.1:1", "cf")
  with pytest.raises(ValueError, match="same features"):
    client.predict_batch([{"user_id": "42", "movie_id": "1"}, {"user_id": "7"}])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("history, k, message", [
    ("1193", 10, "history must be a sequence of movie id strings, got '1193'"),
    (None, 10, "history must be a sequence of movie id strings, got None"),
    ({"1", "2"}, 10, "history must be a sequence of movie id strings"),
    (["1", 260], 10, "history[1] must be a string, got 260"),
    (["1", b"260"], 10, "history[1] must be a string, got b'260'"),
    (["1"], 0, "k must be between 1 and 100, got 0"),
    (["1"], 101, "k must be between 1 and 100, got 101"),
    (["1"], True, "k must be between 1 and 100, got True"),
    (["1"], "10", "k must be between 1 and 100, got '10'"),
], ids=["one_string", "none", "set", "int_id", "bytes_id", "k_0", "k_101", "k_bool",
        "k_string"])
def test_history_requests_are_checked_before_sending(protocol, history, k, message):
  # Nothing listens on port 1: a request sent would fail as "unavailable".
  url = "http://127.0.0.1:1" if protocol == "rest" else "grpc://127.0.0.1:1"
  with _client(url, RECOMMENDER_MODEL) as client:
    with pytest.raises(ServingError) as error:
      client.recommend_for_history(history, k)
  assert error.value.reason == "bad_request"
  assert f"bad request: {message}" in str(error.value)


# predict: the real CF model, exported as the Trainer exports it.


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predictions_equal_the_saved_models(protocol, server, saved_models, transformed_1m):
  rows = _raw_rows(transformed_1m, slice(0, 64))
  expected = saved_models[CF_MODEL].signatures["predict_raw"](
      user_id=tf.constant([r["user_id"] for r in rows]),
      movie_id=tf.constant([r["movie_id"] for r in rows]))[signatures.OUTPUT_KEY].numpy()
  with _client(_url(server, protocol), CF_MODEL) as client:
    np.testing.assert_allclose(client.predict_batch(rows), expected, rtol=0, atol=1e-6)
    single = client.predict(user_id=rows[0]["user_id"], movie_id=rows[0]["movie_id"])
    assert isinstance(single, float)
    assert single == pytest.approx(expected[0], abs=1e-6)
    # Ids the vocabulary never saw go to the OOV bucket: still a probability.
    assert 0 <= client.predict(user_id="no-such-user", movie_id="no-such-movie") <= 1
    assert client.predict_batch([]) == []


# recommend: the project's CF model, its TFRS BruteForce index saved with it.


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recommend_returns_the_signatures_top_k(protocol, server, saved_models,
                                               transformed_1m):
  recommend = saved_models[CF_MODEL].signatures["recommend"]
  users = [row["user_id"] for row in _raw_rows(transformed_1m, slice(0, 2))] + ["unknown"]
  with _client(_url(server, protocol), CF_MODEL) as client:
    for user_id in users:
      expected = recommend(user_id=tf.constant([user_id]), k=tf.constant(5))
      recommended = client.recommend(user_id, k=5)
      assert [m for m, _ in recommended] == [m.decode() for m in
                                              expected["movie_ids"].numpy()[0]]
      np.testing.assert_allclose([s for _, s in recommended],
                                 expected["scores"].numpy()[0], atol=1e-6)
      scores = [s for _, s in recommended]
      assert scores == sorted(scores, reverse=True)
    with pytest.raises(ServingError, match="k must be between 1 and 100") as error:
      client.recommend(users[0], k=0)
    assert error.value.reason == "bad_request"


# recommend_for_history: the toy, served as the two-stage recommender.


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recommend_for_history_leaves_out_the_history(protocol, recommender_server):
  with _client(_url(recommender_server, protocol), RECOMMENDER_MODEL) as client:
    # "m99" is no movie of the toy's: ignored, as the recommender ignores unknown ids.
    recommended = client.recommend_for_history(["m0", "m3", "m99"], k=5)
    assert [movie for movie, _ in recommended] == ["m1", "m2", "m4", "m5", "m6"]
    assert [score for _, score in recommended] == pytest.approx([0.95, 0.9, 0.8, 0.75, 0.7])
    assert all(isinstance(score, float) for _, score in recommended)
    # No history: sent as [""], it gets the toy's "cold-start" list, its first movies.
    assert [m for m, _ in client.recommend_for_history([], k=3)] == ["m0", "m1", "m2"]
    # Fewer movies left than k: the list comes back padded, as the server sent it.
    padded = client.recommend_for_history(TOY_MOVIES[:18], k=4)
    assert [movie for movie, _ in padded] == ["m18", "m19", "", ""]
    assert [score for _, score in padded] == pytest.approx([0.1, 0.05, 0, 0])
    # A k the client lets through and the model refuses: the server's message.
    with pytest.raises(ServingError, match="k must be between 1 and 20") as error:
      client.recommend_for_history(["m0"], k=21)
    assert error.value.reason == "bad_request"


# Errors: one exception type, naming the URL and the model.


@pytest.fixture
def closed_port():
  return ports.free_port()


@pytest.fixture
def silent_port():
  """A server that accepts connections and never answers."""
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(8)
  accepted = []
  stop = threading.Event()

  def accept():
    listener.settimeout(0.2)
    while not stop.is_set():
      try:
        accepted.append(listener.accept()[0])
      except OSError:
        pass
  thread = threading.Thread(target=accept, daemon=True)
  thread.start()
  yield listener.getsockname()[1]
  stop.set()
  thread.join()
  for connection in accepted:
    connection.close()
  listener.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_down(protocol, closed_port):
  url = f"http://127.0.0.1:{closed_port}" if protocol == "rest" else f"127.0.0.1:{closed_port}"
  with _client(url, CF_MODEL, timeout=5) as client:
    with pytest.raises(ServingError) as error:
      client.predict(user_id="42", movie_id="1193")
  assert error.value.reason == "unavailable"
  assert url in str(error.value) and "'cf'" in str(error.value)
  assert "is TF Serving running" in str(error.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timeout(protocol, silent_port):
  url = f"{'http' if protocol == 'rest' else 'grpc'}://127.0.0.1:{silent_port}"
  with _client(url, CF_MODEL, timeout=1.0) as client:
    started = time.monotonic()
    with pytest.raises(ServingError) as error:
      client.predict(user_id="42", movie_id="1193")
    assert time.monotonic() - started < 4
  assert error.value.reason == "timeout"
  assert url in str(error.value) and "1 s timeout" in str(error.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model(protocol, server):
  with _client(_url(server, protocol), "no_such_model") as client:
    with pytest.raises(ServingError, match="not found") as error:
      client.predict(user_id="42", movie_id="1193")
  assert error.value.reason == "not_found"
  assert "Servable not found for request: Latest(no_such_model)" in str(error.value)
  assert "'no_such_model'" in str(error.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("row, message", [
    ({"user_id": "42"}, "Missing but required: {movie_id}"),
    ({"user_id": "42", "movie_id": "1193", "movie_title": "Heat (1995)"},
     "movie_title"),
    ({"user_id": "42", "movie_id": 1193}, "string"),
], ids=["missing_feature", "unknown_feature", "wrong_dtype"])
def test_bad_request_carries_tf_servings_message(protocol, row, message, server):
  with _client(_url(server, protocol), CF_MODEL) as client:
    with pytest.raises(ServingError, match="bad request") as error:
      client.predict_batch([row])
  assert error.value.reason == "bad_request"
  assert message in str(error.value)


def test_bad_request_messages_are_tf_servings(server):
  """The double's wording, as TF Serving's REST API gives it for a wrong dtype."""
  with _client(server.rest_url, CF_MODEL) as client:
    with pytest.raises(ServingError) as error:
      client.predict(user_id="42", movie_id=1193)
  assert ("bad request (HTTP 400): Failed to process element: 0 key: movie_id of "
          "'instances' list. Error: Invalid argument: JSON Value: 1193 Type: Number is "
          "not of expected type: string") in str(error.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_missing_signature(protocol, server):
  with _client(_url(server, protocol), TOY_MODEL) as client:
    with pytest.raises(ServingError, match='Serving signature key "predict" not found'):
      client.predict("42", "1193")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unexpected_response_shape(protocol, server):
  # The toy's predict_raw answers "score" and "rank", not "like_probability".
  with _client(_url(server, protocol), TOY_MODEL) as client:
    with pytest.raises(ServingError, match="unexpected response") as error:
      client.predict_batch([{"user_id": "42", "movie_id": "1193", "user_gender": 1}])
  assert error.value.reason == "bad_response"
  assert "like_probability" in str(error.value)


# The double itself, where the client does not reach.


def test_double_serves_the_highest_version_and_reports_status(model_base, tmp_path):
  toy = _ToyRecommender()
  for version in (1, 3):
    tf.saved_model.save(toy, str(tmp_path / "toy" / str(version)),
                        signatures={"recommend": toy.recommend})
  (tmp_path / "toy" / "7").mkdir()  # no saved_model.pb: not a version
  with tf_serving_double.TFServingDouble(str(tmp_path)) as double:
    with urllib.request.urlopen(f"{double.rest_url}/v1/models/toy") as response:
      status = json.load(response)
    assert [v["version"] for v in status["model_version_status"]] == ["3", "1"]
    assert double.servable("toy", None)[0] == 3
    body = json.dumps({"signature_name": "recommend",
                       "inputs": {"user_id": ["42"], "k": 2}}).encode()
    for path in ("/v1/models/toy:predict", "/v1/models/toy/versions/1:predict"):
      with urllib.request.urlopen(urllib.request.Request(double.rest_url + path, body)) as r:
        outputs = json.load(r)["outputs"]
      assert len(outputs["movie_ids"][0]) == 2 and len(outputs["scores"][0]) == 2
    with pytest.raises(urllib.error.HTTPError) as error:
      urllib.request.urlopen(urllib.request.Request(
          double.rest_url + "/v1/models/toy/versions/2:predict", body))
    assert error.value.code == 404
    assert json.load(error.value) == {
        "error": "Servable not found for request: Specific(toy, 2)"}


# A real TF Serving, when there is one.

_TF_SERVING_BINARY = shutil.which("tensorflow_model_server")
_NO_TF_SERVING = (
    "no real TF Serving: the tensorflow_model_server binary cannot be installed on "
    "these machines. Put it on PATH (the test then serves the exported models itself) "
    "or set TF_SERVING_URL (http://host:8501 or grpc://host:8500) to a server of a "
    "run's models.config")


def _wait_until_available(rest_url, models, process, log_path, seconds=180):
  """Polls TF Serving's model status API until every model has an AVAILABLE version."""
  deadline = time.monotonic() + seconds
  waiting = list(models)
  while waiting:
    if process.poll() is not None:
      pytest.fail(f"tensorflow_model_server exited ({process.returncode}): "
                  f"{pathlib.Path(log_path).read_text()[-3000:]}")
    try:
      with urllib.request.urlopen(f"{rest_url}/v1/models/{waiting[0]}", timeout=5) as r:
        states = {v["state"] for v in json.load(r)["model_version_status"]}
      if "AVAILABLE" in states:
        waiting.pop(0)
        continue
    except (OSError, ValueError, KeyError):
      pass  # not listening yet, or the model still loading
    if time.monotonic() > deadline:
      pytest.fail(f"{waiting} not AVAILABLE after {seconds} s: "
                  f"{pathlib.Path(log_path).read_text()[-3000:]}")
    time.sleep(1)


@pytest.fixture(scope="module")
def real_tf_serving(request, tmp_path_factory):
  """(URLs, local models or None) of a real TF Serving.

  TF_SERVING_URL's server, whose models this test cannot see; or, with the binary on
  PATH, one started here on both exported models through a models.config as the
  Pusher writes it, over REST and gRPC.
  """
  if os.environ.get("TF_SERVING_URL"):
    yield [os.environ["TF_SERVING_URL"]], None
    return
  if _TF_SERVING_BINARY is None:
    pytest.skip(_NO_TF_SERVING)
  exported_models = request.getfixturevalue("exported_models")  # only when needed
  base = tmp_path_factory.mktemp("tf-serving")
  for model in ("cf", "deepfm"):
    shutil.copytree(exported_models / model, base / model)
  config = base / pusher.MODELS_CONFIG_FILE
  config.write_text(pusher.models_config(str(base), base_dir=str(base)))
  rest_port, grpc_port = ports.free_ports(2)
  log_path = base / "tensorflow_model_server.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        [_TF_SERVING_BINARY, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={config}"], stdout=log, stderr=subprocess.STDOUT)
  try:
    rest_url = f"http://127.0.0.1:{rest_port}"
    _wait_until_available(rest_url, ("cf", "deepfm"), process, log_path)
    local = {model: tf.saved_model.load(str(base / model / "1"))
             for model in ("cf", "deepfm")}
    yield [rest_url, f"grpc://127.0.0.1:{grpc_port}"], local
  finally:
    process.terminate()
    process.wait(timeout=30)


def test_real_tf_serving(real_tf_serving, transformed_1m):
  urls, local = real_tf_serving
  rows = _raw_rows(transformed_1m, slice(0, 32))
  user = rows[0]["user_id"]
  for url in urls:
    for model in ("cf", "deepfm"):
      with _client(url, model) as client:
        probabilities = client.predict_batch(rows)
        top = client.recommend(user, 10)
      assert len(probabilities) == len(rows) and all(0 <= p <= 1 for p in probabilities)
      assert len(top) == 10
      if local is not None:  # the served answers are the SavedModel's own
        signatures = local[model].signatures
        expected = signatures["predict"](
            user_id=tf.constant([r["user_id"] for r in rows]),
            movie_id=tf.constant([r["movie_id"] for r in rows]))["like_probability"]
        np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-6)
        expected_top = signatures["recommend"](user_id=tf.constant([user]),
                                               k=tf.constant(10))["movie_ids"].numpy()[0]
        assert [movie for movie, _ in top] == [m.decode() for m in expected_top]
    with _client(url, "no_such_model") as client:
      with pytest.raises(ServingError, match="not found"):
        client.predict("1", "1193")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recsys_recommend_calls_the_server(protocol, server, saved_models, transformed_1m,
                                           tmp_path, capsys):
  from pipeline import cli  # pylint: disable=g-import-not-at-top
  user = _raw_rows(transformed_1m, slice(0, 1))[0]["user_id"]
  expected = saved_models[CF_MODEL].signatures["recommend"](
      user_id=tf.constant([user]), k=tf.constant(4))["movie_ids"].numpy()[0]
  assert cli.main(["recommend", "--user", user, "--k", "4", "--model", "cf", "--server",
                   _url(server, protocol), "--run-dir", str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].endswith(f"movies for user {user} (cf on TF Serving at "
                           f"{_url(server, protocol)}):")
  assert [line.split()[1] for line in lines[2:]] == [m.decode() for m in expected if m]
  # The default, the two-stage recommender, is not served by this server.
  assert cli.main(["recommend", "--user", user, "--k", "4",
                   "--server", _url(server, protocol), "--run-dir", str(tmp_path)]) == 1
  assert "not found" in capsys.readouterr().err


def _usage_error(capsys, *argv: str) -> str:
  """The last line argparse prints as it refuses `recsys ARGV` (exit 2)."""
  from pipeline import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    cli.main(list(argv))
  assert exit_info.value.code == 2
  return capsys.readouterr().err.strip().splitlines()[-1]


def test_recsys_recommend_takes_a_user_or_a_history(capsys):
  assert _usage_error(capsys, "recommend", "--user", "42", "--history", "1,2").endswith(
      "error: argument --history: not allowed with argument --user")
  assert _usage_error(capsys, "recommend").endswith(
      "error: one of the arguments --user --history is required")
  for model in ("cf", "deepfm"):
    assert _usage_error(capsys, "recommend", "--history", "1,2", "--model", model).endswith(
        "error: --history needs --model recommender: only the two-stage recommender "
        f"serves recommend_for_history; {model} recommends for user ids alone")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recsys_recommend_a_history_on_the_server(protocol, recommender_server, tmp_path,
                                                  capsys):
  from pipeline import cli  # pylint: disable=g-import-not-at-top
  url = _url(recommender_server, protocol)
  assert cli.main(["recommend", "--history", "m0, m2,,m99", "--k", "3", "--server", url,
                   "--run-dir", str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == (f"Top 3 movies for a visitor who rated m0, m2, m99 (recommender on "
                      f"TF Serving at {url}):")
  assert [line.split()[1] for line in lines[2:]] == ["m1", "m3", "m4"]
  # The padding of a list shorter than k is not printed.
  assert cli.main(["recommend", "--history", ",".join(TOY_MOVIES[:18]), "--k", "4",
                   "--server", url, "--run-dir", str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("Top 2 movies for a visitor who rated m0, m1, ")
  assert [line.split()[1] for line in lines[2:]] == ["m18", "m19"]
  # The server's refusal, passed on (the toy's limit is below the client's own).
  assert cli.main(["recommend", "--history", "m0", "--k", "21", "--server", url,
                   "--run-dir", str(tmp_path)]) == 1
  error = capsys.readouterr().err
  assert "bad request" in error and "k must be between 1 and 20" in error


def test_recsys_recommend_in_process_on_the_toy(recommender_base, tmp_path, capsys):
  """The in-process path, both ways of asking, on the toy standing in for a pushed
  recommender."""
  from pipeline import cli  # pylint: disable=g-import-not-at-top
  model_dir = recommender_base / RECOMMENDER_MODEL / "1"
  local = ["--serving-dir", str(recommender_base), "--run-dir", str(tmp_path)]
  assert cli.main(["recommend", "--history", "m1", "--k", "2", *local]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"Top 2 movies for a visitor who rated m1 (recommender from {model_dir}):"
  assert [line.split()[1:3] for line in lines[2:]] == [["m0", "1.000"], ["m2", "0.900"]]
  assert cli.main(["recommend", "--history", "", "--k", "2", *local]) == 0
  assert capsys.readouterr().out.splitlines()[0].startswith(
      "Top 2 movies for a visitor who rated nothing yet (recommender from ")
  expected = tf.saved_model.load(str(model_dir)).signatures["recommend"](
      user_id=tf.constant(["42"]), k=tf.constant(3))["movie_ids"].numpy()[0]
  assert cli.main(["recommend", "--user", "42", "--k", "3", *local]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"Top 3 movies for user 42 (recommender from {model_dir}):"
  assert [line.split()[1] for line in lines[2:]] == [m.decode() for m in expected]
  assert cli_error(capsys, "recommend", "--history", "m1", "--k", "21", *local) == (
      f"error: {model_dir}: k must be between 1 and 20")


def test_recsys_recommend_a_history_with_a_recommender_from_before(tmp_path, capsys):
  toy = _ToyRecommender()
  model_dir = tmp_path / "serving" / RECOMMENDER_MODEL / "1"
  tf.saved_model.save(toy, str(model_dir), signatures={"recommend": toy.recommend})
  assert cli_error(capsys, "recommend", "--history", "m1", "--run-dir", str(tmp_path)) == (
      f"error: {model_dir} predates the recommend_for_history signature: it was pushed "
      "before the model had one; a new run (`recsys run`) pushes one that has it")
