"""A Trainer on two local worker processes under MultiWorkerMirroredStrategy.

Real processes: the Trainer's executor (components/multi_worker_trainer.py) starts
two workers, each running TFX's GenericExecutor with its own TF_CONFIG, on a few
thousand synthetic ratings through the project's Transform graph.
"""
import _thread
import contextlib
import json
import logging
import os
import pathlib
import re
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from common import ports
from components import multi_worker_trainer
from export import signatures
from models import history
from models import hparams as hp
from pipeline import cli
from pipeline import configs
from pipeline import pipeline as pipeline_dsl
from serving import contract

TRAIN_ROWS = 5000
# Small enough to train in seconds; two epochs, so that both epochs' metrics can
# be compared between the workers.
CF_HPARAMS = {**hp.to_config(hp.preset("cf", "best")), "embedding_dim": 8, "epochs": 2,
              "early_stopping_patience": 1, "batch_size": 512}


def _write_split(folder: pathlib.Path, serialized) -> None:
  folder.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(folder / "data.gz"), options="GZIP") as writer:
    for example in serialized:
      writer.write(example)


def _execution(transformed, root: pathlib.Path, workers: int = 2):
  """The Trainer's inputs, outputs and exec properties, as the pipeline hands them over."""
  examples = standard_artifacts.Examples()
  examples.uri = str(root / "examples")
  examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
  _write_split(root / "examples" / "Split-train", transformed.serialized[:TRAIN_ROWS])
  _write_split(root / "examples" / "Split-eval", transformed.serialized[TRAIN_ROWS:])
  transform_graph = standard_artifacts.TransformGraph()
  transform_graph.uri = os.path.dirname(transformed.output.transform_savedmodel_dir)
  model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
  model.uri, model_run.uri = str(root / "model"), str(root / "model_run")
  exec_properties = {
      "run_fn": "trainer.cf.run_fn",
      "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(splits=["train"])),
      "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(splits=["eval"])),
      "custom_config": json.dumps({"hparams": CF_HPARAMS, "seed": 42,
                                   "distribution": hp.MULTI_WORKER_MIRRORED,
                                   multi_worker_trainer.WORKERS_KEY: workers}),
  }
  return ({"examples": [examples], "transform_graph": [transform_graph]},
          {"model": [model], "model_run": [model_run]}, exec_properties)


def _executor(tmp_path) -> multi_worker_trainer.Executor:
  return multi_worker_trainer.Executor(base_executor.BaseExecutor.Context(
      tmp_dir=str(tmp_path / "executor-tmp"), unique_id="1"))


def _our_workers():
  """This process's worker processes still alive (or not yet reaped): pid -> TF_CONFIG."""
  workers = {}
  for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit():
      continue
    try:
      parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
      environment = (entry / "environ").read_bytes().split(b"\0")
    except (OSError, IndexError, ValueError):
      continue  # ended meanwhile, or not ours to read
    if parent != os.getpid():
      continue
    for variable in environment:
      if variable.startswith(b"TF_CONFIG="):
        workers[int(entry.name)] = json.loads(variable.partition(b"=")[2])
  return workers


class _WorkerLines(logging.Handler):
  """The workers' output lines, as the executor logs them."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())

  def of(self, worker: str):
    prefix = f"Trainer {worker}: "
    return [line[len(prefix):] for line in self.lines if line.startswith(prefix)]


@pytest.fixture
def worker_lines():
  logger = logging.getLogger(multi_worker_trainer.__name__)
  handler, saved_level = _WorkerLines(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  yield handler
  logger.removeHandler(handler)
  logger.setLevel(saved_level)


def _epoch_metrics(lines):
  """'epoch 1/2: log_loss ... val_auc ...' of each epoch, without the worker's speed."""
  return [re.sub(r" \([\d,]+ examples/s\)$", "", line.partition("] ")[2])
          for line in lines if re.search(r"train cf: epoch \d+/", line)]


@pytest.mark.slow
def test_a_trainer_trains_one_model_on_two_workers(transformed_1m, tmp_path, worker_lines):
  inputs, outputs, exec_properties = _execution(transformed_1m, tmp_path)
  _executor(tmp_path).Do(inputs, outputs, exec_properties)

  # One collective group of two: the chief counted two replicas, and both workers
  # saw the same metrics, which the strategy sums across them.
  assert history.read(str(tmp_path / "model_run"))["replicas"] == 2
  chief, other = worker_lines.of("worker 0 of 2"), worker_lines.of("worker 1 of 2")
  assert len(_epoch_metrics(chief)) == 2
  assert _epoch_metrics(chief) == _epoch_metrics(other)

  # The chief's model is the Trainer's output, and serves.
  loaded = tf.saved_model.load(str(tmp_path / "model" / "Format-Serving"))
  served = loaded.signatures[contract.SERVING_DEFAULT](
      examples=tf.constant(transformed_1m.serialized[TRAIN_ROWS:TRAIN_ROWS + 50]))
  probabilities = served[signatures.OUTPUT_KEY].numpy()
  assert probabilities.shape == (50,)
  assert np.all((probabilities > 0) & (probabilities < 1))
  assert (tmp_path / "model_run" / history.HISTORY_FILE).exists()

  # The other worker exported into a scratch folder of its own, now gone.
  [scratch] = [re.search(r"model and logs to (\S+),", line).group(1) for line in other
               if "not the chief" in line]
  assert not os.path.exists(scratch)
  assert not os.path.exists(os.path.dirname(scratch))  # the workers' temporary folder
  assert not _our_workers()


