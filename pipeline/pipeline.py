"""The TFX pipeline: read it top to bottom to read what a run does."""
import json
import os
from typing import List, Optional

# TFX's classes from the modules `tfx.v1` re-exports: importing tfx.v1 itself loads
# its Google Cloud extensions, the Vertex AI client among them, about 8 s of every
# process's start that a local run never uses (docs/performance.md).
from tfx.components import Evaluator
from tfx.components import ExampleValidator
from tfx.components import StatisticsGen
from tfx.components import Trainer
from tfx.dsl.components.base import base_node
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution import canned_resolver_functions
from tfx.dsl.input_resolution.strategies import latest_blessed_model_strategy
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import pusher_pb2
from tfx.proto import trainer_pb2
from tfx.proto import transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from common import code_fingerprint
from components import drift
from components import multi_worker_trainer
from components.anomalies_gate import AnomaliesGate
from components.drift_validator import DriftValidator
from components.import_schema_gen import ImportSchemaGen
from components.model_report import ModelReport
from components.movielens_example_gen.component import MovieLensExampleGen
from components.pusher import Pusher
from components.ranking_evaluator import RankingEvaluator
from components.recommender_builder import RecommenderBuilder
from components.served_model_builder import ServedModelBuilder
from components.transform import Transform
from evaluation import tfma_config
from models import features
from models import hparams
from pipeline import configs
from pipeline import resolvers

# Model name -> its Trainer entry point.
MODELS = {"cf": "trainer.cf.run_fn", "deepfm": "trainer.deepfm.run_fn",
          "retrieval": "trainer.retrieval.run_fn"}
# The like models: judged by TFMA on their like probability, pushed on its verdict.
LIKE_MODELS = ("cf", "deepfm")
# The served recommender: retrieval's candidates ranked by this like model.
RANKING_MODEL = "deepfm"
RECOMMENDER = "recommender"
# The splits each Trainer learns from. Retrieval also learns from eval, each
# user's most recent history before test (trainer/retrieval.py).
TRAIN_SPLITS = {"retrieval": ["train", "eval"]}
PREPROCESSING_FN = "models.preprocessing.preprocessing_fn"


def trainer_id(model: str) -> str:
  return f"Trainer.{model}"


def evaluator_id(model: str) -> str:
  return f"Evaluator.{model}"


def pusher_id(model: str) -> str:
  return f"Pusher.{model}"


def served_model_builder_id(model: str) -> str:
  return f"ServedModelBuilder.{model}"


# The module each of our components runs. The fingerprint of its code and of every
# project module it imports is one of the component's parameters, so an edit
# reruns exactly the components that import the edited code (common/code_fingerprint.py).
# The Evaluators' custom metrics are fingerprinted in their eval config.
ENTRY_MODULES = {
    "MovieLensExampleGen": "components.movielens_example_gen.component",
    "AnomaliesGate": "components.anomalies_gate",
    "DriftValidator": "components.drift_validator",
    "Transform": PREPROCESSING_FN.rpartition(".")[0],
    **{trainer_id(model): run_fn.rpartition(".")[0] for model, run_fn in MODELS.items()},
    "ServedModelBuilder": "components.served_model_builder",
    "RecommenderBuilder": "components.recommender_builder",
    "RankingEvaluator": "components.ranking_evaluator",
    "ModelReport": "components.model_report",
    "Pusher": "components.pusher",
}


def code_fingerprint_of(component: str) -> str:
  """The fingerprint of the code `component` (a key of ENTRY_MODULES) runs."""
  return code_fingerprint.of(ENTRY_MODULES[component])


def _schema_fingerprint(config: configs.PipelineConfig) -> str:
  # A compiled pipeline's schema_file is the container image's copy of this
  # repository's file, which is not on this machine.
  here = config.schema_file if os.path.isfile(config.schema_file) else configs.SCHEMA_FILE
  return code_fingerprint.of_file(here)


