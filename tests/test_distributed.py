"""Scaling out: the Kubeflow Pipelines v2 spec, Beam runner flags, tf.distribute training."""
import json
import re

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from kfp.client import client as kfp_client
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.dsl.compiler import compiler
from tfx.dsl.components.base import executor_spec
from tfx.proto.orchestration import executable_spec_pb2
from tfx.proto.orchestration import pipeline_pb2

from common import code_fingerprint
from evaluation import tfma_config
from models import cf
from models import features
from models import hparams
from models import runtime
from models import training
from pipeline import cli
from pipeline import configs
from pipeline import kubeflow_v2_runner
from pipeline import pipeline as pipeline_dsl
from tests.conftest import REPO

IMAGE = "us-docker.pkg.dev/project/recsys/recsys:test"
ROOT = "gs://bucket/movielens"
DATA_DIR = "/gcs/bucket/ml-1m"
DATAFLOW_ARGS = ["--project=my-project", "--region=europe-west4",
                 "--temp_location=gs://bucket/tmp"]
# Our Beam-based steps; the tests also find them from the executor specs, so a new
# one cannot slip through unchecked.
BEAM_STEPS = {"MovieLensExampleGen", "StatisticsGen", "Transform", "Evaluator.cf",
              "Evaluator.deepfm"}


def _beam_steps(config: configs.PipelineConfig):
  return {c.id for c in pipeline_dsl.create_components(config)
          if isinstance(c.executor_spec, executor_spec.BeamExecutorSpec)}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
  """The spec `recsys compile` writes, with Dataflow flags and MirroredStrategy."""
  output = tmp_path_factory.mktemp("compiled") / "pipeline.json"
  assert cli.main(["compile", "--target", "kubeflow-v2", "--output", str(output),
                   "--image", IMAGE, "--pipeline-root", ROOT, "--data-dir", DATA_DIR,
                   "--beam-runner=DataflowRunner",
                   *[f"--beam-arg={arg}" for arg in DATAFLOW_ARGS],
                   "--distribution", "mirrored", "--auc-floor", "0.7", "--seed", "7"]) == 0
  return json.loads(output.read_text())


def _tasks(spec):
  return spec["pipelineSpec"]["root"]["dag"]["tasks"]


def _parameter(spec, task: str, name: str) -> str:
  return _tasks(spec)[task]["inputs"]["parameters"][name]["runtimeValue"][
      "constantValue"]["stringValue"]


def _container(spec, task: str):
  return spec["pipelineSpec"]["deploymentSpec"]["executors"][f"{task}_executor"]["container"]


def _upstream(spec, task: str):
  """Every task `task` waits for, directly or through others."""
  seen, stack = set(), [task]
  while stack:
    for parent in _tasks(spec)[stack.pop()].get("dependentTasks", []):
      if parent not in seen:
        seen.add(parent)
        stack.append(parent)
  return seen


def test_spec_has_every_component(spec):
  tasks = set(_tasks(spec))
  components = [c.id for c in pipeline_dsl.create_components(configs.PipelineConfig())]
  assert len(components) == 22
  for component in components:
    if component.startswith("LatestBlessed."):
      # KFP v2 resolves the latest blessed model in two queries: model, blessing.
      assert {f"{component}-model-resolver",
              f"{component}-model-blessing-resolver"} <= tasks
    else:
      assert component in tasks
  assert len(tasks) == 25  # the three resolvers make two tasks each
  for task in tasks:
    assert set(_tasks(spec)[task].get("dependentTasks", [])) <= tasks


def test_spec_is_a_pipeline_job_that_kfp_reads(spec, tmp_path):
  job = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineJob())
  assert job.runtime_config.gcs_output_directory == ROOT
  # Kubeflow Pipelines' client takes the pipelineSpec part from a .yaml file (README).
  path = tmp_path / "pipeline.yaml"
  path.write_text(json.dumps(spec["pipelineSpec"]))
  pipeline = kfp_client._extract_pipeline_yaml(str(path)).pipeline_spec  # pylint: disable=protected-access
  assert pipeline.pipeline_info.name == "movielens-1m"
  assert set(pipeline.root.dag.tasks) == set(_tasks(spec))


