"""The `recsys` command: `recsys run` runs the pipeline here, `recsys compile` writes
it as a Kubeflow Pipelines v2 / Vertex AI spec."""
import argparse
import json
import os
import re
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

from common import errors
from models import features
from models import hparams
from pipeline import configs

RECOMMENDER = "recommender"  # the two-stage recommender's name on TF Serving


class BadRequest(errors.RecsysError):
  """A request the model refused, e.g. k outside its allowed range."""


class UsageError(Exception):
  """Flags that do not go together; reported as argparse reports its own errors."""


def parse_overrides(settings: List[str]) -> Dict[str, Dict[str, Any]]:
  """["cf.epochs=3", "deepfm.dnn_units=[64,32]"] -> {"cf": {"epochs": 3}, ...}."""
  overrides: Dict[str, Dict[str, Any]] = {}
  for setting in settings:
    key, _, value = setting.partition("=")
    model, _, name = key.partition(".")
    if not value or not name:
      raise SystemExit(f"--set expects MODEL.NAME=VALUE, got {setting!r}")
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      parsed = value
    overrides.setdefault(model, {})[name] = (tuple(parsed) if isinstance(parsed, list)
                                             else parsed)
  return overrides


def _pipeline_config(args: argparse.Namespace, **paths) -> configs.PipelineConfig:
  """The settings `recsys run` and `recsys compile` share, plus `paths`."""
  try:
    beam_args = configs.beam_pipeline_args(args.beam_runner, args.beam_arg,
                                           features.DATASET_RATINGS[args.dataset])
  except ValueError as e:
    raise UsageError(str(e)) from None
  try:
    return configs.PipelineConfig(
        dataset=args.dataset, data_dir=args.data_dir or None,
        download_dir=args.download_dir, seed=args.seed, split=args.split,
        span_days=getattr(args, "span_days", 0),
        span_months=getattr(args, "span_months", 0), span=getattr(args, "span", -1),
        until=getattr(args, "until", None), window_spans=args.window_spans,
        accept_drift=args.accept_drift, beam_args=beam_args,
        enable_cache=not args.no_cache,
        presets={"cf": args.cf_config, "deepfm": args.deepfm_config,
                 "retrieval": args.retrieval_config},
        overrides=parse_overrides(args.set),
        auc_floor=args.auc_floor, max_auc_drop=args.max_auc_drop,
        max_ndcg_drop=args.max_ndcg_drop, serving_dir=args.serving_dir,
        distribution=args.distribution, workers=args.workers, **paths)
  except ValueError as e:
    raise UsageError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
  config = _pipeline_config(args, output_dir=args.output_dir or None,
                            pipeline_root=args.pipeline_root,
                            min_free_gb=args.min_free_gb)
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  try:
    summary = local_runner.run(config, verbose=args.verbose)
  except KeyboardInterrupt:
    print("\ninterrupted: run the same command again to resume from the completed "
          "stages", file=sys.stderr)
    return 130
  print(f"\nRun {summary.run_id} finished. Output: {summary.output_dir}")
  print(summary.table())
  if summary.report_path:
    _print_report(os.path.dirname(summary.report_path))
  return 0


def _replay(args: argparse.Namespace) -> int:
  from pipeline import replay  # pylint: disable=g-import-not-at-top
  from pipeline import timeline  # pylint: disable=g-import-not-at-top
  try:
    length = replay.span_length(args.every)
  except ValueError as e:
    raise UsageError(str(e)) from None
  args.span_days, args.span_months = length.days, length.months
  config = _pipeline_config(
      args, output_dir=args.output_dir or os.path.join(
          configs.DEFAULT_OUTPUT_ROOT, f"replay-movielens-{args.dataset}-{args.every}"),
      pipeline_root=None, min_free_gb=args.min_free_gb)
  try:
    result = replay.replay(config, args.every, args.start, args.end, verbose=args.verbose)
  except KeyboardInterrupt:
    print("\ninterrupted: run the same command again to resume from the span it was "
          "in", file=sys.stderr)
    return 130
  report = os.path.join(config.output_dir, "report")
  print(f"\nReplay of {len(result.records)} spans. Output: {config.output_dir}")
  print(timeline.table(result))
  print(f"\nTimeline: {os.path.join(report, timeline.TIMELINE_FILE)}, "
        f"{os.path.join(report, timeline.FIGURE_FILE)}; "
        f"`recsys tensorboard {config.output_dir}` shows it by span")
  return 0