def create_components(config: configs.PipelineConfig,
                      ingestion_only: bool = False) -> List[base_node.BaseNode]:
  """The pipeline's components, in the order they run.

  `ingestion_only`: the ingestion and its statistics alone, with the node ids of
  the whole pipeline's, so that its runs (continuous training's earlier spans)
  are the ones the whole pipeline's resolvers find.
  """
  # MovieLens ratings joined with users and movies, as train/eval/test tf.Examples.
  example_gen = MovieLensExampleGen(
      dataset=config.dataset, data_dir=config.data_dir,
      download_dir=config.download_dir,
      source_fingerprint=configs.fingerprint_folder(config.data_dir),
      code_fingerprint=code_fingerprint_of("MovieLensExampleGen"), seed=config.seed,
      split=config.split, span_days=config.span_days, span_months=config.span_months,
      span=config.span, until=config.until)
  newest = example_gen.outputs["examples"]

  # With spans, the models learn from the spans before the newest one (TFX's
  # rolling range over every span ingested so far) and are judged on the newest:
  # the future of their data. Without, everything comes from the one Examples.
  history = None
  if config.spans_enabled:
    # Every run's output, not only this run's: a channel named by its producer.
    every_span = Channel(type=standard_artifacts.Examples,
                         producer_component_id=example_gen.id, output_key="examples")
    history = canned_resolver_functions.rolling_range(
        every_span, num_spans=config.window_spans, skip_num_recent_spans=1, min_spans=1)
  learned_from = history if history is not None else newest

  # The fixed schema checked into the repo, not one inferred from the data.
  schema_gen = ImportSchemaGen(schema_file=config.schema_file,
                               schema_fingerprint=_schema_fingerprint(config),
                               dataset=config.dataset)

  # Feature statistics of every split (TFDV). With spans, computed with the schema:
  # the drift check needs the categorical ints' value counts (components/drift.py).
  statistics_gen = StatisticsGen(
      examples=newest,
      schema=schema_gen.outputs["schema"] if config.spans_enabled else None)
  if ingestion_only:
    return [example_gen, schema_gen, statistics_gen]

  # Every split's statistics checked against the schema.
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"])

  # Stops the run on any anomaly, naming the feature and the problem.
  anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"],
                                 code_fingerprint=code_fingerprint_of("AnomaliesGate"))

  # With spans: the newest span's statistics against the previous span's; a drift
  # over threshold stops the run before anything trains.
  drift_validator = None
  if config.spans_enabled:
    drift_validator = DriftValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        every_span=Channel(type=standard_artifacts.ExampleStatistics,
                           producer_component_id=statistics_gen.id,
                           output_key="statistics"),
        accept_drift=int(config.accept_drift),
        thresholds=json.dumps(drift.thresholds_for(config.span_days, config.span_months,
                                                   config.dataset)),
        code_fingerprint=code_fingerprint_of("DriftValidator"))

  # The Transform graph: vocabularies and per-id statistics of the train split
  # (tf.Transform on Beam). The Trainers apply it to the raw examples themselves
  # (models.data.load_examples) rather than reading a transformed copy of every
  # split: at 1M ratings, transforming and writing that copy took Beam about 50 s,
  # applying the graph in TensorFlow 4 s. No statistics of its own: StatisticsGen
  # has described the raw data.
  transform = Transform(
      examples=learned_from,
      schema=schema_gen.outputs["schema"],
      preprocessing_fn=PREPROCESSING_FN,
      splits_config=transform_pb2.SplitsConfig(analyze=["train"]),
      materialize=False,
      disable_statistics=True,
      # With its analysis cache on, Transform analyzes each Examples artifact of the
      # window on its own (to cache each), Beam stages per span; a window of weekly
      # spans then cost seconds per span however small (docs/continuous-training.md).
      # Off, components.transform analyzes the window's spans as one dataset.
      disable_analyzer_cache=True,
      # preprocessing_fn does not read it; it keys the cache.
      custom_config={"code_fingerprint": code_fingerprint_of("Transform")})
  transform.add_upstream_node(anomalies_gate)
  if drift_validator is not None:
    transform.add_upstream_node(drift_validator)

  # The three models, trained from the same examples through the same Transform graph.
  # The latest blessed model of each like model: the baseline its successor is
  # judged against and, with spans, the model its successor starts from.
  latest = {model: _latest_model(f"LatestBlessed.{model}", trainer_id(model), config,
                                 blessed_by=evaluator_id(model))
            for model in LIKE_MODELS}
  base_models, latest_retrieval = {}, []
  if config.spans_enabled:
    base_models = {model: latest[model].outputs["model"] for model in LIKE_MODELS}
    # Retrieval has no blessing of its own (the recommender it feeds has): its
    # successor starts from the latest one trained.
    latest_retrieval = [_latest_model("LatestTrained.retrieval", trainer_id("retrieval"),
                                      config)]
    base_models["retrieval"] = latest_retrieval[0].outputs["model"]
  trainers = {model: _trainer(model, run_fn, learned_from, transform, schema_gen, config,
                              base_models.get(model))
              for model, run_fn in MODELS.items()}

  # Each like model judged on the test split (TFMA), blessed or not; its served form
  # (every rating excluded from `recommend`) pushed if blessed.
  evaluators, like_model_nodes = {}, []
  for model in LIKE_MODELS:
    evaluators[model] = _evaluator(model, trainers[model], latest[model], newest, config)
    served_model = ServedModelBuilder(
        examples=newest, history=history,
        transform_graph=transform.outputs["transform_graph"],
        model=trainers[model].outputs["model"], model_name=model,
        code_fingerprint=code_fingerprint_of("ServedModelBuilder"),
    ).with_id(served_model_builder_id(model))
    like_model_nodes += [
        evaluators[model], served_model,
        _pusher(model, served_model.outputs["served_model"],
                evaluators[model].outputs["blessing"], config)]

  # The served recommender: retrieval's candidates, the rated ones dropped, ranked
  # by engagement and DeepFM's like probability; built once as evaluated (excluding
  # train and eval) and once as served (excluding every rating).
  recommender_hparams = config.recommender_hparams()
  recommender_builder = RecommenderBuilder(
      examples=newest, history=history,
      transform_graph=transform.outputs["transform_graph"],
      retrieval_model=trainers["retrieval"].outputs["model"],
      ranking_model=trainers[RANKING_MODEL].outputs["model"],
      recommender_hparams=json.dumps(hparams.to_config(recommender_hparams)),
      code_fingerprint=code_fingerprint_of("RecommenderBuilder"))

  # The last blessed recommender, the baseline of the NDCG change threshold.
  latest_blessed_recommender = _latest_model(f"LatestBlessed.{RECOMMENDER}",
                                             "RecommenderBuilder", config,
                                             blessed_by="RankingEvaluator")

  # The top-k lists each model's `recommend` serves the test users, against the
  # popularity and EASE baselines on the same candidates; the recommender is
  # blessed on them.
  ranking_evaluator = RankingEvaluator(
      examples=newest, history=history,
      cf_model=trainers["cf"].outputs["model"],
      deepfm_model=trainers["deepfm"].outputs["model"],
      retrieval_model=trainers["retrieval"].outputs["model"],
      recommender_model=recommender_builder.outputs["model"],
      baseline_model=latest_blessed_recommender.outputs["model"],
      max_ndcg_drop=config.max_ndcg_drop,
      code_fingerprint=code_fingerprint_of("RankingEvaluator"))

  # The served variant of a blessed recommender, pushed as TF Serving's "recommender".
  recommender_pusher = _pusher(RECOMMENDER, recommender_builder.outputs["served_model"],
                               ranking_evaluator.outputs["blessing"], config)

  # Every evaluation side by side: metrics.json, report.md, figures, TensorBoard.
  model_report = ModelReport(
      cf_evaluation=evaluators["cf"].outputs["evaluation"],
      cf_blessing=evaluators["cf"].outputs["blessing"],
      cf_model_run=trainers["cf"].outputs["model_run"],
      deepfm_evaluation=evaluators["deepfm"].outputs["evaluation"],
      deepfm_blessing=evaluators["deepfm"].outputs["blessing"],
      deepfm_model_run=trainers["deepfm"].outputs["model_run"],
      ranking=ranking_evaluator.outputs["evaluation"],
      code_fingerprint=code_fingerprint_of("ModelReport"),
      learned_from=learned_from, examples=newest,
      statistics=statistics_gen.outputs["statistics"])

  return [example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
          *([drift_validator] if drift_validator is not None else []),
          *latest.values(), *latest_retrieval, transform, *trainers.values(),
          *like_model_nodes, recommender_builder, latest_blessed_recommender,
          ranking_evaluator, recommender_pusher, model_report]



