"""What warm start buys on the real MovieLens-100K: epochs and time to a cold start's quality.

Continuous training as the pipeline will run it, on two spans of time. The base
span is every rating before T1 = the last rating's time - `--weeks`; the new span
every rating up to the end (T2). Ratings are split as ExampleGen splits them (a
hash of the (user, movie) pair, 80/10/10, seed 42), so a rating is in the same
split in both spans and the base model never trained on the new span's eval
ratings. Each span gets its own Transform graph (tf.Transform analyzes its train
split, on Beam, as the pipeline's Transform does), so its vocabularies order and
hold ids as that span's data has them.

Per model and seed:
- base: the span before T1, trained and exported by the Trainer's own code
  (`trainer.run.run`, no base model);
- cold: the new span, trained from scratch as the Trainer would;
- warm: the new span, from the base model (models/warm_start.py), same seed and
  hyperparameters, with the Trainer's `warm_start_epochs` (`--warm-epochs-as-cold`:
  the cold start's epochs).
For the like models (cf, deepfm) the measure is eval AUC per epoch (Keras' AUC,
1000 thresholds, as training reports it), for retrieval, which trains a fixed
number of epochs, NDCG@10 of its top 10 over the catalogue (movies rated in train
excluded) against the movies each eval user liked. The bar is the cold start's
final quality, that of the model it ends with (early stopping restores the best
epoch's weights); reported are the epochs and seconds each start needs to reach it,
and how far the warm start gets. Seconds are from the start of `fit` to the end of
the epoch (training, validation, tf.function tracing), plus the warm start itself,
without the time spent on NDCG. Writes JSON.

  python bench/warm_start.py --seeds 42,1,2 --output bench/results/warm_start.json
"""
import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
import warnings

# TFRS and our Keras code need Keras 2: set before TensorFlow loads. TensorFlow's C++
# logs and the libraries' FutureWarnings say nothing about the measurement.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning)
# tests/ is not an installed package (setup.py): import its helper from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
import tensorflow_transform.beam as tft_beam  # pylint: disable=g-import-not-at-top
from tensorflow_transform.tf_metadata import dataset_metadata  # pylint: disable=g-import-not-at-top
from tensorflow_transform.tf_metadata import metadata_io  # pylint: disable=g-import-not-at-top
from tensorflow_transform.tf_metadata import schema_utils  # pylint: disable=g-import-not-at-top
from tfx.components.trainer import fn_args_utils  # pylint: disable=g-import-not-at-top

from components.movielens_example_gen import parsing  # pylint: disable=g-import-not-at-top
from evaluation import topk  # pylint: disable=g-import-not-at-top
from export import recommend  # pylint: disable=g-import-not-at-top
from models import cf  # pylint: disable=g-import-not-at-top
from models import data  # pylint: disable=g-import-not-at-top
from models import deepfm  # pylint: disable=g-import-not-at-top
from models import features  # pylint: disable=g-import-not-at-top
from models import hparams as hp  # pylint: disable=g-import-not-at-top
from models import preprocessing  # pylint: disable=g-import-not-at-top
from models import retrieval  # pylint: disable=g-import-not-at-top
from models import training  # pylint: disable=g-import-not-at-top
from models import warm_start  # pylint: disable=g-import-not-at-top
from pipeline import cli  # pylint: disable=g-import-not-at-top
from tests import transform_fixture  # pylint: disable=g-import-not-at-top
from trainer import run  # pylint: disable=g-import-not-at-top

# The real GroupLens files live beside the repo, never inside it (tests/conftest.py).
DEFAULT_DATA = os.path.join(
    os.environ.get("MOVIELENS_REAL_DATA", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
        "movielens")), "ml-100k")
MODELS = {"cf": (cf.build, features.CF_RAW_FEATURES),
          "deepfm": (deepfm.build, features.DEEPFM_RAW_FEATURES),
          "retrieval": (retrieval.build, features.RETRIEVAL_RAW_FEATURES)}
SPLIT_SEED = 42  # the pipeline's default seed, by which ExampleGen splits
_USER = features.transformed_name(features.USER_ID)
_MOVIE = features.transformed_name(features.MOVIE_ID)
_EVAL_BATCH = 65_536  # as training validates the like models


