"""The `recsys` command: `recsys run` runs the pipeline here."""
import argparse
import json
import os
import re
import sys
import warnings
from typing import Any, Dict, List, Optional

from models import features
from pipeline import configs

# Known errors get one clear line; anything else is a bug and keeps its traceback.
_KNOWN_ERRORS = ("MovieLensDataError", "DataValidationError", "EvaluationError",
                 "RunFolderError", "ServingError", "BadRequest", "RunLockedError",
                 "PreflightError")


class BadRequest(Exception):
  """A request the model refused, e.g. k outside its allowed range."""


def _known_error(error: BaseException) -> Optional[BaseException]:
  while error is not None:
    if type(error).__name__ in _KNOWN_ERRORS:
      return error
    error = error.__cause__ or error.__context__
  return None


def _overrides(settings: List[str]) -> Dict[str, Dict[str, Any]]:
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


def _run(args: argparse.Namespace) -> int:
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  config = configs.PipelineConfig(
      dataset=args.dataset, data_dir=args.data_dir or None,
      output_dir=args.output_dir or None, download_dir=args.download_dir,
      seed=args.seed,
      beam_args=configs.default_beam_args() + list(args.beam_arg),
      enable_cache=not args.no_cache,
      presets={"cf": args.cf_config, "deepfm": args.deepfm_config},
      overrides=_overrides(args.set),
      auc_floor=args.auc_floor, max_auc_drop=args.max_auc_drop,
      serving_dir=args.serving_dir, min_free_gb=args.min_free_gb)
  try:
    summary = local_runner.run(config)
  except KeyboardInterrupt:
    print("\ninterrupted: run the same command again to resume from the completed "
          "stages", file=sys.stderr)
    return 130
  print(f"\nRun {summary.run_id} finished. Output: {summary.output_dir}")
  print(summary.table())
  if summary.report_path:
    _print_report(os.path.dirname(summary.report_path))
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


