"""TensorBoard on a finished run: training curves and evaluations of both models.

Runs shown (names as TensorBoard lists them):
- `<model>/train`, `<model>/validation`: the Trainer's Keras logs (loss, AUC per epoch);
- `evaluation/<model>`: the test-split evaluation written by ModelReport (TFMA
  metrics as scalars, per slice, a PR curve, Fairness Indicators);
- `timeline/<model or baseline>`, in a folder `recsys replay` ran in: each span's
  test metrics, blessing, run time and drift distances, the span as the step.
Every other folder comes from the run's ML Metadata, so the latest artifacts are shown.
"""
import os
import warnings
from typing import Dict, List

from components import model_report
from pipeline import pipeline as pipeline_dsl
from pipeline import run_store
from pipeline import timeline

EVALUATION_RUN = "evaluation"
TIMELINE_RUN = "timeline"


def logdirs(run_dir: str) -> Dict[str, str]:
  """TensorBoard run-name prefix -> folder, for a finished run."""
  store = run_store.RunStore(run_dir)
  folders = {}
  for model in pipeline_dsl.MODELS:
    folders[model] = store.require("ModelRun", pipeline_dsl.trainer_id(model),
                                   what=f"training logs of {model}")
  report = store.require(model_report.ReportArtifact.TYPE_NAME, what="evaluation report")
  folders[EVALUATION_RUN] = f"{report}/{model_report.TENSORBOARD_DIR}"
  replay = os.path.join(store.run_dir, "report", timeline.TENSORBOARD_DIR)
  if os.path.isdir(replay):
    folders[TIMELINE_RUN] = replay
  return folders


def tensorboard_args(run_dir: str, port: int, host: str) -> List[str]:
  spec = ",".join(f"{name}:{folder}" for name, folder in logdirs(run_dir).items())
  return ["tensorboard", "--logdir_spec", spec, "--port", str(port), "--host", host]


def serve(run_dir: str, port: int = 6006, host: str = "localhost") -> int:
  """Serves TensorBoard on `run_dir` until interrupted; TensorBoard prints its URL."""
  warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
  from tensorboard import program  # pylint: disable=g-import-not-at-top
  board = program.TensorBoard()
  board.configure(argv=tensorboard_args(run_dir, port, host))
  return board.main()