def _day(timestamp: int) -> str:
  return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def _analyze(rows, output_dir: str) -> tft.TFTransformOutput:
  """The span's Transform graph: preprocessing_fn analyzed on its train split."""
  full_spec = transform_fixture.raw_feature_spec()
  spec = {k: v for k, v in full_spec.items() if k in rows[0]}
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
  with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=os.path.dirname(output_dir))):
    transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(preprocessing.preprocessing_fn)
    _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
  # The raw schema, which TFX's Transform writes beside the graph.
  metadata_io.write_metadata(metadata, os.path.join(
      output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
  return tft.TFTransformOutput(output_dir)


def _write_examples(path: str, rows) -> str:
  with tf.io.TFRecordWriter(path) as writer:
    for row in rows:
      writer.write(transform_fixture.to_tf_example(row))
  return path


class Span:
  """One span's Transform graph, example files and transformed splits."""

  def __init__(self, name: str, files: dict, train_rows, work_dir: str):
    self.name = name
    self.files = files  # split -> TFRecord files
    started = time.perf_counter()
    self.transform_dir = os.path.join(work_dir, f"transform-{name}")
    os.makedirs(self.transform_dir)
    self.output = _analyze(train_rows, self.transform_dir)
    self.analyze_seconds = time.perf_counter() - started
    self.examples = {split: data.load_examples(paths, self.output)
                     for split, paths in files.items()}

  def size(self, split: str) -> int:
    return len(self.examples[split][features.LABEL])


def read_spans(data_dir: str, weeks: float, split_seed: int, work_dir: str):
  """(base span, new span, facts): the release cut at T1 = last rating - `weeks`."""
  table = parsing.read_release(data_dir, parsing.LAYOUTS["100k"])
  rows = transform_fixture.rows_from_table(table)
  user_ids = np.array([row[features.USER_ID][0].decode() for row in rows], object)
  movie_ids = np.array([row[features.MOVIE_ID][0].decode() for row in rows], object)
  timestamps = np.array([row[features.TIMESTAMP][0] for row in rows])
  split = parsing.assign_splits(user_ids, movie_ids, split_seed,
                                [buckets for _, buckets in features.SPLITS])
  t2 = int(timestamps.max()) + 1
  t1 = t2 - int(weeks * 7 * 86_400)
  before = timestamps < t1
  files = {}
  for split_index, split_name in enumerate(("train", "eval")):
    for period, in_period in (("before", before), ("after", ~before)):
      chosen = [row for row, keep in zip(rows, in_period & (split == split_index)) if keep]
      files[split_name, period] = _write_examples(
          os.path.join(work_dir, f"{split_name}-{period}.tfrecord"), chosen)
  base_train = [row for row, keep in zip(rows, before & (split == 0)) if keep]
  new_train = [row for row, keep in zip(rows, split == 0) if keep]
  base = Span("base", {s: [files[s, "before"]] for s in ("train", "eval")}, base_train,
              work_dir)
  new = Span("new", {s: [files[s, "before"], files[s, "after"]] for s in ("train", "eval")},
             new_train, work_dir)
  facts = {"t1": _day(t1), "t2": _day(t2), "weeks": weeks, "split_seed": split_seed,
           "ratings": {span.name: {s: span.size(s) for s in ("train", "eval")}
                       for span in (base, new)},
           "analyze_seconds": {span.name: round(span.analyze_seconds, 1)
                               for span in (base, new)}}
  for field in (features.USER_ID, features.MOVIE_ID):
    old = set(base.output.vocabulary_by_name(field))
    fresh = set(new.output.vocabulary_by_name(field))
    facts[f"{field}_vocabulary"] = {"base": len(old), "new": len(fresh),
                                    "new_ids": len(fresh - old)}
  return base, new, facts


def eval_auc(model, examples) -> float:
  """Eval AUC as training reports it (the ranking task's metric, 1000 thresholds)."""
  metric = tf.keras.metrics.AUC(num_thresholds=1000)
  for inputs, labels in data.make_dataset(examples, _EVAL_BATCH, shuffle=False, seed=0):
    metric.update_state(labels, model(inputs, training=False))
  return float(metric.result())


class EvalNdcg:
  """NDCG@10 of a retrieval model's top 10 for the eval split's users.

  Every movie of the train vocabulary is a candidate except those the user rated
  in train; relevant are the eval movies the user liked, as the pipeline's top-k
  evaluation counts them (evaluation/topk.py).
  """

  def __init__(self, train, eval_examples, tf_transform_output):
    tables = recommend.CandidateTables.from_train_split(train, tf_transform_output)
    num_users, self.num_movies = len(tables.user_ids), len(tables.movie_ids)
    users, movies = eval_examples[_USER], eval_examples[_MOVIE]
    liked = ((users < num_users) & (movies < self.num_movies)
             & (eval_examples[features.LABEL] > 0.5))
    self.users = np.unique(users[liked])
    row_of = {user: i for i, user in enumerate(self.users)}
    self.relevant = [set() for _ in self.users]
    for user, movie in zip(users[liked], movies[liked]):
      self.relevant[row_of[user]].add(int(movie))
    self.rated = np.zeros((len(self.users), self.num_movies), bool)
    for user, movie in zip(train[_USER], train[_MOVIE]):
      if user in row_of and movie < self.num_movies:
        self.rated[row_of[user], movie] = True
    self.user_inputs = {k: v[self.users] for k, v in tables.user_features.items()}
    self.movie_inputs = {k: v[:self.num_movies] for k, v in tables.movie_features.items()}

  def __call__(self, model) -> float:
    queries, offsets = model.query_vectors(self.user_inputs)
    scores = (tf.matmul(queries, model.candidate_vectors(self.movie_inputs), transpose_b=True)
              + offsets[:, tf.newaxis])
    lists = topk.rank(scores.numpy(), self.rated, topk.K)
    result = topk.evaluate_lists([ranked[ranked >= 0] for ranked in lists], self.relevant,
                                 self.num_movies, curve_ks=(topk.K,))
    return result.metrics[f"ndcg@{topk.K}"]


class EpochClock(tf.keras.callbacks.Callback):
  """Seconds from the start of `fit` to the end of each epoch; with `measure`, a
  quality measured after each epoch, whose own time is left out of the seconds."""

  def __init__(self, measure=None):
    super().__init__()
    self._measure = measure
    self.seconds, self.values = [], []

  def on_train_begin(self, logs=None):
    self._started, self._excluded = time.perf_counter(), 0.0

  def on_epoch_end(self, epoch, logs=None):
    now = time.perf_counter()
    self.seconds.append(now - self._started - self._excluded)
    if self._measure is not None:
      self.values.append(self._measure(self.model))
      self._excluded += time.perf_counter() - now


def _first_reaching(values, bar: float):
  """1-based epoch of the first value at or above `bar`, None if none is."""
  for epoch, value in enumerate(values, start=1):
    if value >= bar:
      return epoch
  return None


def train_base(model_name: str, hparams, span: Span, seed: int, work_dir: str) -> str:
  """The base model, trained and exported by the Trainer's own code; its export folder."""
  build, raw_keys = MODELS[model_name]
  export_dir = os.path.join(work_dir, f"base-{model_name}-{seed}", "model")
  fn_args = fn_args_utils.FnArgs(
      train_files=span.files["train"], eval_files=span.files["eval"],
      transform_output=span.transform_dir, serving_model_dir=export_dir,
      model_run_dir=os.path.join(work_dir, f"base-{model_name}-{seed}", "model_run"),
      custom_config={"hparams": hp.to_config(hparams), "seed": seed})
  run.run(fn_args, model_name, build, raw_keys)
  return export_dir


def train_new_span(model_name: str, hparams, span: Span, seed: int, work_dir: str,
                   base_dir=None) -> dict:
  """Trains on the new span, from scratch or from `base_dir`; the quality per epoch."""
  build, _ = MODELS[model_name]
  train, eval_examples = span.examples["train"], span.examples["eval"]
  ndcg = EvalNdcg(train, eval_examples, span.output) if model_name == "retrieval" else None
  model = training.build_seeded(build, span.output, hparams, seed)
  result = {}
  if base_dir:
    started = time.perf_counter()
    training.create_variables(model, train)
    summary = warm_start.warm_start(model, span.output, base_dir, model_name,
                                    shrink=hparams.warm_start_shrink)
    result["warm_start_seconds"] = round(time.perf_counter() - started, 2)
    result["carried"] = {"tables": len(summary.tables), "rows": summary.rows_carried,
                         "new_ids": summary.ids_new, "copied": len(summary.copied),
                         "left_fresh": summary.left_fresh}
    result["start"] = ndcg(model) if ndcg else eval_auc(model, eval_examples)
  clock = EpochClock(ndcg)
  log_dir = tempfile.mkdtemp(dir=work_dir)
  history = training.train(model, model_name, hparams, train, eval_examples, log_dir, seed,
                           callbacks=[clock])
  per_epoch = clock.values if ndcg else history["val_auc"]
  # The model training ends with: early stopping restores the best epoch's weights.
  final = int(np.argmax(per_epoch)) if hparams.early_stopping_patience else len(per_epoch) - 1
  result.update({
      "epochs_run": len(per_epoch),
      "per_epoch": list(per_epoch),
      "seconds": [round(s, 2) for s in clock.seconds],
      "final": per_epoch[final],
      "final_epoch": final + 1,
  })
  return result


def compare(cold: dict, warm: dict) -> dict:
  """Epochs and seconds each needs to reach the cold start's final quality (the
  bar); and, for the head start, the cold start's epochs to the warm start's best."""
  bar = cold["final"]
  cold_epochs = _first_reaching(cold["per_epoch"], bar)
  if warm["start"] >= bar:
    warm_epochs = 0
  else:
    warm_epochs = _first_reaching(warm["per_epoch"], bar)
  warm_seconds = None
  if warm_epochs is not None:
    warm_seconds = warm["warm_start_seconds"] + (
        warm["seconds"][warm_epochs - 1] if warm_epochs else 0.0)
  warm_best = max([warm["start"], *warm["per_epoch"]])
  return {
      "bar": round(bar, 4),
      "cold_epochs_to_bar": cold_epochs,
      "cold_seconds_to_bar": cold["seconds"][cold_epochs - 1] if cold_epochs else None,
      "warm_epochs_to_bar": warm_epochs,
      "warm_seconds_to_bar": None if warm_seconds is None else round(warm_seconds, 2),
      # The target: the cold start's quality in at most half its epochs.
      "at_most_half_the_epochs": (warm_epochs is not None and cold_epochs is not None
                                  and warm_epochs <= cold_epochs / 2),
      "warm_final_minus_bar": round(warm["final"] - bar, 4),
      "warm_best": round(warm_best, 4),
      "warm_best_minus_bar": round(warm_best - bar, 4),
      # The head start: what the cold start needs to match the warm start's first epoch.
      "warm_first_epoch": round(warm["per_epoch"][0], 4),
      "cold_epochs_to_warm_first_epoch": _first_reaching(cold["per_epoch"],
                                                         warm["per_epoch"][0]),
      "cold_epochs_to_warm_best": _first_reaching(cold["per_epoch"], warm_best),
  }


def _rounded(run_result: dict) -> dict:
  """A cold or warm run's numbers as the report shows them (4 digits)."""
  shown = dict(run_result)
  for key in ("start", "final"):
    if key in shown:
      shown[key] = round(shown[key], 4)
  shown["per_epoch"] = [round(v, 4) for v in shown["per_epoch"]]
  return shown


def summarize(results) -> dict:
  """Per model, over the seeds: how often the target was met, and by how much the
  warm start's best fell short of (or passed) the bar."""
  summary = {}
  for model_name in dict.fromkeys(r["model"] for r in results):
    runs = [r for r in results if r["model"] == model_name]
    summary[model_name] = {
        "seeds": len(runs),
        "at_most_half_the_epochs": sum(r["at_most_half_the_epochs"] for r in runs),
        "warm_reached_bar": sum(r["warm_epochs_to_bar"] is not None for r in runs),
        "bar_mean": round(float(np.mean([r["bar"] for r in runs])), 4),
        "warm_final_minus_bar_mean": round(float(np.mean(
            [r["warm_final_minus_bar"] for r in runs])), 4),
        "warm_best_minus_bar_mean": round(float(np.mean(
            [r["warm_best_minus_bar"] for r in runs])), 4),
        "cold_epochs_to_bar": [r["cold_epochs_to_bar"] for r in runs],
        "warm_epochs_to_bar": [r["warm_epochs_to_bar"] for r in runs],
        "cold_epochs_run": [r["cold"]["epochs_run"] for r in runs],
        "warm_epochs_run": [r["warm"]["epochs_run"] for r in runs],
        "cold_epochs_to_warm_first_epoch": [r["cold_epochs_to_warm_first_epoch"]
                                            for r in runs],
        "warm_start_seconds_mean": round(float(np.mean(
            [r["warm"]["warm_start_seconds"] for r in runs])), 2),
    }
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=os.path.normpath(DEFAULT_DATA),
                      help="the ml-100k folder (u.data, u.user, u.item)")
  parser.add_argument("--weeks", type=float, default=4.0,
                      help="length of the new span: T2 - T1 (default 4)")
  parser.add_argument("--split-seed", type=int, default=SPLIT_SEED,
                      help="the seed ExampleGen's hash split uses (default: the pipeline's)")
  parser.add_argument("--models", default="cf,deepfm,retrieval")
  parser.add_argument("--seeds", default="42", help="comma-separated training seeds")
  parser.add_argument("--warm-epochs-as-cold", action="store_true",
                      help="train the warm start for the cold start's epochs, not the "
                           "hyperparameters' warm_start_epochs (to see the whole curve)")
  parser.add_argument("--warm-set", action="append", default=[], metavar="MODEL.NAME=VALUE",
                      help="as recsys's --set, for the warm start only (the cold start keeps "
                           "the preset), e.g. cf.learning_rate=2e-3, or cf.warm_start_shrink=1 "
                           "to carry the base's values as they are; repeatable")
  parser.add_argument("--output", default="bench/results/warm_start.json")
  args = parser.parse_args()
  if not os.path.isdir(args.data_dir):
    sys.exit(f"no MovieLens-100K at {args.data_dir} (--data-dir)")
  seeds = [int(seed) for seed in args.seeds.split(",")]
  warm_overrides = cli.parse_overrides(args.warm_set)
  try:  # a typo stops the bench before it trains
    hp.check_overrides(warm_overrides)
  except ValueError as error:
    sys.exit(f"--warm-set: {error}")
  started = time.perf_counter()
  results = []
  with tempfile.TemporaryDirectory(prefix="warm-start-bench-") as work_dir:
    base, new, facts = read_spans(args.data_dir, args.weeks, args.split_seed, work_dir)
    print(json.dumps(facts), flush=True)
    for model_name in args.models.split(","):
      hparams = hp.preset(model_name, "best")  # ml-100k: no large-data schedule
      for seed in seeds:
        base_dir = train_base(model_name, hparams, base, seed, work_dir)
        cold = train_new_span(model_name, hparams, new, seed, work_dir)
        warm_hparams = hparams if args.warm_epochs_as_cold else hp.for_warm_start(hparams)
        warm_hparams = dataclasses.replace(warm_hparams, **warm_overrides.get(model_name, {}))
        warm = train_new_span(model_name, warm_hparams, new, seed, work_dir, base_dir)
        result = {"model": model_name, "seed": seed,
                  "warm_start_shrink": warm_hparams.warm_start_shrink,
                  "warm_overrides": warm_overrides.get(model_name, {}),
                  "measure": "eval ndcg@10" if model_name == "retrieval" else "eval auc",
                  **compare(cold, warm), "cold": _rounded(cold), "warm": _rounded(warm)}
        print(json.dumps(result), flush=True)
        results.append(result)
  report = {"data_dir": os.path.abspath(args.data_dir), "seeds": seeds,
            "warm_epochs_as_cold": args.warm_epochs_as_cold, **facts,
            "summary": summarize(results), "results": results,
            "seconds": round(time.perf_counter() - started)}
  print(json.dumps(report["summary"]), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