def _compile(args: argparse.Namespace) -> int:
  from pipeline import kubeflow_v2_runner  # pylint: disable=g-import-not-at-top
  # The pipeline root is the run's folder on the cluster (serving dir default
  # <pipeline-root>/serving); the cluster keeps ML Metadata itself.
  config = _pipeline_config(args, output_dir=args.pipeline_root,
                            pipeline_root=args.pipeline_root)
  if config.spans_enabled:
    # TFX 1.16's KFP v2 compiler stops with a TypeError on the window's resolver.
    raise UsageError("spans (--span-days, --span-months) cannot be compiled for "
                     "Kubeflow Pipelines v2 yet: TFX 1.16's compiler takes neither the "
                     "window's rolling range nor the span resolvers; run span runs with "
                     "`recsys run` or `recsys replay` (docs/continuous-training.md)")
  spec = kubeflow_v2_runner.compile_pipeline(config, args.image, args.output)
  steps = len(spec["pipelineSpec"]["root"]["dag"]["tasks"])
  print(f"Wrote {os.path.abspath(args.output)}: {config.pipeline_name} for "
        f"{args.target}, {steps} steps in {args.image}, pipeline root "
        f"{config.pipeline_root}, Beam {args.beam_runner}, pushes to {config.serving_dir}")
  return 0


def _print_report(folder: str) -> None:
  from components import model_report  # pylint: disable=g-import-not-at-top
  report = model_report.load(folder)
  print(f"\n{model_report.comparison_table(report)}")
  print(f"\nReport: {os.path.join(folder, model_report.MARKDOWN_FILE)} "
        f"(figures beside it)")


def _report(args: argparse.Namespace) -> int:
  from components import model_report  # pylint: disable=g-import-not-at-top
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  store = run_store.RunStore(args.run_dir)
  _print_report(store.require(model_report.ReportArtifact.TYPE_NAME,
                              what="evaluation report"))
  return 0


def _card(args: argparse.Namespace) -> int:
  """Prints where a finished run's model cards are: in its report, and beside each
  model it pushed."""
  from components import model_cards  # pylint: disable=g-import-not-at-top
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  config = configs.PipelineConfig(output_dir=args.run_dir, serving_dir=args.serving_dir)
  folder = os.path.join(config.output_dir, "report", model_cards.CARDS_DIR)
  cards = sorted(f for f in os.listdir(folder) if f.endswith(".md")) if os.path.isdir(
      folder) else []
  if not cards:
    raise run_store.RunFolderError(f"no model cards in {folder}: run the pipeline "
                                   "(recsys run) to the end first")
  for card in cards:
    name = card[:-len(".md")]
    beside = os.path.join(config.serving_dir, name, model_cards.CARD_FILE + ".md")
    print(f"{name}: {os.path.join(folder, card)} (and .html)"
          + (f"; beside the pushed model: {beside}" if os.path.isfile(beside) else ""))
  return 0


def _cluster(args: argparse.Namespace) -> int:
  cluster = configs.LOCAL_CLUSTERS[args.engine](args.state_dir)
  if args.action == "install":
    cluster.install()
    print(f"{cluster.NAME} {cluster.VERSION} and Beam {cluster.BEAM_JOB_SERVER_VERSION}'s "
          f"job server are installed in {cluster.tools_dir}.")
  elif args.action == "up":
    cluster.up()
    flags = " ".join(f"--beam-arg={arg}" for arg in cluster.beam_args())
    print(f"{cluster.NAME} {cluster.VERSION} is up: {cluster.web_url()} (web UI).\n"
          f"Run the pipeline on it with `recsys run --beam-runner {cluster.RUNNER}`, which "
          f"adds\n  {flags}\nStop it with {cluster.command('down')}.")
  elif args.action == "down":
    stopped = cluster.down(quiet=True)
    print(f"Stopped {len(stopped)} processes of the {cluster.NAME} cluster in "
          f"{cluster.state_dir}." if stopped else
          f"No {cluster.NAME} cluster was running from {cluster.state_dir}.")
  else:
    line = cluster.status_line()
    if not line:
      print(f"down: no {cluster.NAME} cluster answers for {cluster.state_dir}")
      return 3
    print(f"up: {line}")
  return 0


