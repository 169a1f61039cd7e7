"""A client for the project's models on TensorFlow Serving, over REST or gRPC.

    client = ServingClient.from_url("http://localhost:8501", model="cf")
    client.predict(user_id="42", movie_id="1193")           # 0.71
    client.predict_batch([{"user_id": "42", "movie_id": "1193"},
                          {"user_id": "42", "movie_id": "661"}])  # [0.71, 0.43]
    client.recommend(user_id="42", k=3)  # [("2858", 0.93), ("260", 0.91), ...]
    recommender = ServingClient.from_url("http://localhost:8501", model="recommender")
    recommender.recommend_for_history(["1", "260"], k=3)  # [("1196", 0.95), ...]

`grpc://localhost:8500` (or plain `localhost:8500`) talks gRPC instead; both give
the same answers. Three signatures are called:

- `predict_raw`: one 1-D tensor per raw feature, as the raw schema types it
  (ids are strings: "42", not 42; genres one string "Action|Comedy"); output
  `like_probability`, [batch]. Values are sent as given: TF Serving checks them
  against the signature and its message comes back in the `ServingError`.
- `recommend`: `user_id` (string, [batch]) and `k` (int32 scalar); outputs
  `movie_ids` (string, [batch, k]) and `scores` (float32, [batch, k]).
- `recommend_for_history` (the two-stage `recommender` only): `history` (string,
  [batch, length], the movies a visitor rated, padded with "") and `k`; the same
  outputs as `recommend`.

The request bodies are built by the module-level functions `rest_predict_body`,
`rest_recommend_body`, `rest_recommend_for_history_body`, `grpc_predict_request`,
`grpc_recommend_request` and `grpc_recommend_for_history_request`, so tests and
docs show exactly what goes on the wire. Every failure (server down, timeout,
model not found, bad request, a response of unexpected shape) raises one
exception type, `ServingError`, naming the URL and the model.

REST uses only the standard library; gRPC needs grpcio and tensorflow-serving-api
(and imports TensorFlow, for its tensor protos, on first use).
"""
import base64
import collections.abc
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from common import errors
from serving.contract import HISTORY
from serving.contract import LIKE_PROBABILITY as OUTPUT_KEY
from serving.contract import MAX_K
from serving.contract import MOVIE_ID
from serving.contract import MOVIE_IDS as MOVIE_IDS_KEY
from serving.contract import PREDICT
from serving.contract import PREDICT_RAW
from serving.contract import RECOMMEND as RECOMMEND_SIGNATURE
from serving.contract import RECOMMEND_FOR_HISTORY
from serving.contract import SCORES as SCORES_KEY
from serving.contract import USER_ID
from serving.contract import K

DEFAULT_TIMEOUT = 10.0  # seconds

Row = Mapping[str, Any]


class ServingError(errors.RecsysError):
  """Any failure to get an answer from TF Serving.

  `reason` says which: "unavailable" (server down or unreachable), "timeout",
  "not_found" (no such model or version), "bad_request" (the server rejected the
  request, e.g. a missing feature, a wrong dtype or a missing signature, and its
  message is included; or the client did before sending: a k outside 1 to MAX_K,
  a history that is not a sequence of strings, a value that JSON or a tensor cannot
  hold), "bad_response" (an answer of unexpected shape) or "server_error" (anything
  else the server reported).
  """

  def __init__(self, message: str, *, url: str, model: str, reason: str):
    super().__init__(f"TF Serving at {url}, model {model!r}: {message}")
    self.url = url
    self.model = model
    self.reason = reason


# Request bodies, exactly as the clients send them.


def predict_signature(rows: Sequence[Row]) -> str:
  """`predict` for rows of ids alone (side features come from the model's
  tables); `predict_raw` when the rows carry side features too."""
  keys = set(rows[0]) if rows else set()
  return PREDICT if keys <= {USER_ID, MOVIE_ID} else PREDICT_RAW


def rest_predict_body(rows: Sequence[Row]) -> Dict[str, Any]:
  """The JSON body of a predict call: TF Serving's row ("instances") format."""
  return {"signature_name": predict_signature(rows),
          "instances": [dict(row) for row in rows]}


