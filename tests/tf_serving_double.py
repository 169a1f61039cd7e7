"""A test double for TensorFlow Serving (`tensorflow_model_server`), in process.

The TF Serving binary cannot be installed on these machines, so the client tests
run against this stand-in instead. It follows TF Serving's documented REST and
gRPC APIs (https://www.tensorflow.org/tfx/serving/api_rest and the
`tensorflow_serving.apis` protos) for what the project uses:

- The model base path layout: `<base>/<model_name>/<numeric version>/saved_model.pb`;
  every model under `<base>` is loaded at start (`tf.saved_model.load`), and
  requests without a version go to the highest one. Or, as with
  `--model_config_file`, the models a models.config lists, each with the versions
  its `model_version_policy` selects (TF Serving's default: the latest one).
- REST (`http.server` on a free port): `POST /v1/models/<name>[/versions/N]:predict`
  with the row ("instances") or columnar ("inputs") format, answered with
  {"predictions": ...} or {"outputs": ...} as TF Serving shapes them (a bare
  list/value when the signature has one output, dicts when it has several);
  errors as {"error": "<message>"} with 404 for an unknown model or version
  ("Servable not found for request: Latest(<name>)") and 400 for bad inputs;
  `GET /v1/models/<name>[/versions/N]` gives the version status.
- gRPC (`grpc.server` on a free port): `PredictionService.Predict`, with the
  statuses NOT_FOUND, INVALID_ARGUMENT and FAILED_PRECONDITION (no such signature).

Error messages copy TF Serving's wording where it is known (the JSON checks of
its json_tensor.cc, "Servable not found for request: ...", "Serving signature key
... not found.", the input-count check of its Predict); a few (shape checks,
malformed row lists) paraphrase it. Not covered: classify/regress/
multi-inference, model metadata, labels, config reloads, batching.

    with TFServingDouble(base_path) as server:
      server.rest_url   # "http://127.0.0.1:<port>"
      server.grpc_url   # "grpc://127.0.0.1:<port>"
"""
import base64
import concurrent.futures
import http.server
import json
import os
import re
import threading
from typing import Any, Dict, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_SIGNATURE = "serving_default"
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?::(?P<verb>[a-z]+))?$")


