"""Our DeepFM's training speed against DeepCTR's, in interleaved runs at the same batch size.

Each round runs, each in a fresh process: DeepCTR's DeepFM (bench/deepctr_speed.py,
in its own environment), then our DeepFM's `best` and `seed` presets
(bench/train_speed.py) on a finished run's examples and Transform graph. Speed on a
small shared machine drifts from minute to minute and from process to process, so
the rounds interleave the three and the JSON keeps every run beside the medians.

  .venv/bin/python bench/deepfm_vs_deepctr.py runs/movielens-100k \
      --movielens-dir ../shared/data/movielens/ml-100k --rounds 5 \
      --output bench/results/deepfm_vs_deepctr.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

_BENCH = os.path.dirname(os.path.abspath(__file__))


def _last_json_line(command, env=None) -> dict:
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
  return json.loads(lines[-1])


def deepctr_speed(python: str, movielens_dir: str, batch: int) -> float:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  result = _last_json_line([python, os.path.join(_BENCH, "deepctr_speed.py"), movielens_dir,
                            str(batch)], env)
  return result["train_examples_per_second"]


def our_speed(run_dir: str, preset: str, batch: int) -> float:
  result = _last_json_line([sys.executable, os.path.join(_BENCH, "train_speed.py"), run_dir,
                            "--models", "deepfm", "--preset", preset,
                            "--set", json.dumps({"batch_size": batch})])
  return result["train_examples_per_second"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dir", help="output folder of a finished `recsys run --dataset 100k`")
  parser.add_argument("--movielens-dir", required=True, help="the ml-100k folder (u.data, ...)")
  parser.add_argument("--deepctr-python", default=".tools/deepctr/bin/python")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--output", help="JSON file to write (default: print only)")
  args = parser.parse_args()
  runs = {"deepctr": [], "ours_best": [], "ours_seed": []}
  for round_number in range(1, args.rounds + 1):
    runs["deepctr"].append(deepctr_speed(args.deepctr_python, args.movielens_dir, args.batch))
    for preset in ("best", "seed"):
      runs[f"ours_{preset}"].append(our_speed(args.run_dir, preset, args.batch))
    print(f"round {round_number}/{args.rounds}: " + ", ".join(
        f"{name} {values[-1]:,.0f}" for name, values in runs.items()) + " examples/s",
          flush=True)
  medians = {name: statistics.median(values) for name, values in runs.items()}
  result = {"batch": args.batch, "rounds": args.rounds,
            "train_examples_per_second": runs, "medians": medians,
            "speedup_over_deepctr": {name: round(medians[name] / medians["deepctr"], 2)
                                     for name in ("ours_best", "ours_seed")}}
  print(json.dumps(result))
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
