"""Retrieval over a catalogue of 1,000,000 movies: the BruteForce index as served.

The served recommender's first stage ranks the whole catalogue through a TFRS
`BruteForce` index inside the SavedModel (export/recommend.py). MovieLens has
~4,000 movies; this measures what the same index costs at 1,000,000. It builds a
tf.Module as the Recommender does (a user-vector table, a BruteForce index over
every movie's vector, a `candidates(user_id, k)` function), saves it, loads it
back as TF Serving would, and measures:
- p50 / p99 latency of one user's top 200 candidates (what the recommender
  retrieves) and top 10, over 300 random users;
- recall@100 of the index's top 100 against exhaustive numpy scoring (BruteForce
  is exact: this checks the exported index returns what full scoring does);
- with `scann` importable (1.3.2 matches TF 2.16; not in the lock, since stock TF
  Serving has no ScaNN ops): the same for a TFRS ScaNN index in process, and its
  speed-up. Without it, the JSON says so; `make bench-catalogue` installs it
  into a throwaway folder for the measurement.
The vectors are random, for BruteForce of the served retrieval model's width (its
towers x embedding_dim: 3 x 64), of the same towers at the width set for large
catalogues (LARGE_CATALOGUE_RETRIEVAL in models/hparams.py: 3 x 32) and of one pair
of towers (64); for ScaNN of the served width. Latency does not depend on what the vectors mean.

  .venv/bin/python bench/catalogue_1m.py --output bench/results/catalogue_1m.json
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top

from models import hparams as hp  # pylint: disable=g-import-not-at-top

NUM_MOVIES = 1_000_000
NUM_USERS = 6_040
_SERVED = hp.preset("retrieval", "best")
SERVED_DIMENSIONS = _SERVED.towers * _SERVED.embedding_dim
# The same ensemble, as configured for a large catalogue.
LARGE_CATALOGUE_DIMENSIONS = _SERVED.towers * hp.LARGE_CATALOGUE_RETRIEVAL["embedding_dim"]
CANDIDATES = 200
TARGETS = {"candidates_p50_ms": 25.0}


class CatalogueIndex(tf.Module):
  """User vectors and a top-k index over every movie, as the exported Recommender."""

  def __init__(self, user_vectors: np.ndarray, movie_vectors: np.ndarray, index):
    super().__init__()
    self.user_vectors = tf.Variable(user_vectors, trainable=False)
    self.index = index
    self.index.index(tf.constant(movie_vectors),
                     identifiers=tf.range(len(movie_vectors), dtype=tf.int64))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32)])
  def candidates(self, user_index, k):
    scores, movies = self.index(tf.gather(self.user_vectors, user_index), k=k)
    return {"movie_indices": movies, "scores": scores}


def _latencies(function, users, k) -> np.ndarray:
  function(tf.constant(users[:1], tf.int64), tf.constant(k))  # warm up
  times = []
  for user in users:
    started = time.perf_counter()
    function(tf.constant([user], tf.int64), tf.constant(k))
    times.append(time.perf_counter() - started)
  return np.array(times) * 1000


def _recall_at_100(function, users, user_vectors, movie_vectors) -> float:
  found = function(tf.constant(users), tf.constant(100))["movie_indices"].numpy()
  exact = np.argsort(-(user_vectors[users] @ movie_vectors.T), axis=1)[:, :100]
  return float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found, exact)]))


def measure(index_name: str, index, user_vectors, movie_vectors, users) -> dict:
  started = time.perf_counter()
  module = CatalogueIndex(user_vectors, movie_vectors, index)
  folder = tempfile.mkdtemp(prefix=f"catalogue-{index_name}-")
  options = (tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
             if index_name.startswith("scann") else None)
  tf.saved_model.save(module, folder, options=options)
  loaded = tf.saved_model.load(folder)
  built = time.perf_counter() - started
  result = {"index": index_name, "build_save_load_seconds": round(built, 1)}
  for k in (CANDIDATES, 10):
    times = _latencies(loaded.candidates, users, k)
    result[f"top{k}_p50_ms"] = round(float(np.percentile(times, 50)), 2)
    result[f"top{k}_p99_ms"] = round(float(np.percentile(times, 99)), 2)
  result["recall@100_vs_exhaustive"] = round(
      _recall_at_100(loaded.candidates, users[:100], user_vectors, movie_vectors), 4)
  print(f"{index_name}: top {CANDIDATES} p50 {result[f'top{CANDIDATES}_p50_ms']} ms, "
        f"top 10 p50 {result['top10_p50_ms']} ms, recall@100 "
        f"{result['recall@100_vs_exhaustive']}", flush=True)
  return result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--movies", type=int, default=NUM_MOVIES)
  parser.add_argument("--output", default="bench/results/catalogue_1m.json")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  users = rng.choice(NUM_USERS, 300, replace=False).astype(np.int64)
  results = {"movies": args.movies, "served_dimensions": SERVED_DIMENSIONS,
             "cpu_count": os.cpu_count(), "targets": TARGETS, "indexes": {}}
  vectors = {}
  results["large_catalogue_dimensions"] = LARGE_CATALOGUE_DIMENSIONS
  for dimensions in sorted({SERVED_DIMENSIONS, LARGE_CATALOGUE_DIMENSIONS,
                            _SERVED.embedding_dim}, reverse=True):
    user_vectors = rng.normal(0, 1, (NUM_USERS, dimensions)).astype(np.float32)
    movie_vectors = rng.normal(0, 1, (args.movies, dimensions)).astype(np.float32)
    vectors[dimensions] = user_vectors, movie_vectors
    results["indexes"][f"brute_force_{dimensions}d"] = measure(
        f"brute_force_{dimensions}d",
        tfrs.layers.factorized_top_k.BruteForce(k=CANDIDATES), user_vectors,
        movie_vectors, users)
  served = results["indexes"][f"brute_force_{SERVED_DIMENSIONS}d"]
  try:
    import scann  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    results["indexes"]["scann"] = {"skipped": "the scann package is not installed "
                                   "(pip install scann==1.3.2 to measure it)"}
  else:
    # 1,000 partitions of ~1,000 movies, 100 searched, 1,000 rescored exactly.
    results["indexes"][f"scann_{SERVED_DIMENSIONS}d"] = measure(
        f"scann_{SERVED_DIMENSIONS}d", tfrs.layers.factorized_top_k.ScaNN(
            k=CANDIDATES, num_leaves=1000, num_leaves_to_search=100,
            num_reordering_candidates=1000),
        *vectors[SERVED_DIMENSIONS], users)
    results["scann_speedup_top200"] = round(
        served[f"top{CANDIDATES}_p50_ms"]
        / results["indexes"][f"scann_{SERVED_DIMENSIONS}d"][f"top{CANDIDATES}_p50_ms"], 1)
  large = results["indexes"][f"brute_force_{LARGE_CATALOGUE_DIMENSIONS}d"]
  results["targets_met"] = {
      f"candidates p50 under {TARGETS['candidates_p50_ms']} ms at the served width "
      f"({SERVED_DIMENSIONS})": served[f"top{CANDIDATES}_p50_ms"] < TARGETS["candidates_p50_ms"],
      f"candidates p50 under {TARGETS['candidates_p50_ms']} ms at the large-catalogue "
      f"width ({LARGE_CATALOGUE_DIMENSIONS})":
          large[f"top{CANDIDATES}_p50_ms"] < TARGETS["candidates_p50_ms"]}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  print(f"written to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