def _tensorboard(args: argparse.Namespace) -> int:
  from pipeline import tensorboard  # pylint: disable=g-import-not-at-top
  return tensorboard.serve(args.run_dir, port=args.port, host=args.host) or 0


def _latest_version(model_dir: str) -> str:
  from components import pusher  # pylint: disable=g-import-not-at-top
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  versions = pusher.pushed_versions(model_dir)
  if not versions:
    raise run_store.RunFolderError(
        f"no pushed model in {model_dir}: a model is pushed once its evaluation "
        "blesses it (see `recsys report`)")
  return os.path.join(model_dir, versions[-1])


def _movie_ids(text: str) -> List[str]:
  """`--history 1,2,3` -> ["1", "2", "3"]; blanks around and between commas are dropped."""
  return [movie for movie in (part.strip() for part in text.split(",")) if movie]


def _recommend(args: argparse.Namespace) -> int:
  from serving import client as serving_client  # pylint: disable=g-import-not-at-top
  from serving import contract  # pylint: disable=g-import-not-at-top
  if args.history is not None and args.model != RECOMMENDER:
    raise UsageError(f"--history needs --model {RECOMMENDER}: only the two-stage "
                     f"recommender serves {contract.RECOMMEND_FOR_HISTORY}; {args.model} "
                     "recommends for user ids alone")
  run_dir = os.path.abspath(args.run_dir)
  if args.server:
    with serving_client.ServingClient.from_url(args.server, args.model) as client:
      top = (client.recommend(args.user, args.k) if args.history is None else
             client.recommend_for_history(args.history, args.k))
    source = f"{args.model} on TF Serving at {args.server}"
  else:
    serving_dir = args.serving_dir or os.path.join(run_dir, "serving")
    model_dir = _latest_version(os.path.join(serving_dir, args.model))
    if args.history is None:
      top = _top_k_in_process(model_dir, contract.RECOMMEND, {contract.USER_ID: [args.user]},
                              args.k)
    else:
      top = _top_k_in_process(model_dir, contract.RECOMMEND_FOR_HISTORY,
                              {contract.HISTORY: [serving_client.history_row(args.history)]},
                              args.k)
    source = f"{args.model} from {model_dir}"
  pairs = [(movie, score) for movie, score in top if movie]  # "" pads a list shorter than k
  who = (f"user {args.user}" if args.history is None else
         f"a visitor who rated {', '.join(args.history) or 'nothing yet'}")
  _print_top_k(pairs, who, source, run_dir)
  return 0


def _top_k_in_process(model_dir: str, signature: str, query: Dict[str, list],
                      k: int) -> List[Tuple[str, float]]:
  """A pushed SavedModel's `recommend*` signature called here on one query (string
  inputs of batch 1): (movie_id, score) pairs, best first, padding ("") included."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from serving import contract  # pylint: disable=g-import-not-at-top
  signatures = tf.saved_model.load(model_dir).signatures
  if signature not in signatures:
    raise BadRequest(f"{model_dir} predates the {signature} signature: it was pushed "
                     "before the model had one; a new run (`recsys run`) pushes one that "
                     "has it")
  inputs = {name: tf.constant(values, tf.string) for name, values in query.items()}
  try:
    result = signatures[signature](**inputs, **{contract.K: tf.constant(k, tf.int32)})
  except tf.errors.InvalidArgumentError as e:
    # The model's own message (e.g. "k must be between 1 and 100") sits inside
    # TensorFlow's graph-execution report.
    reason = re.search(r"k must be between 1 and \d+", e.message)
    raise BadRequest(f"{model_dir}: {reason.group(0) if reason else e.message}") from None
  return [(m.decode(), float(s)) for m, s in zip(
      result[contract.MOVIE_IDS].numpy()[0], result[contract.SCORES].numpy()[0])]


def _print_top_k(pairs: List[Tuple[str, float]], who: str, source: str,
                 run_dir: str) -> None:
  """The list as a table, with the titles and genres of the run's movies."""
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  catalog = {}
  try:
    examples = run_store.RunStore(run_dir).latest_artifact("Examples", "MovieLensExampleGen")
    if examples is not None:
      from serving import movies  # pylint: disable=g-import-not-at-top
      catalog = movies.load_catalog(examples.uri)
  except run_store.RunFolderError:
    pass  # titles are a nicety; the ids and scores stand on their own
  print(f"Top {len(pairs)} movies for {who} ({source}):")
  print(f"{'rank':>4}  {'movie':>6}  {'like':>6}  {'title':<45} genres")
  for rank, (movie, score) in enumerate(pairs, 1):
    title, genres = catalog.get(movie, ("", ""))
    print(f"{rank:>4}  {movie:>6}  {score:>6.3f}  {title[:45]:<45} {genres}")


