"""The whole pipeline at MovieLens-1M scale: time per component, memory, speed, AUC.

Writes a MovieLens-1M-shaped release (6,040 users, 3,706 rated movies, 1,000,209
ratings over the real timestamp range; the real users.dat and movies.dat when
they are in ../shared/data/movielens/ml-1m, invented ones otherwise) whose likes
come from a planted latent-factor model, runs `recsys run` on it from scratch in
a child process, and writes bench/results.json:
- wall time per component (from ML Metadata) and of the whole run;
- peak memory of the run's process tree (resident set, sampled every 0.2 s);
- training examples per second of each like model and its test AUC, and every
  system's NDCG@10 (the data plant no "who watches what": these measure speed);
- files the run left behind in the temporary folder.

  .venv/bin/python bench/pipeline_1m.py [--work-dir runs/bench-1m] [--label after]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from models import features
from testing import synthetic

SHAPE = synthetic.SHAPES["1m"]
REAL_1M = os.path.join(REPO, "..", "shared", "data", "movielens", "ml-1m")
TARGETS = {"total_seconds": 360, "component_seconds": 90, "peak_memory_gb": 6.0}


def write_data(folder: str, seed: int) -> str:
  """The synthetic release, written once per seed and reused by later runs."""
  marker = os.path.join(folder, f".complete-seed-{seed}")
  if os.path.exists(marker):
    return folder
  tables_from = REAL_1M if os.path.exists(os.path.join(REAL_1M, "movies.dat")) else None
  started = time.perf_counter()
  release = synthetic.write_release(
      folder, "1m", seed=seed, tables_from=tables_from, latent_dim=16, **SHAPE)
  print(f"wrote {release.num_ratings:,} ratings ({release.num_likes / release.num_ratings:.0%} "
        f"likes) for {release.num_users:,} users and "
        f"{'the real' if tables_from else 'synthetic'} movies in "
        f"{time.perf_counter() - started:.0f} s", flush=True)
  open(marker, "w").close()
  return folder


class TreeMemory:
  """Peak resident memory of processes and all their descendants, together."""

  def __init__(self, *pids: int, interval: float = 0.2):
    self._roots = [psutil.Process(pid) for pid in pids]
    self._interval = interval
    self.peak_bytes = 0
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()

  def _sample(self):
    while not self._done.is_set():
      total = 0
      for root in self._roots:
        try:
          for process in [root] + root.children(recursive=True):
            try:
              total += process.memory_info().rss
            except psutil.Error:
              pass
        except psutil.Error:  # that tree is gone
          pass
      self.peak_bytes = max(self.peak_bytes, total)
      self._done.wait(self._interval)

  def stop(self):
    self._done.set()
    self._thread.join()


def run_pipeline(data_dir: str, output_dir: str, extra_args) -> dict:
  """`recsys run` from scratch in a child process; its wall time and peak memory."""
  subprocess.run(["rm", "-rf", output_dir], check=True)
  command = [sys.executable, "-m", "pipeline.cli", "run", "--dataset", "1m",
             "--data-dir", data_dir, "--output-dir", output_dir, *extra_args]
  # A temporary folder of the run's own: what is left in it is the run's, whatever
  # else the machine does meanwhile.
  private_tmp = tempfile.mkdtemp(prefix="bench-1m-tmp-")
  env = dict(os.environ, TMPDIR=private_tmp,
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  started = time.perf_counter()
  child = subprocess.Popen(command, cwd=REPO, env=env)
  memory = TreeMemory(child.pid)
  returncode = child.wait()
  memory.stop()
  seconds = time.perf_counter() - started
  if returncode != 0:
    sys.exit(f"the pipeline failed (exit {returncode}); see {output_dir}/logs")
  left = sorted(os.listdir(private_tmp))
  if not left:
    os.rmdir(private_tmp)  # kept, with what is in it, when the run left files
  return {"wall_seconds": round(seconds, 1),
          "peak_memory_gb": round(memory.peak_bytes / 2**30, 2),
          "temporary_files_left": left}


def collect(output_dir: str) -> dict:
  """Per-component times (ML Metadata), and each model's speed and AUC."""
  from models import history as training_history
  from pipeline import configs
  from pipeline import run_state
  from pipeline import run_store
  config = configs.PipelineConfig(dataset="1m", output_dir=output_dir)
  summary = run_state.summarize_run(config)
  with open(os.path.join(output_dir, "report", "metrics.json")) as f:
    report = json.load(f)
  store = run_store.RunStore(output_dir)
  models = {}
  for name, metrics in report["models"].items():
    model_run = store.latest_artifact("ModelRun", f"Trainer.{name}")
    history = training_history.read(model_run.uri)
    speeds = history["train_examples_per_second"]
    models[name] = {
        "test_auc": round(metrics["auc"], 4),
        "blessed": metrics["blessed"],
        "epochs": len(speeds),
        "train_examples": history["train_examples"],
        # The first epoch includes tracing; the median of the rest is the steady speed.
        "train_examples_per_second": round(float(np.median(speeds[1:] or speeds))),
    }
  model_run = store.latest_artifact("ModelRun", "Trainer.retrieval")
  if model_run is not None:
    speeds = training_history.read(model_run.uri)["train_examples_per_second"]
    models["retrieval"] = {"epochs": len(speeds), "train_examples_per_second": round(
        float(np.median(speeds[1:] or speeds)))}
  ranking = {name: round(system["metrics"]["ndcg@10"], 4)
             for name, system in (report.get("ranking") or {}).get("systems", {}).items()}
  return {"components": {c.node_id: round(c.seconds, 1) for c in summary.components},
          "split_counts": summary.split_counts, "models": models,
          "ndcg@10": ranking}