def test_spec_runs_the_steps_in_order(spec):
  assert {"MovieLensExampleGen", "StatisticsGen"} <= _upstream(spec, "ExampleValidator")
  assert {"ExampleValidator", "AnomaliesGate", "ImportSchemaGen",
          "MovieLensExampleGen"} <= _upstream(spec, "Transform")
  for model in ("cf", "deepfm"):
    assert "Transform" in _upstream(spec, f"Trainer.{model}")
    assert {f"Trainer.{model}", f"LatestBlessed.{model}-model-resolver",
            "AnomaliesGate"} <= _upstream(spec, f"Evaluator.{model}")
    assert {f"Evaluator.{model}", f"Trainer.{model}"} <= _upstream(spec, f"Pusher.{model}")
    assert f"Evaluator.{model}" in _upstream(spec, "ModelReport")
    assert f"Trainer.{model}" in _upstream(spec, "RankingEvaluator")
  assert "RankingEvaluator" in _upstream(spec, "ModelReport")
  # The recommender: built from retrieval and DeepFM, pushed on RankingEvaluator's blessing.
  assert {"Trainer.retrieval", "Trainer.deepfm"} <= _upstream(spec, "RecommenderBuilder")
  assert {"RecommenderBuilder", "LatestBlessed.recommender-model-resolver"} <= _upstream(
      spec, "RankingEvaluator")
  assert {"RankingEvaluator", "RecommenderBuilder"} <= _upstream(spec, "Pusher.recommender")
  assert not _upstream(spec, "MovieLensExampleGen")
  # The two models train independently, side by side.
  assert "Trainer.cf" not in _upstream(spec, "Trainer.deepfm")
  assert "Trainer.deepfm" not in _upstream(spec, "Trainer.cf")


def test_spec_carries_the_run_settings(spec):
  for model in ("cf", "deepfm"):
    custom_config = json.loads(_parameter(spec, f"Trainer.{model}", "custom_config"))
    assert custom_config == {
        # The compiled run is MovieLens-1M's: the best presets at its scale.
        "hparams": json.loads(json.dumps(hparams.to_config(
            hparams.preset(model, "best", features.DATASET_RATINGS["1m"])))),
        "seed": 7, "distribution": "mirrored",
        "code_fingerprint": pipeline_dsl.code_fingerprint_of(pipeline_dsl.trainer_id(model))}
    assert _parameter(spec, f"Trainer.{model}", "run_fn") == f"trainer.{model}.run_fn"
    eval_config = json.loads(_parameter(spec, f"Evaluator.{model}", "eval_config"))
    [auc] = [metric for metric_spec in eval_config["metrics_specs"]
             for metric in metric_spec["metrics"] if metric["class_name"] == "AUC"]
    threshold = auc["per_slice_thresholds"][0]["threshold"]
    assert threshold["value_threshold"]["lower_bound"] == pytest.approx(0.7)
    assert threshold["change_threshold"]["absolute"] == pytest.approx(
        -configs.DEFAULT_MAX_AUC_DROP)
    destination = json.loads(_parameter(spec, f"Pusher.{model}", "push_destination"))
    assert destination["filesystem"]["base_directory"] == f"{ROOT}/serving/{model}"
  assert tfma_config.EVAL_SPLIT in _parameter(spec, "Evaluator.cf", "example_splits")
  assert _parameter(spec, "MovieLensExampleGen", "data_dir") == DATA_DIR
  assert spec["runtimeConfig"]["gcsOutputDirectory"] == ROOT
  assert spec["displayName"] == "movielens-1m"
  executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
  assert {e["container"]["image"] for e in executors.values() if "container" in e} == {IMAGE}
  assert _container(spec, "MovieLensExampleGen")["args"][:2] == [
      "--executor_class_path", "components.movielens_example_gen.executor.Executor"]


