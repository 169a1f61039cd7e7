"""Training speed and quality of both models on a finished run's examples and Transform graph.

Trains each model (its `seed` or `best` preset) exactly as its Trainer does and
writes JSON: training examples per second (epochs 2..N, training only, no
validation; epoch 1 holds tf.function tracing), epochs run, eval and test AUC.
With several `--seeds` it trains once per seed (same splits, new initialisation
and batch order) and adds each model's mean, lowest and highest AUC: one seed's
AUC on ml-100k is a draw from a spread about 0.005 wide.

  .venv/bin/python bench/train_speed.py runs/movielens-100k --preset seed \
      --seeds 42,1,2,3,4 --output bench/results/train_speed_seed.json

Compare with DeepCTR's DeepFM at the same batch size: bench/deepctr_speed.py.
"""
import argparse
import glob
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

import numpy as np
import pandas as pd
import tensorflow_transform as tft

from models import cf
from models import data
from models import deepfm
from models import features
from models import hparams as hp
from models import runtime
from models import training

_BUILDERS = {"cf": cf.build, "deepfm": deepfm.build}


def _latest(pattern: str) -> str:
  found = sorted(glob.glob(pattern), key=lambda p: int(os.path.basename(p)))
  if not found:
    sys.exit(f"nothing matches {pattern}: run the pipeline first")
  return found[-1]


def load_split(examples_dir: str, split: str, tf_transform_output) -> dict:
  return data.load_examples([os.path.join(examples_dir, f"Split-{split}", "*")],
                                tf_transform_output)


def exact_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
  """ROC AUC from ranks (ties averaged): no threshold buckets, unlike TFMA's."""
  labels = labels.astype(bool)
  positives, negatives = labels.sum(), (~labels).sum()
  ranks = pd.Series(probabilities).rank(method="average").to_numpy()
  return float((ranks[labels].sum() - positives * (positives + 1) / 2)
               / (positives * negatives))


def measure(model_name: str, hparams, splits: dict, tf_transform_output, seed: int) -> dict:
  model = training.build_seeded(_BUILDERS[model_name], tf_transform_output, hparams, seed)
  started = time.perf_counter()
  with tempfile.TemporaryDirectory() as log_dir:
    history = training.train(model, model_name, hparams, splits["train"], splits["eval"],
                             log_dir, seed)
  fit_seconds = time.perf_counter() - started
  result = {"model": model_name, "seed": seed, "hparams": hp.to_config(hparams),
            "epochs": len(history["auc"]), "fit_seconds": round(fit_seconds, 1),
            "train_examples_per_epoch": history["train_examples"],
            "train_examples_per_second": round(float(np.median(
                history["train_examples_per_second"][1:] or [0]))),
            "batch_size": hparams.batch_size,
            "bfloat16": runtime.uses_bfloat16(hparams)}
  for split in ("eval", "test"):
    examples = splits[split]
    probabilities = model.predict(data.make_dataset(examples, 65_536, False, seed),
                                  verbose=0).ravel()
    result[f"{split}_auc"] = round(exact_auc(examples[features.LABEL], probabilities), 4)
  return result


def summarize(runs: list) -> dict:
  """One model's runs over several seeds: AUC mean and range, median speed."""
  summary = {"model": runs[0]["model"], "seeds": [r["seed"] for r in runs]}
  for split in ("eval", "test"):
    values = [r[f"{split}_auc"] for r in runs]
    summary[f"{split}_auc"] = {"mean": round(float(np.mean(values)), 4),
                               "min": min(values), "max": max(values)}
  summary["train_examples_per_second"] = round(float(np.median(
      [r["train_examples_per_second"] for r in runs])))
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dir", help="output folder of a finished `recsys run`")
  parser.add_argument("--models", default="cf,deepfm")
  parser.add_argument("--preset", default="best", choices=["seed", "best"])
  parser.add_argument("--set", default="{}", help='JSON overrides, e.g. {"epochs": 3}')
  parser.add_argument("--seeds", default="42",
                      help="comma-separated training seeds, e.g. 42,1,2,3,4 (default: "
                           "the pipeline's 42)")
  parser.add_argument("--output", help="JSON file to write (default: print only)")
  args = parser.parse_args()
  tfx_dir = os.path.join(args.run_dir, "tfx")
  tf_transform_output = tft.TFTransformOutput(
      _latest(f"{tfx_dir}/Transform/transform_graph/*"))
  examples_dir = _latest(f"{tfx_dir}/MovieLensExampleGen/examples/*")
  splits = {s: load_split(examples_dir, s, tf_transform_output) for s in features.SPLIT_NAMES}
  num_ratings = sum(len(split[features.LABEL]) for split in splits.values())
  seeds = [int(seed) for seed in args.seeds.split(",")]
  results, summaries = [], []
  for model_name in args.models.split(","):
    preset = hp.preset(model_name, args.preset, num_ratings)
    hparams = hp.from_config(model_name, {**hp.to_config(preset), **json.loads(args.set)})
    runs = []
    for seed in seeds:
      runs.append(measure(model_name, hparams, splits, tf_transform_output, seed))
      print(json.dumps(runs[-1]), flush=True)
    results += runs
    summaries.append(summarize(runs))
  if len(seeds) > 1:
    for summary in summaries:
      print(json.dumps(summary), flush=True)
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump({"run_dir": os.path.abspath(args.run_dir), "preset": args.preset,
                 "seeds": seeds, "results": results, "summary": summaries}, f, indent=2)


if __name__ == "__main__":
  main()
