"""Which earlier model a span run starts from and is judged against.

A span run resolves the latest blessed model of each kind (the baseline of its
Evaluator's change threshold, and the model its Trainer warm-starts from) and the
latest retrieval model. TFX's own strategies take the latest in ML Metadata. A span
run that was killed after its Evaluator blessed a model, and then resumed, would
then find that very model: its Trainers' inputs would change, so they would train
again (from their own earlier result) instead of coming from the cache, and a
second version of the same span would be pushed.

`LatestFromEarlierSpans` leaves out what any run of this span or a later one
produced, so a resumed run resolves what its first attempt did.
"""
from typing import Dict, List, Optional, Set

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.input_resolution.strategies import latest_blessed_model_strategy

from pipeline import run_store

_RUN_CONTEXT_TYPE = "pipeline_run"
_INGESTION_NODE = "MovieLensExampleGen"
# The Resolver's channels, by the names the pipeline gives them.
_MODEL, _BLESSING = "model", "model_blessing"


class LatestFromEarlierSpans(latest_blessed_model_strategy.LatestBlessedModelStrategy):
  """The latest Model made by the runs of spans before `span`; with a ModelBlessing
  channel as well, the latest such model that was blessed.

  A model's span is that of the Examples its pipeline run's MovieLensExampleGen
  wrote: the span the run was for. Every execution that output the model counts
  (the first one, and any that reused it from the cache).

  Build it through `tfx.dsl.Resolver(strategy_class=LatestFromEarlierSpans,
  config={"span": N}, model=...)`, with `model_blessing=...` for a blessed one.
  """

  def __init__(self, span: int):
    self._span = span

  def resolve_artifacts(self, store: mlmd.MetadataStore,
                        input_dict: Dict[str, List[types.Artifact]]
                        ) -> Optional[Dict[str, List[types.Artifact]]]:
    span_of_run = _span_of_each_run(store)
    earlier = [model for model in input_dict[_MODEL]
               if max((span_of_run.get(run, -1) for run in _runs_that_made(store, model.id)),
                      default=-1) < self._span]
    if _BLESSING in input_dict:
      return super().resolve_artifacts(store, {**input_dict, _MODEL: earlier})
    return {_MODEL: [max(earlier, key=lambda a: a.id)] if earlier else []}


def _span_of_each_run(store: mlmd.MetadataStore) -> Dict[int, int]:
  """Pipeline run context id -> the span its MovieLensExampleGen wrote."""
  ingestions = [e.id for c in store.get_contexts_by_type("node")
                if run_store.node_id(c) == _INGESTION_NODE
                for e in store.get_executions_by_context(c.id)]
  span_of_run = {}
  for execution_id in ingestions:
    outputs = [e.artifact_id for e in store.get_events_by_execution_ids([execution_id])
               if e.type == metadata_store_pb2.Event.OUTPUT]
    spans = [a.properties["span"].int_value for a in store.get_artifacts_by_id(outputs)]
    for context in store.get_contexts_by_execution(execution_id):
      if context.type == _RUN_CONTEXT_TYPE and spans:
        span_of_run[context.id] = max(spans)
  return span_of_run


def _runs_that_made(store: mlmd.MetadataStore, artifact_id: int) -> Set[int]:
  """The pipeline run contexts of the executions that output the artifact."""
  producers = [e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
               if e.type == metadata_store_pb2.Event.OUTPUT]
  return {c.id for execution_id in producers
          for c in store.get_contexts_by_execution(execution_id)
          if c.type == _RUN_CONTEXT_TYPE}