class ServingStatus(Exception):
  """A failed request: a gRPC status code and TF Serving's message."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


def _invalid(message: str) -> ServingStatus:
  return ServingStatus(grpc.StatusCode.INVALID_ARGUMENT, message)


# TF Serving answers REST calls with these HTTP codes (http_server.cc's mapping).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


class TFServingDouble:
  """Serves every SavedModel under `base_path` over REST and gRPC, like TF Serving;
  or those `model_config_file` lists (then `base_path` is ignored)."""

  def __init__(self, base_path: str = "", host: str = "127.0.0.1",
               model_config_file: Optional[str] = None):
    self.base_path = base_path
    self.model_config_file = model_config_file
    self.host = host
    self._models: Dict[str, Dict[int, Any]] = {}
    self._http: Optional[http.server.ThreadingHTTPServer] = None
    self._grpc: Optional[grpc.Server] = None
    self.rest_port = self.grpc_port = 0

  @property
  def rest_url(self) -> str:
    return f"http://{self.host}:{self.rest_port}"

  @property
  def grpc_url(self) -> str:
    return f"grpc://{self.host}:{self.grpc_port}"

  def start(self) -> "TFServingDouble":
    """Loads the models and starts both servers on free ports."""
    self._load_models()
    self._http = http.server.ThreadingHTTPServer((self.host, 0), _rest_handler(self))
    self._http.daemon_threads = True
    self.rest_port = self._http.server_address[1]
    threading.Thread(target=self._http.serve_forever, daemon=True,
                     name="tf-serving-double-rest").start()
    self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(self), self._grpc)
    self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:0")
    self._grpc.start()
    return self

  def stop(self) -> None:
    if self._http:
      self._http.shutdown()
      self._http.server_close()
    if self._grpc:
      self._grpc.stop(grace=None)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc_info):
    self.stop()

  def _model_folders(self) -> Dict[str, Tuple[str, Optional[int]]]:
    """Model name -> (base path, how many of the latest versions to serve; None: all)."""
    if self.model_config_file is None:
      return {name: (os.path.join(self.base_path, name), None)
              for name in sorted(os.listdir(self.base_path))
              if os.path.isdir(os.path.join(self.base_path, name))}
    with open(self.model_config_file) as f:
      config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    folders = {}
    for entry in config.model_config_list.config:
      policy = entry.model_version_policy
      if policy.WhichOneof("policy_choice") not in (None, "latest"):
        raise NotImplementedError(f"{entry.name}: only the `latest` version policy")
      folders[entry.name] = (entry.base_path, policy.latest.num_versions or 1)
    return folders

  def _load_models(self) -> None:
    for name, (folder, latest) in self._model_folders().items():
      versions = sorted(int(v) for v in os.listdir(folder) if v.isdigit() and
                        os.path.isfile(os.path.join(folder, v, "saved_model.pb")))
      if latest is not None:
        versions = versions[-latest:]
      if versions:
        self._models[name] = {v: tf.saved_model.load(os.path.join(folder, str(v)))
                              for v in versions}

  # The request path shared by both protocols.

  def servable(self, name: str, version: Optional[int]) -> Tuple[int, Any]:
    """(version, loaded SavedModel) of a request; NOT_FOUND as TF Serving words it."""
    versions = self._models.get(name, {})
    if version is None:
      if not versions:
        raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                            f"Servable not found for request: Latest({name})")
      version = max(versions)
    if version not in versions:
      raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Specific({name}, {version})")
    return version, versions[version]

  def version_status(self, name: str, version: Optional[int]) -> Dict[str, Any]:
    """The body of `GET /v1/models/<name>`: every loaded version is AVAILABLE."""
    versions = sorted(self._models.get(name, {}), reverse=True)
    if version is not None:
      versions = [v for v in versions if v == version]
    if not versions:
      what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
      raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                          f"Could not find any versions of model {name}"
                          if version is None else f"Servable not found for request: {what}")
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in versions]}

  def run(self, name: str, version: Optional[int], signature_name: str,
          inputs: Dict[str, np.ndarray]) -> Tuple[int, Dict[str, np.ndarray]]:
    """Runs one signature on numpy inputs: (version, outputs as numpy arrays)."""
    version, loaded = self.servable(name, version)
    signature_name = signature_name or DEFAULT_SIGNATURE
    if signature_name not in loaded.signatures:
      raise ServingStatus(grpc.StatusCode.FAILED_PRECONDITION,
                          f'Serving signature key "{signature_name}" not found.')
    function = loaded.signatures[signature_name]
    specs = signature_inputs(function)
    if set(inputs) != set(specs):
      extra = sorted(set(inputs) - set(specs))
      missing = sorted(set(specs) - set(inputs))
      raise _invalid(
          f"input size does not match signature: {len(inputs)}!={len(specs)} "
          f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(specs))}}}). "
          f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    feeds = {}
    for key, spec in specs.items():
      value = inputs[key]
      dtype = "string" if value.dtype.kind in "SUO" else tf.as_dtype(value.dtype).name
      if dtype != spec.dtype.name:
        raise _invalid(f"Expects arg[{sorted(specs).index(key)}] to be "
                       f"{spec.dtype.name} but {dtype} is provided")
      if not spec.shape.is_compatible_with(value.shape):
        raise _invalid(f"input {key} has shape {list(value.shape)}, the signature "
                       f"expects {spec.shape}")
      feeds[key] = tf.constant(value, dtype=spec.dtype)
    try:
      outputs = function(**feeds)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
      raise _invalid(getattr(e, "message", str(e))) from e
    return version, {k: v.numpy() for k, v in outputs.items()}


def signature_inputs(function) -> Dict[str, tf.TensorSpec]:
  """A signature's inputs by name (its keyword arguments)."""
  return dict(function.structured_input_signature[1])


# REST.