def test_schema_file_is_where_the_image_keeps_it(spec):
  schema_file = _parameter(spec, "ImportSchemaGen", "schema_file")
  assert schema_file == f"{kubeflow_v2_runner.IMAGE_PROJECT_DIR}/pipeline/schema/schema.pbtxt"
  dockerfile = (REPO / "Dockerfile").read_text()
  assert re.search(rf"^WORKDIR {kubeflow_v2_runner.IMAGE_PROJECT_DIR}$", dockerfile, re.M)
  for package in code_fingerprint.PROJECT_PACKAGES:  # every package of the project
    assert re.search(rf"^COPY {package}/ {package}/$", dockerfile, re.M), package
  assert re.search(r"^FROM tensorflow/tfx:1\.16\.0$", dockerfile, re.M)


def test_beam_flags_reach_every_beam_step_of_the_spec(spec):
  beam_steps = _beam_steps(configs.PipelineConfig())
  assert beam_steps == BEAM_STEPS
  for step in beam_steps:
    args = _container(spec, step)["args"]
    flags = args[args.index("{{$}}") + 1:]
    assert flags == ["--runner=DataflowRunner",
                     f"--setup_file={kubeflow_v2_runner.IMAGE_PROJECT_DIR}/setup.py",
                     *DATAFLOW_ARGS], step
    assert not any(arg.startswith("--direct_") for arg in args), step


@pytest.mark.parametrize("runner, flags", [
    ("FlinkRunner", ["--flink_master=flink:8081", "--environment_type=LOOPBACK"]),
    ("SparkRunner", ["--spark_master_url=spark://spark:7077",
                     "--environment_type=LOOPBACK"]),
])
def test_beam_flags_of_recsys_run_reach_every_beam_step(runner, flags, tmp_path):
  args = cli.build_parser().parse_args(
      ["run", "--output-dir", str(tmp_path), f"--beam-runner={runner}",
       *[f"--beam-arg={flag}" for flag in flags]])
  config = cli._pipeline_config(args, output_dir=args.output_dir,  # pylint: disable=protected-access
                                pipeline_root=args.pipeline_root)
  ir = compiler.Compiler().compile(pipeline_dsl.create_pipeline(config))
  deployment = pipeline_pb2.IntermediateDeploymentConfig()
  ir.deployment_config.Unpack(deployment)
  beam_args = {}
  for node, packed in deployment.executor_specs.items():
    beam_spec = executable_spec_pb2.BeamExecutableSpec()
    if packed.Unpack(beam_spec):
      beam_args[node] = list(beam_spec.beam_pipeline_args)
  assert set(beam_args) == BEAM_STEPS
  for node, node_args in beam_args.items():
    assert node_args == [f"--runner={runner}", *configs.setup_file_args(), *flags], node


def test_beam_args_per_runner():
  direct = configs.beam_pipeline_args("DirectRunner", ["--direct_num_workers=8"])
  assert direct == configs.default_beam_args() + ["--direct_num_workers=8"]
  assert configs.beam_pipeline_args("SparkRunner", ["--spark_master_url=spark://h:7077"]) == [
      "--runner=SparkRunner", f"--setup_file={REPO / 'setup.py'}",
      "--spark_master_url=spark://h:7077"]
  with pytest.raises(ValueError, match="DirectRunner, DataflowRunner, FlinkRunner"):
    configs.beam_pipeline_args("MapReduceRunner")