def _trainer(model: str, run_fn: str, examples, transform, schema_gen,
             config: configs.PipelineConfig, base_model=None) -> Trainer:
  """A Trainer for `model` with its hyperparameter preset, the run's seed and
  distribution; with `base_model` (a resolved channel), it starts from that model's
  weights (trainer/run.py, models/warm_start.py).

  With `config.workers` > 1 it trains in that many local worker processes
  (components/multi_worker_trainer.py); with one, it is TFX's Trainer as it was,
  so that the cache keys of such runs stay what they were.
  """
  custom_config = {"hparams": hparams.to_config(config.hparams(model)),
                   "seed": config.seed, "distribution": config.distribution,
                   "code_fingerprint": code_fingerprint_of(trainer_id(model))}
  trainer_class = Trainer
  if config.workers > 1:
    custom_config[multi_worker_trainer.WORKERS_KEY] = config.workers
    trainer_class = multi_worker_trainer.MultiWorkerTrainer
  return trainer_class(
      run_fn=run_fn,
      examples=examples,
      base_model=base_model,
      transform_graph=transform.outputs["transform_graph"],
      schema=schema_gen.outputs["schema"],
      train_args=trainer_pb2.TrainArgs(splits=TRAIN_SPLITS.get(model, ["train"])),
      eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
      custom_config=custom_config,
  ).with_id(trainer_id(model))