def _json_to_array(value: Any, dtype: tf.DType, where: str) -> np.ndarray:
  """A JSON value (scalar or nested lists) as an array of `dtype`, TF Serving's checks."""
  shape = []
  probe = value
  while isinstance(probe, list):
    shape.append(len(probe))
    probe = probe[0] if probe else None
  flat = []

  def fill(item, level):
    if isinstance(item, list):
      if level >= len(shape) or len(item) != shape[level]:
        raise _invalid(f"{where}Encountered list at unexpected size: {len(item)} at level: "
                       f"{level} expected size: {shape[level] if level < len(shape) else 0}")
      for element in item:
        fill(element, level + 1)
      return
    if level != len(shape):
      raise _invalid(f"{where}JSON Value: {json.dumps(item)} found at incorrect level: "
                     f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
    flat.append(_json_scalar(item, dtype, where))

  fill(value, 0)
  np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
  return np.array(flat, dtype=np_dtype).reshape(shape)


def _json_type(value: Any) -> str:
  if value is None:
    return "Null"
  if isinstance(value, bool):
    return "True" if value else "False"
  return {dict: "Object", str: "String"}.get(type(value), "Number")


def _json_scalar(value: Any, dtype: tf.DType, where: str) -> Any:
  type_error = _invalid(f"{where}JSON Value: {json.dumps(value)} Type: {_json_type(value)} "
                        f"is not of expected type: {dtype.name}")
  if dtype == tf.string:
    if isinstance(value, dict):
      if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _invalid(f"{where}JSON Value: {json.dumps(value)} not formatted correctly "
                       "for base64 data")
      return base64.b64decode(value["b64"])
    if not isinstance(value, str):
      raise type_error
    return value.encode("utf-8")
  if dtype == tf.bool:
    if not isinstance(value, bool):
      raise type_error
    return value
  if dtype.is_integer:
    if isinstance(value, bool) or not isinstance(value, int):
      raise type_error
    return value
  if dtype.is_floating:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise type_error
    return value
  raise ServingStatus(grpc.StatusCode.UNIMPLEMENTED,
                      f"Conversion of JSON Value: {json.dumps(value)} to type: {dtype.name}")


def _array_to_json(array: np.ndarray, name: str) -> Any:
  """Output values as TF Serving writes them: strings as text (base64 objects for
  outputs named *_bytes), float32 in its shortest round-tripping form."""
  if array.dtype.kind in "SO":
    def convert(value: bytes):
      if name.endswith("_bytes"):
        return {"b64": base64.b64encode(value).decode("ascii")}
      return value.decode("utf-8", "replace")
    return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else (
        array.tolist())
  if array.dtype == np.float32:
    shortest = np.vectorize(lambda x: float(str(np.float32(x))), otypes=[object])
    return shortest(array).tolist()
  return array.tolist()


def _rest_predict(server: TFServingDouble, name: str, version: Optional[int],
                  body: Any) -> Dict[str, Any]:
  if not isinstance(body, dict):
    raise _invalid("JSON Value: is not an object")
  signature_name = body.get("signature_name", DEFAULT_SIGNATURE)
  if not isinstance(signature_name, str):
    raise _invalid(f"JSON Value: {json.dumps(signature_name)} not formatted correctly. "
                   "'signature_name' key must be a string value.")
  if ("instances" in body) == ("inputs" in body):
    raise _invalid("Missing 'inputs' or 'instances' key" if "instances" not in body else
                   "Not formatted correctly expecting only one of 'inputs' or 'instances' keys")
  _, loaded = server.servable(name, version)
  if signature_name not in loaded.signatures:
    raise ServingStatus(grpc.StatusCode.FAILED_PRECONDITION,
                        f'Serving signature key "{signature_name}" not found.')
  specs = signature_inputs(loaded.signatures[signature_name])
  if "instances" in body:
    inputs = _row_inputs(body["instances"], specs)
  else:
    inputs = _columnar_inputs(body["inputs"], specs)
  _, outputs = server.run(name, version, signature_name, inputs)
  if "instances" in body:
    return {"predictions": _row_outputs(outputs)}
  if len(outputs) == 1:
    (key, value), = outputs.items()
    return {"outputs": _array_to_json(value, key)}
  return {"outputs": {k: _array_to_json(v, k) for k, v in outputs.items()}}


def _row_inputs(instances: Any, specs: Dict[str, tf.TensorSpec]) -> Dict[str, np.ndarray]:
  """The row format: one entry per example, a dict of named inputs (or, for a
  signature with one input, the bare value); all inputs share the batch size."""
  if not isinstance(instances, list) or not instances:
    raise _invalid("Expecting 'instances' to be an non-empty list/array")
  columns: Dict[str, list] = {}
  for index, instance in enumerate(instances):
    if not isinstance(instance, dict) or set(instance) == {"b64"}:
      if len(specs) != 1:
        raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                       "Error: Invalid argument: Expecting object with named inputs, "
                       f"the signature has {len(specs)}")
      instance = {next(iter(specs)): instance}
    if index and set(instance) != set(columns):
      raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                     "Error: Invalid argument: Expecting object with the same keys as "
                     "the first element")
    for key, value in instance.items():
      where = (f"Failed to process element: {index} key: {key} of 'instances' list. "
               "Error: Invalid argument: ")
      if key not in specs:
        raise _invalid(f"{where}JSON object: does not have named input: {key}")
      array = _json_to_array(value, specs[key].dtype, where)
      if index and array.shape != columns[key][0].shape:
        raise _invalid(f"{where}Expecting tensor size: {columns[key][0].size} but got: "
                       f"{array.size}")
      columns.setdefault(key, []).append(array)
  return {key: np.stack(arrays) for key, arrays in columns.items()}