def rest_recommend_body(user_id: str, k: int) -> Dict[str, Any]:
  """The JSON body of a `recommend` call: the columnar ("inputs") format, since `k`
  is a scalar and the row format can only send batched tensors."""
  return {"signature_name": RECOMMEND_SIGNATURE, "inputs": {USER_ID: [user_id], K: k}}


def rest_recommend_for_history_body(movie_ids: Sequence[str], k: int) -> Dict[str, Any]:
  """The JSON body of a `recommend_for_history` call: one row of `history`, columnar."""
  return {"signature_name": RECOMMEND_FOR_HISTORY,
          "inputs": {HISTORY: [history_row(movie_ids)], K: k}}


def history_row(movie_ids: Sequence[str]) -> List[str]:
  """The row of `history` sent for one visitor: their movie ids, or [""] if none.

  An empty history asks for the cold-start list, not an error. It goes as one
  padding id ("", no movie), the case the signature defines (a history with no
  known movie), rather than as a row of length 0, whose handling it leaves open.
  """
  return list(movie_ids) or [""]


def grpc_predict_request(model: str, rows: Sequence[Row]):
  """The `PredictRequest` of a predict call: one 1-D tensor per feature.

  Python types give the tensor dtypes of the raw schema: str/bytes -> DT_STRING,
  int -> DT_INT64, float -> DT_FLOAT.
  """
  predict_pb2 = _grpc_modules()[1]
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = predict_signature(rows)
  for key in (rows[0] if rows else ()):
    values = [row[key] for row in rows]
    try:
      request.inputs[key].CopyFrom(_tensor_proto(values))
    except (TypeError, ValueError) as e:
      raise ValueError(f"feature {key!r}: no tensor of {repr(values)[:200]}: {e}") from e
  return request


def grpc_recommend_request(model: str, user_id: str, k: int):
  """The `PredictRequest` of a `recommend` call: `user_id` [1] and `k` an int32 scalar."""
  tf, predict_pb2 = _grpc_modules()[:2]
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = RECOMMEND_SIGNATURE
  request.inputs[USER_ID].CopyFrom(_tensor_proto([user_id]))
  request.inputs[K].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
  return request


def grpc_recommend_for_history_request(model: str, movie_ids: Sequence[str], k: int):
  """The `PredictRequest` of a `recommend_for_history` call: `history` [1, n] and `k`
  an int32 scalar."""
  tf, predict_pb2 = _grpc_modules()[:2]
  row = history_row(movie_ids)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = RECOMMEND_FOR_HISTORY
  request.inputs[HISTORY].CopyFrom(tf.make_tensor_proto([row], dtype=tf.string,
                                                        shape=[1, len(row)]))
  request.inputs[K].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
  return request


def _tensor_proto(values: List[Any]):
  tf = _grpc_modules()[0]
  if values and all(isinstance(v, (str, bytes)) for v in values):
    dtype = tf.string
  elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
    dtype = tf.int64  # the raw schema's integers are int64
  elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in values):
    dtype = tf.float32
  else:
    dtype = None  # let TensorFlow infer (and TF Serving reject) anything else
  return tf.make_tensor_proto(values, dtype=dtype)