def check(results: dict) -> dict:
  slowest = max(results["components"].items(), key=lambda item: item[1])
  return {
      f"total under {TARGETS['total_seconds']} s":
          results["wall_seconds"] < TARGETS["total_seconds"],
      f"every component under {TARGETS['component_seconds']} s (slowest: {slowest[0]} "
      f"{slowest[1]} s)": slowest[1] < TARGETS["component_seconds"],
      f"peak memory under {TARGETS['peak_memory_gb']} GB":
          results["peak_memory_gb"] < TARGETS["peak_memory_gb"],
      "no temporary files left": not results["temporary_files_left"],
  }


def table(results: dict) -> str:
  lines = [f"{'component':<26} {'seconds':>8}"]
  lines += [f"{name:<26} {seconds:>8.1f}" for name, seconds in results["components"].items()]
  lines.append(f"{'whole run (wall)':<26} {results['wall_seconds']:>8.1f}")
  lines.append(f"peak memory {results['peak_memory_gb']} GB")
  for name, model in results["models"].items():
    auc = f"test AUC {model['test_auc']}, " if "test_auc" in model else ""
    lines.append(f"{name}: {auc}{model['epochs']} epochs at "
                 f"{model['train_examples_per_second']:,} examples/s")
  lines.append("NDCG@10: " + ", ".join(f"{n} {v}" for n, v in results["ndcg@10"].items()))
  lines += [f"[{'ok' if ok else 'MISSED'}] {target}" for target, ok in results["targets"].items()]
  return "\n".join(lines)


# Instruction sets that change TensorFlow's speed on a CPU severalfold: runs on
# machines that differ in them are not comparable.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> dict:
  """What a result was measured on: cores, memory, Python, the CPU and its flags."""
  cpu, flags = platform.processor(), set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          cpu = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
          "python": platform.python_version(), "cpu": cpu,
          "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work-dir", default=os.path.join(REPO, "runs", "bench-1m"))
  parser.add_argument("--output", default=os.path.join(REPO, "bench", "results.json"))
  parser.add_argument("--label", default="", help="what this measurement is, e.g. 'before'")
  parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic data")
  parser.add_argument("run_args", nargs="*", help="more `recsys run` flags, after --")
  args = parser.parse_args()
  data_dir = write_data(os.path.join(args.work_dir, "data", "ml-1m"), args.seed)
  output_dir = os.path.join(args.work_dir, "run")
  results = {"label": args.label,
             "date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": machine(),
             "data": {"users": SHAPE["num_users"], "rated_movies": SHAPE["rated_movies"],
                      "ratings": SHAPE["num_ratings"],
                      "like_min_rating": features.LIKE_MIN_RATING},
             "command": ["recsys", "run", "--dataset", "1m", "--data-dir", data_dir,
                         "--output-dir", output_dir, *args.run_args]}
  results.update(run_pipeline(data_dir, output_dir, args.run_args))
  results.update(collect(output_dir))
  results["targets"] = check(results)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  print(f"\n{table(results)}\n\nwrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