def _latest_model(node_id: str, producer: str, config: configs.PipelineConfig,
                  blessed_by: Optional[str] = None) -> Resolver:
  """The latest model `producer` made that `blessed_by` blessed (without spans, the
  only kind asked for), or without `blessed_by` the latest it made.

  With spans, only models of the runs of earlier spans: a span run killed after a
  blessing and resumed resolves what it did at first (pipeline/resolvers.py).
  """
  channels = {"model": Channel(type=standard_artifacts.Model,
                               producer_component_id=producer, output_key="model")}
  if blessed_by:
    channels["model_blessing"] = Channel(
        type=standard_artifacts.ModelBlessing, producer_component_id=blessed_by,
        output_key="blessing")
  if config.spans_enabled:
    return Resolver(strategy_class=resolvers.LatestFromEarlierSpans,
                    config={"span": config.span}, **channels).with_id(node_id)
  return Resolver(strategy_class=latest_blessed_model_strategy.LatestBlessedModelStrategy,
                  **channels).with_id(node_id)


def _evaluator(model: str, trainer, latest_blessed, examples,
               config: configs.PipelineConfig) -> Evaluator:
  """The Evaluator of one like model; `latest_blessed` is the change threshold's
  baseline."""
  return Evaluator(
      examples=examples,
      model=trainer.outputs["model"],
      baseline_model=latest_blessed.outputs["model"],
      # With spans, the whole newest span is the test; without, its test split.
      example_splits=(list(features.SPLIT_NAMES) if config.spans_enabled
                      else [tfma_config.EVAL_SPLIT]),
      eval_config=tfma_config.eval_config(config.auc_floor, config.max_auc_drop,
                                          config.dataset),
  ).with_id(evaluator_id(model))


def _pusher(model: str, model_channel, blessing, config: configs.PipelineConfig) -> Pusher:
  """Runs for every model, but copies only a blessed one (and only once): a rejected
  model leaves the previously pushed versions in place."""
  return Pusher(
      model=model_channel,
      model_blessing=blessing,
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=config.serving_model_dir(model))),
      custom_config={"code_fingerprint": code_fingerprint_of("Pusher")},
  ).with_id(pusher_id(model))


def create_pipeline(config: configs.PipelineConfig, local_metadata: bool = True,
                    ingestion_only: bool = False) -> tfx_pipeline.Pipeline:
  """The whole pipeline.

  Args:
    config: the run's settings.
    local_metadata: record ML Metadata in SQLite in the run's output folder, as
      LocalDagRunner needs; False where the orchestrator brings its own store
      (Kubeflow Pipelines, Vertex AI).
    ingestion_only: only the ingestion and its statistics (`create_components`).
  """
  return tfx_pipeline.Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=config.pipeline_root,
      components=create_components(config, ingestion_only),
      enable_cache=config.enable_cache,
      metadata_connection_config=(
          metadata.sqlite_metadata_connection_config(config.metadata_path)
          if local_metadata else None),
      beam_pipeline_args=config.beam_args)
