"""Transform over a span run's window: TFX's executor against the pipeline's.

A span run's Transform reads its window as one Examples artifact per span. This
ingests a release once (ExampleGen's random split, as a full run does), deals its
examples out to `--artifacts` Examples artifacts, and times, in turns, `--repeats`
times each:

- TFX 1.16's Transform executor on the window (tf.Transform analyzes each artifact
  as a dataset of its own);
- the pipeline's (components/transform.py) on the window (one joined dataset);
- TFX's on the same examples in one artifact: what the window's reading costs over
  the analysis itself.

Each with the exec properties of the pipeline's Transform, Beam in this process.
Checks that the three write the same vocabulary files, and writes JSON.

  python bench/transform_window.py --artifacts 29 --output bench/results/transform_window.json
"""
import argparse
import datetime
import filecmp
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tfx.components.transform import executor as tfx_transform_executor  # pylint: disable=g-import-not-at-top

from common import progress  # pylint: disable=g-import-not-at-top
from components import transform  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top
from testing import examples as testing_examples  # pylint: disable=g-import-not-at-top

DEFAULT_DATA_DIR = os.environ.get(
    "MOVIELENS_REAL_DATA", os.path.join(os.path.dirname(REPO), "shared", "data",
                                        "movielens")) + "/ml-100k"


def _vocabularies(transform_graph: str) -> dict:
  assets = os.path.join(transform_graph, "transform_fn", "assets")
  return {name: os.path.join(assets, name) for name in sorted(os.listdir(assets))}


def _same_files(first: dict, second: dict) -> bool:
  return first.keys() == second.keys() and all(
      filecmp.cmp(first[name], second[name], shallow=False) for name in first)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                      help="a release in the MovieLens 100K layout")
  parser.add_argument("--artifacts", type=int, default=29,
                      help="Examples artifacts in the window (29: span 29 of a weekly replay)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--output", default=os.path.join(REPO, "bench", "results",
                                                       "transform_window.json"))
  args = parser.parse_args(argv)

  vocabularies = {}
  with tempfile.TemporaryDirectory(prefix="transform_window_") as work:
    whole = testing_examples.ingest(args.data_dir, os.path.join(work, "ingested"))
    window = testing_examples.dealt_out(whole, os.path.join(work, "window"), args.artifacts)
    cases = {"tfx_executor_on_the_window": (tfx_transform_executor.Executor, window),
             "pipeline_executor_on_the_window": (transform.Executor, window),
             "tfx_executor_on_one_artifact": (tfx_transform_executor.Executor, [whole])}
    seconds = {name: [] for name in cases}
    for repeat in range(args.repeats):
      for name, (executor_class, inputs) in cases.items():
        progress.report("bench", f"{name}, {repeat + 1} of {args.repeats}")
        started = time.monotonic()
        graph = testing_examples.run_transform(
            executor_class, inputs, os.path.join(work, f"{name}-{repeat}"))
        seconds[name].append(round(time.monotonic() - started, 1))
        progress.report("bench", f"{name}: {seconds[name][-1]} s")
        vocabularies.setdefault(name, _vocabularies(graph))
    reference = vocabularies["tfx_executor_on_one_artifact"]
    same_as_one_artifact = {name: _same_files(files, reference)
                            for name, files in vocabularies.items()}

  result = {
      "date": datetime.date.today().isoformat(),
      "data_dir": args.data_dir,
      "cores": configs.available_cores(),
      "artifacts": args.artifacts,
      "seconds": seconds,
      "median_seconds": {name: statistics.median(s) for name, s in seconds.items()},
      "same_vocabulary_files_as_one_artifact": same_as_one_artifact,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=1)
  for name, median in result["median_seconds"].items():
    print(f"{name:34} median {median:5.1f} s  {seconds[name]}")
  print(f"wrote {args.output}")
  return 0 if all(result["same_vocabulary_files_as_one_artifact"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
