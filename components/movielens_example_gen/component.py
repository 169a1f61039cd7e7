"""MovieLensExampleGen: a TFX ExampleGen over tensorflow-datasets' MovieLens sources."""
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from components.movielens_example_gen import executor
from components.movielens_example_gen import spans
from models import features


class MovieLensExampleGenSpec(types.ComponentSpec):
  """Parameters of MovieLensExampleGen; see its constructor."""
  PARAMETERS = {
      "dataset": ExecutionParameter(type=str),
      "data_dir": ExecutionParameter(type=str, optional=True),
      "download_dir": ExecutionParameter(type=str, optional=True),
      "source_fingerprint": ExecutionParameter(type=str, optional=True),
      "code_fingerprint": ExecutionParameter(type=str, optional=True),
      "output_config": ExecutionParameter(type=example_gen_pb2.Output),
      "seed": ExecutionParameter(type=int),
      "lines_per_shard": ExecutionParameter(type=int),
      "split": ExecutionParameter(type=str, optional=True),
      "span_days": ExecutionParameter(type=int, optional=True),
      "span_months": ExecutionParameter(type=int, optional=True),
      "span": ExecutionParameter(type=int, optional=True),
      "until": ExecutionParameter(type=str, optional=True),
      "history_length": ExecutionParameter(type=int, optional=True),
  }
  INPUTS = {}
  OUTPUTS = {executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


def default_output_config() -> example_gen_pb2.Output:
  """Train/eval/test by the shares in `models.features.SPLITS` (80/10/10)."""
  return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
      example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
      for name, buckets in features.SPLITS]))


class MovieLensExampleGen(base_beam_component.BaseBeamComponent):
  """Ingests MovieLens 1M or 100K as tf.Examples split into train, eval and test.

  Every example carries the features of TFDS's `movielens/<dataset>-ratings`
  (see `models.features`) and the label `like` (rating >= 4). With the random
  split, a rating's split comes from a hash of its (user, movie) pair and the
  seed; with the temporal one, from its place in time among its user's ratings.
  Either way the same input gives the same splits on every run and machine. The
  output artifact records the data set, its source, the split method, the seed,
  the shares and the count per split.
  """
  SPEC_CLASS = MovieLensExampleGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self, dataset: str = features.DEFAULT_DATASET,
               data_dir: Optional[str] = None, download_dir: Optional[str] = None,
               source_fingerprint: Optional[str] = None,
               code_fingerprint: Optional[str] = None,
               output_config: Optional[example_gen_pb2.Output] = None,
               seed: int = 42, lines_per_shard: int = 100_000, split: str = "random",
               span_days: int = 0, span_months: int = 0, span: int = -1,
               until: Optional[str] = None,
               history_length: int = features.HISTORY_LENGTH):
    """Creates the component.

    Args:
      dataset: "1m" (default), "100k", "20m" or "25m".
      data_dir: None to download through TFDS; else a folder holding the official
        zip or its extracted files. A URI (gs://..., read through tf.io.gfile)
        must hold the extracted files.
      download_dir: where TFDS keeps downloads (default ~/tensorflow_datasets/downloads).
      source_fingerprint: changes whenever the files under `data_dir` change, so
        a rerun on edited files is not served from the cache.
      code_fingerprint: the same for this component's code
        (common.code_fingerprint); the executor does not read it.
      output_config: the splits; default 80/10/10 train/eval/test.
      seed: seeds the split hash and the shuffle of the output.
      lines_per_shard: ratings per unit of parallel work.
      split: "random" (by the hash of each rating, comparable to the reference
        study) or "temporal" (per user, the latest ratings in time go to test and
        the ones before them to eval, in the shares of `output_config`).
      span_days, span_months: cut the ratings into spans of this many days or
        calendar months (spans.py); the run ingests one span, split as above, and
        its artifact carries TFX's `span` property and the span's first and last
        day. 0 and 0: the whole release is span 0.
      span: the span to ingest; -1, the last one holding ratings (up to `until`).
      until: a day, YYYY-MM-DD: the ratings after it are left out, as if the file
        had been read at the end of that day.
      history_length: how many of the user's earlier ratings each example
        carries (histories.py); 0, none.
    """
    if split not in features.SPLIT_METHODS:
      raise ValueError(f"split must be one of {features.SPLIT_METHODS}, got {split!r}")
    if dataset not in features.DATASETS:
      raise ValueError(f"dataset must be one of {sorted(features.DATASETS)}, "
                       f"got {dataset!r}")
    spans.SpanLength(span_days, span_months)  # a ValueError now, not mid-run
    spans.end_of_day(until)
    if history_length < 0:
      raise ValueError(f"history_length must be 0 or more, got {history_length}")
    spec = MovieLensExampleGenSpec(
        dataset=dataset, data_dir=data_dir, download_dir=download_dir,
        source_fingerprint=source_fingerprint, code_fingerprint=code_fingerprint,
        output_config=output_config or default_output_config(), seed=seed,
        lines_per_shard=lines_per_shard, split=split, span_days=span_days,
        span_months=span_months, span=span, until=until, history_length=history_length,
        examples=types.Channel(type=standard_artifacts.Examples))
    super().__init__(spec=spec)
