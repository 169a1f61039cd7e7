"""The same pipeline through two Beam engines: the DirectRunner and the local Flink cluster.

Runs `recsys run` from scratch on `make bench`'s MovieLens-1M-shaped release twice,
once on the DirectRunner (its defaults for 1M ratings: one in-process worker) and
once with `--beam-runner FlinkRunner` on the cluster `recsys cluster up` starts (a
JobManager, two TaskManagers, Beam's job server; started here if it is not up, and
stopped again afterwards), and writes side by side:
- wall time per component (ML Metadata) and of the whole run;
- peak resident memory of the run's process tree and, on Flink, of the cluster's
  (its JVMs and the SDK worker processes, with the warm worker server they fork
  from), sampled every 0.2 s;
- each like model's test AUC (training is not a Beam step; the data are the same).

  .venv/bin/python bench/engines.py [--work-dir runs/bench-engines] [--output FILE]
"""
import argparse
import datetime
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import pipeline_1m

from engines import flink

ENGINES = ("DirectRunner", "FlinkRunner")


def run_on(engine: str, data_dir: str, work_dir: str, cluster: flink.FlinkCluster) -> dict:
  output_dir = os.path.join(work_dir, engine)
  args = ["--beam-runner", engine]
  if engine == "DirectRunner":
    result = pipeline_1m.run_pipeline(data_dir, output_dir, args)
  else:
    state = cluster.state()
    # The SDK workers are the TaskManagers' children, or the warm worker server's.
    memory = pipeline_1m.TreeMemory(
        state["job_server_pid"], *cluster.taskmanager_pids(),
        *cluster._pids("standalonesession"),  # pylint: disable=protected-access
        *filter(None, [state.get("warm_workers_pid")]))
    try:
      result = pipeline_1m.run_pipeline(data_dir, output_dir, args)
    finally:
      memory.stop()
    result["cluster_peak_memory_gb"] = round(memory.peak_bytes / 2**30, 2)
    result["flink_jobs"] = len(cluster.rest("/jobs/overview")["jobs"])
  collected = pipeline_1m.collect(output_dir)
  result["components"] = collected["components"]
  result["test_auc"] = {name: model["test_auc"] for name, model in collected["models"].items()
                        if "test_auc" in model}
  result["split_counts"] = collected["split_counts"]
  return result


def table(results: dict) -> str:
  runs = results["engines"]
  names = list(runs[ENGINES[0]]["components"])
  lines = [f"{'component':<26} " + " ".join(f"{engine:>13}" for engine in ENGINES)]
  for name in names:
    lines.append(f"{name:<26} " + " ".join(
        f"{runs[engine]['components'].get(name, float('nan')):>13.1f}" for engine in ENGINES))
  lines.append(f"{'whole run (wall)':<26} " + " ".join(
      f"{runs[engine]['wall_seconds']:>13.1f}" for engine in ENGINES))
  lines.append(f"{'peak memory, run (GB)':<26} " + " ".join(
      f"{runs[engine]['peak_memory_gb']:>13.2f}" for engine in ENGINES))
  lines.append(f"{'peak memory, cluster (GB)':<26} {'':>13} "
               f"{runs['FlinkRunner']['cluster_peak_memory_gb']:>13.2f}")
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work-dir", default=os.path.join(REPO, "runs", "bench-engines"))
  parser.add_argument("--data-dir", default=os.path.join(REPO, "runs", "bench-1m", "data",
                                                         "ml-1m"),
                      help="where `make bench`'s release is, or is written")
  parser.add_argument("--output", default=os.path.join(REPO, "bench", "results",
                                                       "engines_1m.json"))
  parser.add_argument("--engines", default=",".join(ENGINES))
  args = parser.parse_args()
  data_dir = pipeline_1m.write_data(args.data_dir, seed=0)
  cluster = flink.FlinkCluster()
  started_here = False
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": pipeline_1m.machine(),
             "data": {"ratings": pipeline_1m.NUM_RATINGS, "users": pipeline_1m.NUM_USERS},
             "flink": {"version": flink.FLINK_VERSION,
                       "beam_job_server": flink.BEAM_JOB_SERVER_VERSION,
                       "settings": vars(cluster.settings)},
             "engines": {}}
  try:
    for engine in args.engines.split(","):
      if engine == "FlinkRunner" and not cluster.is_up():
        cluster.up()
        started_here = True
      print(f"\n== {engine}", flush=True)
      results["engines"][engine] = run_on(engine, data_dir, args.work_dir, cluster)
  finally:
    if started_here:
      cluster.down()
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  if set(ENGINES) <= set(results["engines"]):
    print(f"\n{table(results)}")
  print(f"\nwrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
