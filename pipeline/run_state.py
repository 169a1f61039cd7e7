"""A run's state in ML Metadata: what each component did, repair after a kill, its report."""
import dataclasses
import glob
import json
import os
import shutil
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.io import fileio
from tfx.orchestration import metadata

from components import model_cards
from components import model_report
from pipeline import configs
from pipeline import run_store
from pipeline import timeline

_STATES = {metadata_store_pb2.Execution.COMPLETE: "done",
           metadata_store_pb2.Execution.CACHED: "cached",
           metadata_store_pb2.Execution.FAILED: "failed",
           metadata_store_pb2.Execution.RUNNING: "running",
           metadata_store_pb2.Execution.CANCELED: "canceled"}


@dataclasses.dataclass
class ComponentRun:
  """One component's execution in a run, as ML Metadata recorded it."""
  node_id: str
  state: str
  seconds: float


@dataclasses.dataclass
class RunSummary:
  """What a finished run did, read back from ML Metadata."""
  output_dir: str
  run_id: str
  components: List[ComponentRun]
  split_counts: Dict[str, int]
  # Per Pusher node of the run: the version it pushed (or found already served),
  # None when its model was not blessed.
  pushed: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)
  log_path: Optional[str] = None
  report_path: Optional[str] = None

  def table(self) -> str:
    lines = [f"{'component':<28} {'state':<8} {'seconds':>8}"]
    for c in self.components:
      lines.append(f"{c.node_id:<28} {c.state:<8} {c.seconds:>8.1f}")
    if self.split_counts:
      lines.append("examples: " + ", ".join(
          f"{split} {count:,}" for split, count in self.split_counts.items()))
    return "\n".join(lines)


def summarize_run(config: configs.PipelineConfig) -> RunSummary:
  """Per-component state and wall time of the latest run, from ML Metadata."""
  connection = metadata.sqlite_metadata_connection_config(config.metadata_path)
  with metadata.Metadata(connection) as m:
    store = m.store
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
      raise RuntimeError(f"{config.metadata_path}: no pipeline run recorded")
    latest = max(runs, key=lambda c: c.create_time_since_epoch)
    components = []
    for execution in sorted(store.get_executions_by_context(latest.id),
                            key=lambda e: e.create_time_since_epoch):
      node_ids = run_store.execution_node_ids(store, execution.id)
      seconds = (execution.last_update_time_since_epoch
                 - execution.create_time_since_epoch) / 1000
      components.append(ComponentRun(
          node_ids[0] if node_ids else str(execution.type),
          _STATES.get(execution.last_known_state, "unknown"), seconds))
    split_counts = {}
    pushed_type = store.get_artifact_type("PushedModel").id if any(
        t.name == "PushedModel" for t in store.get_artifact_types()) else None
    pushed = {}
    for artifact in store.get_artifacts_by_context(latest.id):
      if "split_counts" in artifact.custom_properties:
        split_counts = json.loads(
            artifact.custom_properties["split_counts"].string_value)
      if artifact.type_id == pushed_type:
        # Output of its Pusher's execution, and of each later one reusing it (cached).
        producers = {e.execution_id for e in store.get_events_by_artifact_ids([artifact.id])
                     if e.type == metadata_store_pb2.Event.OUTPUT}
        was_pushed = artifact.custom_properties["pushed"].int_value
        for execution_id in producers:
          for node in run_store.execution_node_ids(store, execution_id):
            pushed[node] = (artifact.custom_properties["pushed_version"].string_value
                            if was_pushed else None)
  return RunSummary(config.output_dir, latest.name, components, split_counts, pushed)


def cancel_interrupted_executions(config: configs.PipelineConfig) -> List[str]:
  """Marks executions a killed run left RUNNING as CANCELED; returns their node ids.

  Only called while holding the run lock, so no live run owns them. TFX never
  reuses them (each run has its own pipeline_run context) and never published
  their outputs, whose folders (`<pipeline_root>/<node>/<key>/<execution id>`) are
  deleted here: half-written data nothing refers to.
  """
  if not os.path.exists(config.metadata_path):
    return []
  interrupted = []
  connection = metadata.sqlite_metadata_connection_config(config.metadata_path)
  with metadata.Metadata(connection) as m:
    store = m.store
    for execution in store.get_executions():
      if execution.last_known_state not in (metadata_store_pb2.Execution.NEW,
                                            metadata_store_pb2.Execution.RUNNING):
        continue
      node_ids = run_store.execution_node_ids(store, execution.id)
      execution.last_known_state = metadata_store_pb2.Execution.CANCELED
      store.put_executions([execution])
      for node_id in node_ids:
        node_dir = os.path.join(config.pipeline_root, node_id)
        for folder in (glob.glob(os.path.join(node_dir, "*", str(execution.id)))
                       + glob.glob(os.path.join(node_dir, ".system", "*",
                                                str(execution.id)))):
          shutil.rmtree(folder, ignore_errors=True)
      interrupted.extend(node_ids)
  return interrupted


def publish_report(config: configs.PipelineConfig) -> Optional[str]:
  """Copies the latest ModelReport (all but its TensorBoard logs) to `<output_dir>/report/`,
  in place of the previous one (a replay's timeline stays).

  Returns the published metrics.json, or None when the run made no report.
  """
  report = run_store.RunStore(config.output_dir).latest_artifact(
      model_report.ReportArtifact.TYPE_NAME)
  if report is None:
    return None
  target = os.path.join(config.output_dir, "report")
  # A replay's timeline lives beside the latest run's report and outlasts it.
  for name in (os.listdir(target) if os.path.isdir(target) else []):
    if name in timeline.FILES:
      continue
    path = os.path.join(target, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  if configs.is_uri(report.uri):  # a pipeline root in a bucket
    _download_folder(report.uri, target, skip=model_report.TENSORBOARD_DIR)
  else:
    shutil.copytree(report.uri, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(model_report.TENSORBOARD_DIR))
  publish_cards(target, config.serving_dir)
  return os.path.join(target, model_report.METRICS_FILE)


def publish_cards(report_dir: str, serving_dir: str) -> List[str]:
  """Copies the card of each model this run pushed beside its versions in the
  serving folder (`<serving_dir>/<model>/model_card.md` and `.html`; TF Serving
  reads only the numbered folders). A model this run did not push keeps the card
  of the run that pushed it. Returns the cards copied."""
  report = model_report.load(report_dir)
  pushed = [name for name, model in report["models"].items() if model["blessed"]]
  if (report.get("ranking") or {}).get("blessing", {}).get("blessed"):
    pushed.append("recommender")
  copied = []
  for name in pushed:
    destination = os.path.join(serving_dir, name)
    source = os.path.join(report_dir, model_cards.CARDS_DIR, name)
    if not (os.path.isdir(destination) and os.path.isfile(source + ".md")):
      continue
    for extension in (".md", ".html"):
      shutil.copyfile(source + extension,
                      os.path.join(destination, model_cards.CARD_FILE + extension))
    copied.append(os.path.join(destination, model_cards.CARD_FILE + ".md"))
  return copied


def _download_folder(uri: str, target: str, skip: str) -> None:
  """Copies the files under `uri` (gs://...) to the local `target`, but not `skip/`."""
  for folder, _, files in fileio.walk(uri):
    relative = folder[len(uri):].strip("/")
    if relative.split("/")[0] == skip:
      continue
    os.makedirs(os.path.join(target, relative), exist_ok=True)
    for name in files:
      fileio.copy(f"{folder.rstrip('/')}/{name}", os.path.join(target, relative, name))
