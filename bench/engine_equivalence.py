"""Whether the local Flink cluster computes what the DirectRunner does, on real MovieLens.

Runs the pipeline's Beam steps (MovieLensExampleGen, StatisticsGen, Transform, and
Evaluator.cf judging one given trained CF model) once on each engine, from scratch,
and compares what they made (testing/equivalence.py): the (user, movie) pairs of each
split, every number of TFDV's statistics, the Transform vocabulary files byte for
byte, and the Evaluator's metrics to 1e-6. Writes the differences found (none, if
the engines agree), each step's seconds on each engine, and the Flink jobs with the
TaskManagers their subtasks ran on.

  .venv/bin/python bench/engine_equivalence.py --data-dir ../shared/data/movielens/ml-100k \
      --model runs/movielens-100k/tfx/Trainer.cf/model/ID
"""
import argparse
import datetime
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from engines import flink
from pipeline import configs
from pipeline import run_state
from pipeline import run_store
from testing import equivalence

ARTIFACTS = {"examples": ("Examples", "MovieLensExampleGen"),
             "statistics": ("ExampleStatistics", "StatisticsGen"),
             "transform": ("TransformGraph", "Transform"),
             "evaluation": ("ModelEvaluation", "Evaluator.cf")}


def run_beam_steps(engine: str, data_dir: str, dataset: str, output_dir: str,
                   model: str, cluster: flink.FlinkCluster) -> dict:
  from tfx.orchestration.local.local_dag_runner import LocalDagRunner
  shutil.rmtree(output_dir, ignore_errors=True)
  beam_args = (configs.beam_pipeline_args(num_ratings=100_000) if engine == "DirectRunner"
               else [f"--runner={engine}", *configs.setup_file_args(), *cluster.beam_args()])
  config = configs.PipelineConfig(dataset=dataset, data_dir=data_dir,
                                  output_dir=output_dir, beam_args=beam_args)
  jobs_before = {job["jid"] for job in cluster.rest("/jobs/overview")["jobs"]} \
      if engine != "DirectRunner" else set()
  LocalDagRunner().run(equivalence.beam_steps_pipeline(config, model))
  summary = run_state.summarize_run(config)
  store = run_store.RunStore(output_dir)
  result = {"seconds": {c.node_id: round(c.seconds, 1) for c in summary.components},
            "uris": {name: store.latest_artifact(*key).uri
                     for name, key in ARTIFACTS.items()}}
  if engine != "DirectRunner":
    jobs = sorted((job for job in cluster.rest("/jobs/overview")["jobs"]
                   if job["jid"] not in jobs_before), key=lambda job: job["start-time"])
    result["flink_jobs"] = [
        {"state": job["state"], "seconds": round(job["duration"] / 1000, 1),
         "tasks": job["tasks"]["total"],
         "taskmanagers": sorted({tm["taskmanager-id"]
                                 for vertex in cluster.rest(f"/jobs/{job['jid']}")["vertices"]
                                 for tm in cluster.rest(
                                     f"/jobs/{job['jid']}/vertices/{vertex['id']}/taskmanagers"
                                 )["taskmanagers"]})}
        for job in jobs]
  return result


def compare(direct: dict, on_flink: dict) -> dict:
  a, b = direct["uris"], on_flink["uris"]
  pairs = equivalence.example_pairs(b["examples"])
  return {
      "example_pairs": {"per_split": {split: len(p) for split, p in pairs.items()},
                        "differences": equivalence.compare_example_pairs(
                            equivalence.example_pairs(a["examples"]), pairs)},
      "statistics": equivalence.compare_statistics(
          equivalence.statistics(a["statistics"]), equivalence.statistics(b["statistics"])),
      "vocabularies": {"files": sorted(equivalence.vocabularies(b["transform"])),
                       "differences": equivalence.compare_vocabularies(
                           equivalence.vocabularies(a["transform"]),
                           equivalence.vocabularies(b["transform"]))},
      "evaluator_metrics": {
          "direct": equivalence.overall_metrics(a["evaluation"]),
          "flink": equivalence.overall_metrics(b["evaluation"]),
          "differences": equivalence.compare_metrics(
              equivalence.overall_metrics(a["evaluation"]),
              equivalence.overall_metrics(b["evaluation"]), abs_tol=1e-6)},
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", required=True, help="the MovieLens release's folder")
  parser.add_argument("--dataset", default="100k", choices=["100k", "1m"])
  parser.add_argument("--model", required=True, help="a trained CF model (a Trainer.cf "
                      "model artifact's folder) both Evaluators judge")
  parser.add_argument("--work-dir", default=os.path.join(REPO, "runs", "bench-equivalence"))
  parser.add_argument("--output", default=os.path.join(REPO, "bench", "results",
                                                       "engine_equivalence.json"))
  args = parser.parse_args()
  cluster = flink.FlinkCluster()
  started_here = not cluster.is_up()
  if started_here:
    cluster.up()
  try:
    runs = {engine: run_beam_steps(engine, os.path.abspath(args.data_dir), args.dataset,
                                   os.path.join(args.work_dir, engine),
                                   os.path.abspath(args.model), cluster)
            for engine in ("DirectRunner", "FlinkRunner")}
  finally:
    if started_here:
      cluster.down()
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "data_dir": os.path.abspath(args.data_dir), "model": os.path.abspath(args.model),
             "seconds": {engine: run["seconds"] for engine, run in runs.items()},
             "flink_jobs": runs["FlinkRunner"]["flink_jobs"],
             "comparison": compare(runs["DirectRunner"], runs["FlinkRunner"])}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=1)
  comparison = results["comparison"]
  print(json.dumps({"pairs": comparison["example_pairs"],
                    "statistics differences": len(comparison["statistics"]),
                    "vocabularies": comparison["vocabularies"],
                    "auc": {engine: comparison["evaluator_metrics"][engine].get("auc")
                            for engine in ("direct", "flink")},
                    "seconds": results["seconds"]}, indent=1))
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