@contextlib.contextmanager
def _once_both_workers_run(action):
  """Calls action(pids by worker index) from another thread once both workers run,
  however long they take to start; the thread stops when the block ends."""
  done = threading.Event()

  def wait_then_act():
    while not done.is_set():
      workers = {config["task"]["index"]: pid for pid, config in _our_workers().items()}
      if len(workers) == 2:
        action(workers)
        return
      done.wait(0.05)

  thread = threading.Thread(target=wait_then_act, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


@pytest.mark.slow
def test_a_failed_worker_fails_the_trainer_and_stops_the_others(transformed_1m, tmp_path):
  inputs, outputs, exec_properties = _execution(transformed_1m, tmp_path)
  killed = []

  def kill_worker_1(workers):
    # As the kernel's OOM killer would: worker 1 dies, the chief waits for it.
    os.kill(workers[1], signal.SIGKILL)
    killed.append(workers[1])

  with _once_both_workers_run(kill_worker_1):
    with pytest.raises(multi_worker_trainer.WorkerFailedError) as failure:
      _executor(tmp_path).Do(inputs, outputs, exec_properties)
  assert killed
  message = str(failure.value)
  assert "worker 1 of 2" in message and "was killed by SIGKILL" in message, message
  assert "the other workers were stopped" in message
  assert not _our_workers()
  assert not (tmp_path / "model" / "Format-Serving").exists()


@pytest.fixture
def python_sigint_handler():
  """SIGINT raises KeyboardInterrupt, as in a `recsys` process, whatever handler an
  earlier test left in this one: `interrupt_main` does nothing without Python's."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_an_interrupted_trainer_stops_its_workers(transformed_1m, tmp_path,
                                                  python_sigint_handler):
  del python_sigint_handler
  inputs, outputs, exec_properties = _execution(transformed_1m, tmp_path)
  # Ctrl-C in the pipeline's process, while its workers run.
  with pytest.raises(KeyboardInterrupt):
    with _once_both_workers_run(lambda _: _thread.interrupt_main()):
      _executor(tmp_path).Do(inputs, outputs, exec_properties)
  assert not _our_workers()


def test_one_worker_trains_in_the_pipeline_process():
  assert multi_worker_trainer.workers_of({"custom_config": json.dumps({"seed": 1})}) == 1
  assert multi_worker_trainer.workers_of({}) == 1
  assert multi_worker_trainer.workers_of(
      {"custom_config": json.dumps({multi_worker_trainer.WORKERS_KEY: 3})}) == 3


def test_workers_get_one_cluster_on_different_ports():
  picked = ports.free_ports(3)
  assert len(set(picked)) == 3
  addresses = [f"localhost:{port}" for port in picked]
  configs = [json.loads(multi_worker_trainer.tf_config(addresses, i)) for i in range(3)]
  assert all(c["cluster"] == {"worker": addresses} for c in configs)
  assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


def test_workers_need_the_multi_worker_strategy(capsys):
  with pytest.raises(ValueError, match="2 workers need distribution multi_worker_mirrored"):
    configs.PipelineConfig(workers=2)
  with pytest.raises(ValueError, match="workers must be 1 or more"):
    configs.PipelineConfig(workers=0, distribution=hp.MULTI_WORKER_MIRRORED)
  with pytest.raises(SystemExit):
    cli.main(["run", "--workers", "2", "--distribution", "mirrored"])
  assert "2 workers need distribution multi_worker_mirrored" in capsys.readouterr().err


def _trainers(config):
  return {c.id: c for c in pipeline_dsl.create_components(config)
          if c.id.startswith("Trainer.")}


def test_only_a_multi_worker_run_changes_the_trainers(tmp_path):
  args = cli.build_parser().parse_args(
      ["run", "--output-dir", str(tmp_path), "--workers", "2",
       "--distribution", hp.MULTI_WORKER_MIRRORED])
  config = cli._pipeline_config(args, output_dir=args.output_dir,  # pylint: disable=protected-access
                                pipeline_root=args.pipeline_root)
  assert config.workers == 2
  for trainer in _trainers(config).values():
    assert trainer.executor_spec.executor_class is multi_worker_trainer.Executor
    custom_config = json.loads(trainer.exec_properties["custom_config"])
    assert custom_config[multi_worker_trainer.WORKERS_KEY] == 2
  # One worker: TFX's own Trainer, with the custom_config (a cache key) of before.
  for trainer in _trainers(configs.PipelineConfig(output_dir=str(tmp_path))).values():
    assert trainer.executor_spec.executor_class is not multi_worker_trainer.Executor
    assert set(json.loads(trainer.exec_properties["custom_config"])) == {
        "hparams", "seed", "distribution", "code_fingerprint"}
