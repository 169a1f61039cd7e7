"""A run folder's artifacts, looked up in its ML Metadata store (never re-run).

`recsys report` and `recsys tensorboard` read a finished run through this: the
latest live artifact of a type that a given component produced.
"""
import contextlib
import os
from typing import Dict, Iterator, List, Optional, Set

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.io import fileio
from tfx.orchestration import metadata

from common import errors

METADATA_FILE = "metadata.sqlite"


def node_id(context: metadata_store_pb2.Context) -> str:
  """The pipeline node of an ML Metadata "node" context, named "<pipeline>.<node id>"."""
  return context.name.split(".", 1)[-1]


def execution_node_ids(store, execution_id: int) -> List[str]:
  """The pipeline nodes an execution ran for (one, for LocalDagRunner's)."""
  return [node_id(c) for c in store.get_contexts_by_execution(execution_id)
          if c.type == "node"]


def _node_contexts(store, node: str) -> List[metadata_store_pb2.Context]:
  return [c for c in store.get_contexts_by_type("node") if node_id(c) == node]


def _live_artifacts(store, type_name: str, producer: Optional[str] = None
                    ) -> List[metadata_store_pb2.Artifact]:
  """Every live artifact of `type_name`, made by node `producer` if given."""
  artifacts = [a for a in store.get_artifacts_by_type(type_name)
               if a.state == metadata_store_pb2.Artifact.LIVE]
  if producer is None:
    return artifacts
  made_there = {a.id for c in _node_contexts(store, producer)
                for a in store.get_artifacts_by_context(c.id)}
  return [a for a in artifacts if a.id in made_there]


def _live_examples(store) -> List[metadata_store_pb2.Artifact]:
  """Every live Examples artifact MovieLensExampleGen registered."""
  return _live_artifacts(store, "Examples", "MovieLensExampleGen")


class RunFolderError(errors.RecsysError):
  """A folder that is not a run of this pipeline, or lacks what was asked for."""


class RunStore:
  """Read-only access to one run folder's ML Metadata."""

  def __init__(self, run_dir: str):
    self.run_dir = os.path.abspath(os.path.expanduser(run_dir))
    self.metadata_path = os.path.join(self.run_dir, METADATA_FILE)
    if not os.path.isdir(self.run_dir):
      raise RunFolderError(f"{self.run_dir}: no such folder")
    if not os.path.isfile(self.metadata_path):
      raise RunFolderError(
          f"{self.run_dir} is not a pipeline run folder: it has no {METADATA_FILE} "
          "(run `recsys run --output-dir` there first)")

  def latest_artifact(self, type_name: str, producer: Optional[str] = None
                      ) -> Optional[metadata_store_pb2.Artifact]:
    """The newest live artifact of `type_name`, made by node `producer` if given."""
    try:
      with self._store() as store:
        artifacts = _live_artifacts(store, type_name, producer)
    except Exception as e:  # pylint: disable=broad-except
      # ml_metadata raises its own errors for a locked, corrupt or foreign store.
      raise RunFolderError(f"cannot read {self.metadata_path}: {e}") from e
    return max(artifacts, key=lambda a: a.id) if artifacts else None

  def ingested_spans(self) -> Dict[int, str]:
    """Span number -> span length ("1 month"; "" for a run without spans) of every
    live Examples artifact MovieLensExampleGen registered in this folder."""
    with self._store() as store:
      examples = _live_examples(store)
    return {a.properties["span"].int_value:
            a.custom_properties["span_length"].string_value for a in examples}

  def spans_with_statistics(self) -> Set[int]:
    """The spans ingested whole (not cut short by `until`) whose statistics
    StatisticsGen has computed: all that an earlier span's ingestion leaves."""
    with self._store() as store:
      whole = {a.id: a.properties["span"].int_value for a in _live_examples(store)
               if "until" not in a.custom_properties}
      done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
      executions = [e.id for c in _node_contexts(store, "StatisticsGen")
                    for e in store.get_executions_by_context(c.id)
                    if e.last_known_state in done]
      read = {e.artifact_id for e in store.get_events_by_execution_ids(executions)
              if e.type == metadata_store_pb2.Event.INPUT}
    return {span for artifact_id, span in whole.items() if artifact_id in read}

  @contextlib.contextmanager
  def _store(self) -> Iterator[mlmd.MetadataStore]:
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(
        self.metadata_path)) as m:
      yield m.store

  def require(self, type_name: str, producer: Optional[str] = None,
              what: str = "") -> str:
    """URI of the latest such artifact; a clear error when there is none."""
    artifact = self.latest_artifact(type_name, producer)
    if artifact is None:
      raise RunFolderError(
          f"{self.run_dir} has no {what or type_name} yet"
          f"{f' from {producer}' if producer else ''}: the run did not get that far "
          f"(see {os.path.join(self.run_dir, 'logs')})")
    if not fileio.exists(artifact.uri):  # also a bucket's gs://... URI
      raise RunFolderError(f"{what or type_name} of {self.run_dir} is registered at "
                           f"{artifact.uri}, which no longer exists")
    return artifact.uri