def _columnar_inputs(inputs: Any, specs: Dict[str, tf.TensorSpec]) -> Dict[str, np.ndarray]:
  """The columnar format: a dict of named inputs, each a whole tensor (or, for a
  signature with one input, the bare tensor)."""
  if not isinstance(inputs, dict) or (len(specs) == 1 and set(inputs) == {"b64"}):
    if len(specs) != 1:
      raise _invalid("JSON Value: 'inputs' is not an object with named inputs")
    inputs = {next(iter(specs)): inputs}
  arrays = {}
  for key, value in inputs.items():
    if key not in specs:
      raise _invalid(f"JSON object: does not have named input: {key}")
    arrays[key] = _json_to_array(value, specs[key].dtype, "")
  return arrays


def _row_outputs(outputs: Dict[str, np.ndarray]) -> list:
  batch = None
  for key, value in outputs.items():
    size = value.shape[0] if value.ndim else 0
    if batch is not None and size != batch or not value.ndim:
      raise _invalid(f"Tensor name: {key} has inconsistent batch size: {size} "
                     f"expecting: {batch}")
    batch = size
  columns = {k: _array_to_json(v, k) for k, v in outputs.items()}
  if len(columns) == 1:
    return next(iter(columns.values()))
  return [{k: v[i] for k, v in columns.items()} for i in range(batch)]


def _rest_handler(server: TFServingDouble):

  class Handler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST paths."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet in tests
      pass

    def _reply(self, status: int, body: Any) -> None:
      data = json.dumps(body, indent=4).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _route(self, method: str):
      match = _PATH.match(self.path)
      expected_verb = "predict" if method == "POST" else None
      if not match or match["verb"] != expected_verb:
        self._reply(404, {"error": f"Malformed request: {method} {self.path}"})
        return None
      return match["name"], int(match["version"]) if match["version"] else None

    def _handle(self, answer):
      try:
        self._reply(200, answer())
      except ServingStatus as e:
        self._reply(_HTTP_STATUS.get(e.code, 500), {"error": e.message})
      except Exception as e:  # pylint: disable=broad-except
        self._reply(500, {"error": f"{type(e).__name__}: {e}"})  # as INTERNAL

    def do_GET(self):  # pylint: disable=invalid-name
      route = self._route("GET")
      if route:
        self._handle(lambda: server.version_status(*route))

    def do_POST(self):  # pylint: disable=invalid-name
      body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
      route = self._route("POST")
      if not route:
        return

      def answer():
        try:
          request = json.loads(body)
        except ValueError as e:
          raise _invalid(f"JSON Parse error: {e}") from e
        return _rest_predict(server, *route, request)

      self._handle(answer)

  return Handler


# gRPC.


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """PredictionService.Predict; the other methods answer UNIMPLEMENTED."""

  def __init__(self, server: TFServingDouble):
    self._server = server

  def Predict(self, request, context):  # pylint: disable=invalid-name
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    try:
      _, loaded = self._server.servable(spec.name, version)
      signature_name = spec.signature_name or DEFAULT_SIGNATURE
      if signature_name in loaded.signatures:
        known = signature_inputs(loaded.signatures[signature_name])
        for alias in request.inputs:
          if alias not in known:
            raise _invalid(f"input tensor alias not found in signature: {alias}. Inputs "
                           f"expected to be in the set {{{','.join(sorted(known))}}}.")
      inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
      served_version, outputs = self._server.run(spec.name, version, signature_name, inputs)
    except ServingStatus as e:
      context.abort(e.code, e.message)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = served_version
    response.model_spec.signature_name = signature_name
    for key, value in outputs.items():
      response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response
