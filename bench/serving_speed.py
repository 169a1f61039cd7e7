"""In-process serving speed of the pushed models, as TF Serving would run them.

Loads the latest pushed version of each model from a run's serving folder and
measures, on this machine:
- predictions per second of `predict` (ids in, like probability out) for batches
  of 1, 100 and 10,000 (random known users and movies);
- p50 and p99 latency of `recommend(k=10)` for one user over all movies (the
  recommender: retrieval over all movies, then DeepFM on the candidates).
Writes JSON (default bench/results/serving_speed.json) and prints a table.

  .venv/bin/python bench/serving_speed.py runs/movielens-1m
"""
import argparse
import functools
import json
import os
import sys
import time
import warnings

# TFRS and our Keras code need Keras 2: set before TensorFlow loads. TensorFlow's C++
# logs and the libraries' FutureWarnings say nothing about the measurement.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np
import tensorflow as tf

from components import pusher
from serving import contract

BATCH_SIZES = (1, 100, 10_000)
TARGETS = {"recommend_p50_ms": 10.0, "cf_batch_10000_predictions_per_second": 200_000}


def _latest_version(model_dir: str) -> str:
  versions = pusher.pushed_versions(model_dir)
  if not versions:
    sys.exit(f"no pushed version in {model_dir}: run the pipeline first")
  return os.path.join(model_dir, versions[-1])


def _vocabulary(model_dir: str, name: str) -> np.ndarray:
  """Ids the model knows, from the Transform vocabulary saved in its assets."""
  path = os.path.join(model_dir, "assets", name)
  with open(path, "rb") as f:
    return np.array([line.rstrip(b"\n") for line in f if line.strip()], dtype=object)


def _timed(function, repeats: int, min_seconds: float = 1.0):
  function()  # warm up: tracing and first-call allocation
  times = []
  started = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - started < min_seconds:
    begin = time.perf_counter()
    function()
    times.append(time.perf_counter() - begin)
  return np.array(times)


def measure(model_dir: str, seed: int = 0) -> dict:
  loaded = tf.saved_model.load(model_dir)
  predict = loaded.signatures[contract.PREDICT]
  recommend = loaded.signatures[contract.RECOMMEND]
  users = _vocabulary(model_dir, "user_id")
  movies = _vocabulary(model_dir, "movie_id")
  rng = np.random.default_rng(seed)
  result = {"model_dir": model_dir, "users": len(users), "movies": len(movies)}
  for batch in BATCH_SIZES:
    user_ids = tf.constant(rng.choice(users, batch).astype(bytes))
    movie_ids = tf.constant(rng.choice(movies, batch).astype(bytes))
    times = _timed(functools.partial(predict, user_id=user_ids, movie_id=movie_ids), repeats=20)
    result[f"predict_batch_{batch}_predictions_per_second"] = round(batch / np.median(times))
    result[f"predict_batch_{batch}_p50_ms"] = round(1000 * float(np.median(times)), 3)
  latencies = []
  k = tf.constant(10)
  recommend(user_id=tf.constant([users[0]]), k=k)  # warm up
  for user in rng.choice(users, 300):
    begin = time.perf_counter()
    recommend(user_id=tf.constant([user]), k=k)
    latencies.append(time.perf_counter() - begin)
  result["recommend_k10_p50_ms"] = round(1000 * float(np.percentile(latencies, 50)), 3)
  result["recommend_k10_p99_ms"] = round(1000 * float(np.percentile(latencies, 99)), 3)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dir", help="output folder of a finished `recsys run`")
  parser.add_argument("--serving-dir", help="default <run_dir>/serving")
  parser.add_argument("--output", default="bench/results/serving_speed.json")
  args = parser.parse_args()
  serving_dir = args.serving_dir or os.path.join(args.run_dir, "serving")
  results = {"cpu_count": os.cpu_count(), "targets": TARGETS, "models": {}}
  for model in ("recommender", "cf", "deepfm"):
    model_dir = os.path.join(serving_dir, model)
    if not os.path.isdir(model_dir):
      print(f"skipping {model}: nothing pushed in {model_dir}")
      continue
    results["models"][model] = measure(_latest_version(model_dir))
  os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"{'model':<12}" + "".join(f"{f'predict/s b={b}':>18}" for b in BATCH_SIZES)
        + f"{'recommend p50 ms':>18}{'p99 ms':>9}")
  for model, r in results["models"].items():
    print(f"{model:<12}" + "".join(
        f"{r[f'predict_batch_{b}_predictions_per_second']:>18,}" for b in BATCH_SIZES)
          + f"{r['recommend_k10_p50_ms']:>18.2f}{r['recommend_k10_p99_ms']:>9.2f}")
  print(f"written to {args.output}")


if __name__ == "__main__":
  main()