def test_direct_runner_mode_follows_the_data_size(monkeypatch):
  monkeypatch.setattr(configs, "available_cores", lambda: 4)
  small = configs.beam_pipeline_args(num_ratings=100_000)
  assert small[:2] == ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
  large = configs.beam_pipeline_args(num_ratings=configs.MULTI_PROCESSING_MIN_RATINGS)
  assert large[:2] == ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]
  # A flag given by the user comes last, and Beam keeps the last of a repeated flag.
  chosen = configs.beam_pipeline_args(extra_args=["--direct_running_mode=multi_threading"])
  assert chosen[-1] == "--direct_running_mode=multi_threading"
  monkeypatch.setattr(configs, "available_cores", lambda: 1)
  assert "--direct_running_mode=in_memory" in configs.beam_pipeline_args(
      num_ratings=10 * configs.MULTI_PROCESSING_MIN_RATINGS)


def test_compile_rejects_bad_flags(tmp_path, capsys):
  required = ["--output", str(tmp_path / "p.json"), "--image", IMAGE,
              "--pipeline-root", ROOT]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compile", "--target", "argo", *required])
  assert exit_info.value.code == 2
  assert "invalid choice: 'argo' (choose from 'kubeflow-v2')" in capsys.readouterr().err

  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compile", *required, "--beam-arg=--runner=DataflowRunner"])
  assert exit_info.value.code == 2
  assert "choose the runner with --beam-runner" in capsys.readouterr().err

  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compile", "--output", str(tmp_path / "p.json"), "--pipeline-root", ROOT])
  assert "--image" in capsys.readouterr().err

  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compile", *required, "--span-months", "1"])
  assert exit_info.value.code == 2
  assert "spans (--span-days, --span-months) cannot be compiled for Kubeflow Pipelines v2" in (
      capsys.readouterr().err)
  assert not (tmp_path / "p.json").exists()


def test_distribution_names_their_strategies():
  assert isinstance(runtime.distribution_strategy("mirrored"),
                    tf.distribute.MirroredStrategy)
  assert runtime.distribution_strategy("none") is tf.distribute.get_strategy()
  with pytest.raises(ValueError, match="none, mirrored, multi_worker_mirrored"):
    runtime.distribution_strategy("parameter_server")
  with pytest.raises(ValueError, match="distribution must be one of"):
    configs.PipelineConfig(distribution="tpu")


def test_training_under_mirrored_strategy(tmp_path):
  """One step of CF under MirroredStrategy: variables mirrored, a finite loss."""
  rng = np.random.default_rng(0)
  rows = 256

  def examples():
    return {features.transformed_name(features.USER_ID): rng.integers(0, 20, rows),
            features.transformed_name(features.MOVIE_ID): rng.integers(0, 30, rows),
            features.LABEL: rng.integers(0, 2, rows).astype(np.float32)}

  strategy = runtime.distribution_strategy("mirrored")
  small = hparams.CFHparams(embedding_dim=8, batch_size=rows, epochs=1,
                            learning_rate=0.01)
  sizes = {features.USER_ID: 20, features.MOVIE_ID: 30}
  model, history = training.fit(strategy, "cf", cf.build, sizes, small, examples(),
                                examples(), str(tmp_path / "logs"), seed=0)
  assert model.trainable_variables
  for variable in model.trainable_variables:
    assert strategy.extended.variable_created_in_scope(variable), variable.name
  assert len(history["log_loss"]) == 1 and np.isfinite(history["log_loss"][0])
  assert 0.0 <= history["val_auc"][0] <= 1.0
  probabilities = model({k: tf.constant(v[:5]) for k, v in examples().items()
                         if k != features.LABEL}).numpy()
  assert probabilities.shape == (5, 1) and np.all((probabilities >= 0) & (probabilities <= 1))


def test_compile_hands_a_bucket_data_dir_to_the_ingestion(tmp_path):
  """The ingestion reads a gs:// release itself (tests/test_remote_data.py)."""
  output = tmp_path / "pipeline.json"
  assert cli.main(["compile", "--output", str(output), "--image", IMAGE,
                   "--pipeline-root", ROOT, "--data-dir", "gs://bucket/ml-1m"]) == 0
  spec = json.loads(output.read_text())
  assert _parameter(spec, "MovieLensExampleGen", "data_dir") == "gs://bucket/ml-1m"