def _grpc_modules():
  """TensorFlow and the TF Serving protos, imported on first gRPC use."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  return tf, predict_pb2, prediction_service_pb2_grpc


# Clients.


class ServingClient:
  """Predictions and recommendations of one model served by TF Serving.

  Build with `ServingClient.from_url`; `RestClient` and `GrpcClient` are the two
  protocols. Each call waits at most `timeout` seconds.
  """

  def __init__(self, url: str, model: str, timeout: float = DEFAULT_TIMEOUT):
    self.url = url
    self.model = model
    self.timeout = timeout

  @staticmethod
  def from_url(url: str, model: str, timeout: float = DEFAULT_TIMEOUT) -> "ServingClient":
    """`http(s)://host:8501` -> REST; `grpc://host:8500` or `host:8500` -> gRPC."""
    scheme = urllib.parse.urlsplit(url).scheme if "://" in url else ""
    if scheme in ("http", "https"):
      return RestClient(url, model, timeout)
    if scheme in ("grpc", ""):
      return GrpcClient(url, model, timeout)
    raise ValueError(f"unsupported TF Serving URL {url!r}: use http://host:8501 (REST) "
                     "or grpc://host:8500 (gRPC)")

  def predict(self, user_id: str, movie_id: str, **side_features) -> float:
    """The probability that `user_id` likes `movie_id`.

    `side_features` are the other raw features the model's `predict_raw` takes
    (DeepFM: user_gender, bucketized_user_age, ..., movie_genres="Action|Comedy").
    """
    return self.predict_batch([{USER_ID: user_id, MOVIE_ID: movie_id, **side_features}])[0]

  def predict_batch(self, rows: Sequence[Row]) -> List[float]:
    """One like probability per row; each row maps raw feature names to values."""
    if not rows:
      return []
    keys = set(rows[0])
    for index, row in enumerate(rows):
      if set(row) != keys:
        raise ValueError(f"every row needs the same features: row 0 has {sorted(keys)}, "
                         f"row {index} {sorted(row)}")
    probabilities = self._predict(rows)
    if len(probabilities) != len(rows):
      raise self._error(f"{len(probabilities)} predictions for {len(rows)} rows",
                        "bad_response")
    return probabilities

  def recommend(self, user_id: str, k: int) -> List[Tuple[str, float]]:
    """The model's top `k` movies for `user_id`: (movie_id, score), best first.

    A `user_id` that is not a string, or a `k` that is not a whole number from 1
    to `MAX_K`, is a "bad_request" ServingError before anything is sent (as the
    server would answer; a k past int32 could not even be sent over gRPC).
    """
    if not isinstance(user_id, str):
      raise self._error(f"bad request: {USER_ID} must be a string, got {user_id!r}",
                        "bad_request")
    self._check_k(k)
    return self._pairs(*self._recommend(user_id, k))

  def recommend_for_history(self, movie_ids: Sequence[str],
                            k: int) -> List[Tuple[str, float]]:
    """The top `k` movies for a visitor who rated `movie_ids`: (movie_id, score),
    best first. Only the two-stage `recommender` serves them.

    Ids the model does not know are ignored, and a history of none it knows (or
    an empty one, sent as [""]: see `history_row`) gets the cold-start list. A
    `movie_ids` that is not a sequence of strings (one string is not: "1193"
    would be four ids), or a `k` as for `recommend`, is a "bad_request"
    ServingError before anything is sent.
    """
    if isinstance(movie_ids, (str, bytes)) or not isinstance(movie_ids, collections.abc.Sequence):
      raise self._error(f"bad request: {HISTORY} must be a sequence of movie id "
                        f"strings, got {_shown(movie_ids)}", "bad_request")
    for index, movie_id in enumerate(movie_ids):
      if not isinstance(movie_id, str):
        raise self._error(f"bad request: {HISTORY}[{index}] must be a string, got "
                          f"{_shown(movie_id)}", "bad_request")
    self._check_k(k)
    return self._pairs(*self._recommend_for_history(movie_ids, k))

  def close(self) -> None:
    """Releases the connection (gRPC); the client is unusable afterwards."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _predict(self, rows: Sequence[Row]) -> List[float]:
    raise NotImplementedError

  def _recommend(self, user_id: str, k: int) -> Tuple[List[str], List[float]]:
    raise NotImplementedError

  def _recommend_for_history(self, movie_ids: Sequence[str],
                             k: int) -> Tuple[List[str], List[float]]:
    raise NotImplementedError

  def _check_k(self, k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
      raise self._error(f"bad request: k must be between 1 and {MAX_K}, got {k!r}",
                        "bad_request")

  def _pairs(self, movie_ids: List[str], scores: List[float]) -> List[Tuple[str, float]]:
    if len(movie_ids) != len(scores):
      raise self._error(f"{len(movie_ids)} {MOVIE_IDS_KEY} but {len(scores)} {SCORES_KEY}",
                        "bad_response")
    return list(zip(movie_ids, scores))

  def _error(self, message: str, reason: str) -> ServingError:
    return ServingError(message, url=self.url, model=self.model, reason=reason)

  def _bad_response(self, what: str, response: Any) -> ServingError:
    return self._error(f"unexpected response: {what}; got {_shown(response)}",
                       "bad_response")


def _shown(value: Any) -> str:
  """`repr(value)`, cut short: enough to recognise it in a one-line error."""
  shown = repr(value)
  return shown[:300] + "..." if len(shown) > 300 else shown


class RestClient(ServingClient):
  """TF Serving's REST API: `POST <url>/v1/models/<model>:predict` with JSON."""

  @property
  def predict_url(self) -> str:
    return f"{self.url.rstrip('/')}/v1/models/{urllib.parse.quote(self.model)}:predict"

  def _predict(self, rows):
    response = self._post(rest_predict_body(rows))
    predictions = response.get("predictions") if isinstance(response, dict) else None
    if not isinstance(predictions, list):
      raise self._bad_response('no "predictions" list', response)
    # A signature with one output gives a flat list; with several, a dict per row.
    if predictions and all(isinstance(p, dict) for p in predictions):
      if not all(OUTPUT_KEY in p for p in predictions):
        raise self._bad_response(f'no "{OUTPUT_KEY}" in the predictions', response)
      predictions = [p[OUTPUT_KEY] for p in predictions]
    return [self._number(p, response) for p in predictions]

  def _recommend(self, user_id, k):
    return self._top_k(rest_recommend_body(user_id, k))

  def _recommend_for_history(self, movie_ids, k):
    return self._top_k(rest_recommend_for_history_body(movie_ids, k))

  def _top_k(self, body: Dict[str, Any]) -> Tuple[List[str], List[float]]:
    """Posts a `recommend*` body: the one row of movie ids and scores it answers."""
    response = self._post(body)
    outputs = response.get("outputs") if isinstance(response, dict) else None
    if not (isinstance(outputs, dict) and _is_batch_of_one_list(outputs.get(MOVIE_IDS_KEY))
            and _is_batch_of_one_list(outputs.get(SCORES_KEY))):
      raise self._bad_response(f'expected "outputs" with "{MOVIE_IDS_KEY}" and '
                               f'"{SCORES_KEY}" of shape [1, k]', response)
    movie_ids = [self._string(m, response) for m in outputs[MOVIE_IDS_KEY][0]]
    scores = [self._number(s, response) for s in outputs[SCORES_KEY][0]]
    return movie_ids, scores

  def _post(self, body: Dict[str, Any]) -> Any:
    try:
      data = json.dumps(body, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:  # bytes, NaN, objects: not JSON
      raise self._error(f"bad request: the inputs cannot be sent as JSON ({e})",
                        "bad_request") from e
    request = urllib.request.Request(
        self.predict_url, data=data, method="POST",
        headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        text = response.read()
    except urllib.error.HTTPError as e:
      raise self._http_error(e) from e
    except urllib.error.URLError as e:
      raise self._connection_error(e.reason) from e
    except OSError as e:  # timeouts and resets while reading
      raise self._connection_error(e) from e
    except http.client.HTTPException as e:
      raise self._error(f"broken HTTP response: {e!r}", "server_error") from e
    try:
      return json.loads(text)
    except ValueError as e:
      raise self._bad_response("not JSON", text) from e

  def _http_error(self, error: urllib.error.HTTPError) -> ServingError:
    try:
      text = error.read().decode("utf-8", "replace")
    except OSError:
      text = ""
    try:
      message = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
      message = text.strip() or error.reason
    if error.code == 404:
      return self._error(f"not found (HTTP 404): {message}", "not_found")
    if error.code == 400:
      return self._error(f"bad request (HTTP 400): {message}", "bad_request")
    return self._error(f"HTTP {error.code}: {message}", "server_error")

  def _connection_error(self, reason: Any) -> ServingError:
    if isinstance(reason, (socket.timeout, TimeoutError)):
      return self._error(f"no answer within the {self.timeout:g} s timeout", "timeout")
    if isinstance(reason, ConnectionRefusedError):
      return self._error("connection refused: is TF Serving running, and is this its "
                         "REST port (--rest_api_port, usually 8501)?", "unavailable")
    return self._error(f"cannot reach the server: {reason}", "unavailable")

  def _number(self, value: Any, response: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise self._bad_response(f"{value!r} is not a number", response)
    return float(value)

  def _string(self, value: Any, response: Any) -> str:
    if isinstance(value, dict) and set(value) == {"b64"}:  # outputs named *_bytes
      return base64.b64decode(value["b64"]).decode("utf-8")
    if not isinstance(value, str):
      raise self._bad_response(f"{value!r} is not a string", response)
    return value


def _is_batch_of_one_list(value: Any) -> bool:
  return isinstance(value, list) and len(value) == 1 and isinstance(value[0], list)


class GrpcClient(ServingClient):
  """TF Serving's gRPC API: `PredictionService.Predict` with TensorProtos."""

  def __init__(self, url: str, model: str, timeout: float = DEFAULT_TIMEOUT):
    super().__init__(url, model, timeout)
    import grpc  # pylint: disable=g-import-not-at-top
    self._grpc = grpc
    self._tf, _, prediction_service_pb2_grpc = _grpc_modules()
    self.target = url.split("://", 1)[1] if "://" in url else url
    self.target = self.target.rstrip("/")
    self._channel = grpc.insecure_channel(self.target)
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

  def close(self) -> None:
    self._channel.close()

  def _predict(self, rows):
    try:
      request = grpc_predict_request(self.model, rows)
    except ValueError as e:  # values no tensor can hold, e.g. None
      raise self._error(f"bad request: {e}", "bad_request") from e
    response = self._call(request)
    if OUTPUT_KEY not in response.outputs:
      raise self._bad_response(f'no output "{OUTPUT_KEY}"', sorted(response.outputs))
    probabilities = self._tf.make_ndarray(response.outputs[OUTPUT_KEY])
    if probabilities.ndim != 1:
      raise self._bad_response(f'"{OUTPUT_KEY}" is not 1-D', probabilities.shape)
    return [float(p) for p in probabilities]

  def _recommend(self, user_id, k):
    return self._top_k(grpc_recommend_request(self.model, user_id, k))

  def _recommend_for_history(self, movie_ids, k):
    return self._top_k(grpc_recommend_for_history_request(self.model, movie_ids, k))

  def _top_k(self, request) -> Tuple[List[str], List[float]]:
    """Sends a `recommend*` request: the one row of movie ids and scores it answers."""
    response = self._call(request)
    if MOVIE_IDS_KEY not in response.outputs or SCORES_KEY not in response.outputs:
      raise self._bad_response(f'expected outputs "{MOVIE_IDS_KEY}" and "{SCORES_KEY}"',
                               sorted(response.outputs))
    movie_ids = self._tf.make_ndarray(response.outputs[MOVIE_IDS_KEY])
    scores = self._tf.make_ndarray(response.outputs[SCORES_KEY])
    if movie_ids.ndim != 2 or scores.ndim != 2 or len(movie_ids) != 1 or len(scores) != 1:
      raise self._bad_response("outputs not of shape [1, k]", (movie_ids.shape, scores.shape))
    return ([m.decode("utf-8") if isinstance(m, bytes) else str(m) for m in movie_ids[0]],
            [float(s) for s in scores[0]])

  def _call(self, request):
    grpc = self._grpc
    try:
      return self._stub.Predict(request, timeout=self.timeout)
    except grpc.RpcError as e:
      code, details = e.code(), e.details()
      if code == grpc.StatusCode.UNAVAILABLE:
        raise self._error(f"server unavailable: is TF Serving running, and is this its "
                          f"gRPC port (--port, usually 8500)? ({details})",
                          "unavailable") from e
      if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise self._error(f"no answer within the {self.timeout:g} s timeout",
                          "timeout") from e
      if code == grpc.StatusCode.NOT_FOUND:
        raise self._error(f"not found (NOT_FOUND): {details}", "not_found") from e
      if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        raise self._error(f"bad request ({code.name}): {details}", "bad_request") from e
      raise self._error(f"{code.name}: {details}", "server_error") from e