def _add_span_arguments(parser: argparse.ArgumentParser) -> None:
  """Continuous training's settings of one run (`recsys replay` sets them per span)."""
  parser.add_argument("--span-days", type=int, default=0, help="continuous training: "
                      "cut the ratings into spans of this many days; a run ingests one "
                      "span, learns from the spans before it and is judged on it")
  parser.add_argument("--span-months", type=int, default=0,
                      help="likewise, spans of this many calendar months")
  parser.add_argument("--span", type=int, default=-1, help="the span this run ingests "
                      "(default: the last one with ratings up to --until)")
  parser.add_argument("--until", metavar="YYYY-MM-DD", help="leave out the ratings "
                      "after this day, as if the data had been read at its end")
  _add_window_arguments(parser)


def _add_window_arguments(parser: argparse.ArgumentParser) -> None:
  """What each span's run learns from, and whether it trains on drifted data."""
  parser.add_argument("--window-spans", type=int, default=0, help="learn from this "
                      "many spans before the run's one (default 0: all of them)")
  parser.add_argument("--accept-drift", action="store_true", help="train on the span "
                      "even if its data drifted from the previous span's")


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
  """The pipeline's settings, shared by `recsys run` and `recsys compile`."""
  parser.add_argument("--dataset", choices=sorted(features.DATASETS),
                      default=features.DEFAULT_DATASET, help="MovieLens release")
  parser.add_argument("--data-dir", help="folder with the official zip or the "
                      "extracted files; omit to download through TFDS. On a cluster, a "
                      "bucket holding the extracted files (gs://BUCKET/ml-1m) or the "
                      "folder as the steps see it")
  parser.add_argument("--download-dir", help="TFDS download cache "
                      "(default ~/tensorflow_datasets/downloads)")
  parser.add_argument("--seed", type=int, default=42, help="seeds splits and shuffles")
  parser.add_argument("--split", choices=features.SPLIT_METHODS, default="random",
                      help="train/eval/test by a hash of each rating (random, as the "
                      "reference study) or by time: each user's latest ratings are "
                      "the test, the ones before them the eval split (temporal)")
  parser.add_argument("--beam-runner", choices=configs.BEAM_RUNNERS,
                      default=configs.DIRECT_RUNNER, help="Beam runner of the "
                      "Beam-based steps (ingestion, statistics, Transform, evaluation)")
  parser.add_argument("--beam-arg", action="append", default=[], metavar="FLAG",
                      help="extra Beam pipeline flag, repeatable, e.g. "
                      "--beam-arg=--direct_num_workers=4 or --beam-arg=--project=P")
  parser.add_argument("--cf-config", choices=["seed", "best"], default="best",
                      help="CF hyperparameters: the reference study's (seed) or ours")
  parser.add_argument("--deepfm-config", choices=["seed", "best"], default="best",
                      help="DeepFM hyperparameters: the reference study's (seed) or ours")
  parser.add_argument("--retrieval-config", choices=["seed", "best"], default="best",
                      help="retrieval hyperparameters: the defaults (seed) or the tuned")
  parser.add_argument("--set", action="append", default=[], metavar="MODEL.NAME=VALUE",
                      help="override one hyperparameter, e.g. --set cf.epochs=3 "
                      "(names in models/hparams.py)")
  parser.add_argument("--no-cache", action="store_true",
                      help="rerun every component even when its inputs did not change")
  parser.add_argument("--auc-floor", type=float, default=configs.DEFAULT_AUC_FLOOR,
                      help="bless a model only if its test AUC is at least this")
  parser.add_argument("--max-auc-drop", type=float, default=configs.DEFAULT_MAX_AUC_DROP,
                      help="and if it is at most this below the latest blessed model's")
  parser.add_argument("--max-ndcg-drop", type=float, default=configs.DEFAULT_MAX_NDCG_DROP,
                      help="bless the recommender only if its NDCG@10 is at least "
                      "popularity's and at most this below the latest blessed one's")
  parser.add_argument("--serving-dir", help="where blessed models are pushed for TF "
                      "Serving (default <output-dir>/serving; compile: "
                      "<pipeline-root>/serving)")
  parser.add_argument("--distribution", choices=hparams.DISTRIBUTIONS,
                      default=hparams.NO_DISTRIBUTION, help="how each Trainer spreads "
                      "training: tf.distribute MirroredStrategy (local devices) or "
                      "MultiWorkerMirroredStrategy (the workers TF_CONFIG lists)")
  parser.add_argument("--workers", type=int, default=1, help="with --distribution "
                      f"{hparams.MULTI_WORKER_MIRRORED}: train each model in this many "
                      "local worker processes, each with its own TF_CONFIG (default 1: "
                      "in the pipeline's process)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="recsys", description="MovieLens like-prediction pipeline on TFX.")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run the pipeline here (LocalDagRunner)")
  run.add_argument("--output-dir", help="run folder (default runs/movielens-<dataset>)")
  run.add_argument("--pipeline-root", help="component outputs (default "
                   "<output-dir>/tfx); a bucket, gs://..., when Beam runs on Dataflow")
  _add_pipeline_arguments(run)
  _add_span_arguments(run)
  run.add_argument("--min-free-gb", type=float, help="free disk space (GB) the run "
                   f"needs before it starts (default by dataset: {configs.MIN_FREE_GB})")
  run.add_argument("--verbose", action="store_true", help="also show TFX's, Beam's and "
                   "TensorFlow's warnings on the console (they always go to the run's log)")
  run.set_defaults(handler=_run)

  compile_ = commands.add_parser(
      "compile", help="write the pipeline as a Kubeflow Pipelines v2 spec (JSON), "
      "which Vertex AI Pipelines also runs")
  compile_.add_argument("--target", choices=configs.COMPILE_TARGETS,
                        default="kubeflow-v2", help="orchestrator; kubeflow-v2 "
                        "serves Kubeflow Pipelines v2 and Vertex AI Pipelines alike")
  compile_.add_argument("--output", default="pipeline.json", help="the spec to write")
  compile_.add_argument("--image", required=True, help="container image of every "
                        "step, with this project installed (build it from the "
                        "Dockerfile), e.g. us-docker.pkg.dev/PROJECT/REPO/recsys:TAG")
  compile_.add_argument("--pipeline-root", required=True, help="where the steps write "
                        "their outputs, e.g. gs://BUCKET/movielens")
  _add_pipeline_arguments(compile_)
  _add_span_arguments(compile_)
  compile_.set_defaults(handler=_compile)

  replay = commands.add_parser(
      "replay", help="run the pipeline span after span on one folder, as the ratings "
      "arrived: each span learns from those before it and is judged on itself")
  replay.add_argument("--every", default="1w", help="span length: days (7d), weeks "
                      "(1w) or calendar months (1m)")
  replay.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="the first "
                      "span judged is the one holding this day (default: the second "
                      "span with ratings; the first has nothing before it)")
  replay.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="the last span "
                      "judged holds this day, and its ratings after it are left out "
                      "(default: the last rating)")
  replay.add_argument("--output-dir", help="run folder (default "
                      "runs/replay-movielens-<dataset>-<every>); run again with the same "
                      "settings to resume")
  _add_pipeline_arguments(replay)
  _add_window_arguments(replay)
  replay.add_argument("--min-free-gb", type=float, help="free disk space (GB) each "
                      f"span's run needs (default by dataset: {configs.MIN_FREE_GB})")
  replay.add_argument("--verbose", action="store_true", help="as for `recsys run`")
  replay.set_defaults(handler=_replay)

  report = commands.add_parser(
      "report", help="print a finished run's comparison table (from ML Metadata)")
  report.add_argument("run_dir", help="the run's output folder")
  report.set_defaults(handler=_report)

  card = commands.add_parser(
      "card", help="print where a finished run's model cards are (its report, and "
      "beside each pushed model)")
  card.add_argument("run_dir", help="the run's output folder")
  card.add_argument("--serving-dir", help="where the run pushed its models (default "
                    "<run_dir>/serving)")
  card.set_defaults(handler=_card)

  recommend = commands.add_parser(
      "recommend", help="top-k movies for a user or a visitor's history, from the "
      "latest pushed model (in-process) or from TF Serving (--server)")
  who = recommend.add_mutually_exclusive_group(required=True)
  who.add_argument("--user", help="user id, e.g. 42")
  who.add_argument("--history", type=_movie_ids, metavar="ID,ID,...", help="the "
                   "movies a visitor rated, e.g. 1,260,1196: recommendations for someone "
                   f"in no table (--model {RECOMMENDER} only)")
  recommend.add_argument("--k", type=int, default=10, help="how many movies (1 to 100)")
  recommend.add_argument("--model", choices=[RECOMMENDER, "cf", "deepfm"],
                         default=RECOMMENDER, help="the two-stage recommender, or "
                         "one like model ranking the whole catalogue")
  recommend.add_argument("--server", help="TF Serving URL: http://host:8501 (REST) "
                         "or grpc://host:8500; omit to load the pushed SavedModel here")
  recommend.add_argument("--run-dir", default=configs.PipelineConfig().output_dir,
                         help="the run whose pushed models and movie titles to use")
  recommend.add_argument("--serving-dir", help="default <run-dir>/serving")
  recommend.set_defaults(handler=_recommend)

  cluster = commands.add_parser(
      "cluster", help="a local Flink or Spark cluster for --beam-runner FlinkRunner or "
      "SparkRunner: the engine's daemons and Beam's job server (docs/scaling-out.md)")
  cluster.add_argument("action", choices=["install", "up", "down", "status"],
                       help="install puts the pinned engine and job server into "
                       ".tools/ENGINE; up installs them on first use and starts the "
                       "cluster; down stops every process of it; status exits 3 when "
                       "the cluster does not answer")
  cluster.add_argument("--engine", choices=sorted(configs.LOCAL_CLUSTERS), default="flink",
                       help="Flink: a JobManager and two TaskManagers; Spark: a "
                       "standalone master and one worker (default flink)")
  cluster.add_argument("--state-dir", help="where the cluster keeps its configuration, "
                       "logs and ports (default .tools/ENGINE/cluster)")
  cluster.set_defaults(handler=_cluster)

  board = commands.add_parser(
      "tensorboard", help="TensorBoard on a finished run: training and evaluation")
  board.add_argument("run_dir", help="the run's output folder")
  board.add_argument("--port", type=int, default=6006)
  board.add_argument("--host", default="localhost",
                     help="interface to listen on (0.0.0.0 for all)")
  board.set_defaults(handler=_tensorboard)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "verbose", False):
    # Before TensorFlow is imported: its C++ logging (e.g. the CUDA plugins it
    # cannot find on a CPU machine) says nothing a user can act on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
  try:
    return args.handler(args)
  except UsageError as e:
    parser.error(str(e))
  except Exception as e:  # pylint: disable=broad-except
    # Known errors get one clear line; anything else is a bug and keeps its traceback.
    known = errors.known_error(e)
    if known is None:
      raise
    print(f"\nerror: {known}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