def _recommend(args: argparse.Namespace) -> int:
  from pipeline import run_store  # pylint: disable=g-import-not-at-top
  from serving import client as serving_client  # pylint: disable=g-import-not-at-top
  run_dir = os.path.abspath(args.run_dir)
  if args.server:
    with serving_client.ServingClient.from_url(args.server, args.model) as client:
      pairs = [(movie, score) for movie, score in client.recommend(args.user, args.k)
               if movie]  # "" pads a user with fewer than k unrated movies
    source = f"{args.model} on TF Serving at {args.server}"
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from serving import contract  # pylint: disable=g-import-not-at-top
    serving_dir = args.serving_dir or os.path.join(run_dir, "serving")
    model_dir = _latest_version(os.path.join(serving_dir, args.model))
    recommend = tf.saved_model.load(model_dir).signatures[contract.RECOMMEND]
    try:
      result = recommend(user_id=tf.constant([args.user]), k=tf.constant(args.k, tf.int32))
    except tf.errors.InvalidArgumentError as e:
      # The model's own message (e.g. "k must be between 1 and 100") sits inside
      # TensorFlow's graph-execution report.
      reason = re.search(r"k must be between 1 and \d+", e.message)
      raise BadRequest(f"{model_dir}: {reason.group(0) if reason else e.message}") from None
    pairs = [(m.decode(), float(s)) for m, s in zip(
        result[contract.MOVIE_IDS].numpy()[0], result[contract.SCORES].numpy()[0]) if m]
    source = f"{args.model} from {model_dir}"
  catalog = {}
  try:
    examples = run_store.RunStore(run_dir).latest_artifact("Examples", "MovieLensExampleGen")
    if examples is not None:
      from serving import movies  # pylint: disable=g-import-not-at-top
      catalog = movies.load_catalog(examples.uri)
  except run_store.RunFolderError:
    pass  # titles are a nicety; the ids and scores stand on their own
  print(f"Top {len(pairs)} movies for user {args.user} ({source}):")
  print(f"{'rank':>4}  {'movie':>6}  {'like':>6}  {'title':<45} genres")
  for rank, (movie, score) in enumerate(pairs, 1):
    title, genres = catalog.get(movie, ("", ""))
    print(f"{rank:>4}  {movie:>6}  {score:>6.3f}  {title[:45]:<45} {genres}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="recsys", description="MovieLens like-prediction pipeline on TFX.")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run the pipeline here (LocalDagRunner)")
  run.add_argument("--dataset", choices=sorted(features.DATASETS),
                   default=features.DEFAULT_DATASET, help="MovieLens release")
  run.add_argument("--data-dir", help="folder with the official zip or the "
                   "extracted files; omit to download through TFDS")
  run.add_argument("--output-dir", help="run folder (default runs/movielens-<dataset>)")
  run.add_argument("--download-dir", help="TFDS download cache "
                   "(default ~/tensorflow_datasets/downloads)")
  run.add_argument("--seed", type=int, default=42, help="seeds splits and shuffles")
  run.add_argument("--beam-arg", action="append", default=[], metavar="FLAG",
                   help="extra Beam pipeline flag, repeatable, e.g. "
                   "--beam-arg=--direct_num_workers=4")
  run.add_argument("--cf-config", choices=["seed", "best"], default="best",
                   help="CF hyperparameters: the reference study's (seed) or ours")
  run.add_argument("--deepfm-config", choices=["seed", "best"], default="best",
                   help="DeepFM hyperparameters: the reference study's (seed) or ours")
  run.add_argument("--set", action="append", default=[], metavar="MODEL.NAME=VALUE",
                   help="override one hyperparameter, e.g. --set cf.epochs=3 "
                   "(names in models/hparams.py)")
  run.add_argument("--no-cache", action="store_true",
                   help="rerun every component even when its inputs did not change")
  run.add_argument("--auc-floor", type=float, default=configs.DEFAULT_AUC_FLOOR,
                   help="bless a model only if its test AUC is at least this")
  run.add_argument("--max-auc-drop", type=float, default=configs.DEFAULT_MAX_AUC_DROP,
                   help="and if it is at most this below the latest blessed model's")
  run.add_argument("--serving-dir", help="where blessed models are pushed for TF "
                   "Serving (default <output-dir>/serving)")
  run.add_argument("--min-free-gb", type=float, help="free disk space (GB) the run "
                   f"needs before it starts (default by dataset: {configs.MIN_FREE_GB})")
  run.set_defaults(handler=_run)

  report = commands.add_parser(
      "report", help="print a finished run's comparison table (from ML Metadata)")
  report.add_argument("run_dir", help="the run's output folder")
  report.set_defaults(handler=_report)

  recommend = commands.add_parser(
      "recommend", help="top-k movies for a user, from the latest pushed model "
      "(in-process) or from TF Serving (--server)")
  recommend.add_argument("--user", required=True, help="user id, e.g. 42")
  recommend.add_argument("--k", type=int, default=10, help="how many movies (1 to 100)")
  recommend.add_argument("--model", choices=["cf", "deepfm"], default="cf")
  recommend.add_argument("--server", help="TF Serving URL: http://host:8501 (REST) "
                         "or grpc://host:8500; omit to load the pushed SavedModel here")
  recommend.add_argument("--run-dir", default=configs.PipelineConfig().output_dir,
                         help="the run whose pushed models and movie titles to use")
  recommend.add_argument("--serving-dir", help="default <run-dir>/serving")
  recommend.set_defaults(handler=_recommend)

  board = commands.add_parser(
      "tensorboard", help="TensorBoard on a finished run: training and evaluation")
  board.add_argument("run_dir", help="the run's output folder")
  board.add_argument("--port", type=int, default=6006)
  board.add_argument("--host", default="localhost",
                     help="interface to listen on (0.0.0.0 for all)")
  board.set_defaults(handler=_tensorboard)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  warnings.filterwarnings("ignore", category=FutureWarning)
  args = build_parser().parse_args(argv)
  try:
    return args.handler(args)
  except Exception as e:  # pylint: disable=broad-except
    known = _known_error(e)
    if known is None:
      raise
    print(f"\nerror: {known}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
