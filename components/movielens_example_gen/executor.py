"""MovieLensExampleGen's executor: MovieLens files to split, shuffled, gzipped tf.Examples.

The Beam pipeline works on shards of ~100,000 ratings rather than on single rows:
each shard is parsed, joined, encoded to tf.Examples (tfx_bsl's C++ encoder) and
split in one vectorised step, then the shards' pieces are grouped to shuffle the
output. CsvExampleGen does this a row at a time, several times slower
(docs/performance.md); shard-wise work keeps Beam's per-element cost out of the
hot path.
"""
import json
import os
import re
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import proto_utils
from tfx_bsl.coders import example_coder

from common import progress
from components.movielens_example_gen import histories
from components.movielens_example_gen import parsing
from components.movielens_example_gen import sources
from components.movielens_example_gen import spans
from models import features

EXAMPLES_KEY = "examples"
FILE_PREFIX = "data_tfrecord"
# Rows per output file (before gzip, ~300 bytes per example).
_ROWS_PER_OUTPUT_FILE = 250_000
_COUNTER_NAMESPACE = "MovieLensExampleGen"


class _ParseShard(beam.DoFn):
  """Parses a shard of ratings into serialized tf.Examples, keyed by (split, output file)."""

  def __init__(self, layout, users, movies, seed: int, hash_buckets: List[int],
               files_per_split: List[int], num_shards: int,
               cutoffs: Optional[parsing.TemporalCutoffs] = None,
               time_range: Optional[Tuple[int, int]] = None,
               histories_path: Optional[str] = None):
    self._histories_path = histories_path
    self._histories = None
    self._layout = layout
    self._cutoffs = cutoffs
    self._time_range = time_range
    self._users = users
    self._movies = movies
    self._seed = seed
    self._hash_buckets = hash_buckets
    self._files_per_split = np.array(files_per_split)
    self._num_shards = num_shards

  def setup(self):
    if self._histories_path:
      self._histories = histories.RatingHistories.load(self._histories_path)

  def process(self, indexed_shard: Tuple[int, parsing.RatingsShard]
              ) -> Iterator[Tuple[Tuple[int, int], Tuple[int, np.ndarray]]]:
    index, shard = indexed_shard
    # Lines outside the time range were checked by the key pass (read_rating_keys).
    parsed = parsing.parse_ratings(shard, parsing.read_shard_bytes(shard),
                                   self._layout, self._users, self._movies,
                                   time_range=self._time_range)
    if parsed is None:
      return
    if self._cutoffs is None:
      split = parsing.assign_splits(parsed.user_ids, parsed.movie_ids, self._seed,
                                    self._hash_buckets)
    else:
      split = self._cutoffs.assign(parsed.user_ids, parsed.movie_ids, parsed.timestamps)
    batch = parsed.batch
    if self._histories is not None:
      movie_ids, ages = self._histories.arrow_columns(parsed.user_ids, parsed.timestamps,
                                                      split)
      batch = pa.RecordBatch.from_arrays(
          batch.columns + [movie_ids, ages],
          batch.schema.names + [features.HISTORY_MOVIE_IDS, features.HISTORY_AGE_SECONDS])
    encoded = np.array(example_coder.RecordBatchToExamples(batch), dtype=object)
    output_file = (parsing.stable_hash(parsed.user_ids, parsed.movie_ids, self._seed,
                                       "shuffle")
                   % self._files_per_split[split].astype(np.uint64)).astype(np.int64)
    for split_index, num_files in enumerate(self._files_per_split):
      in_split = split == split_index
      beam.metrics.Metrics.counter(_COUNTER_NAMESPACE, f"split_{split_index}").inc(
          int(in_split.sum()))
      for file_index in range(num_files):
        records = encoded[in_split & (output_file == file_index)]
        if len(records):
          yield (split_index, file_index), (index, records)
    progress.report("ingest", f"shard {index + 1}/{self._num_shards} parsed: lines "
                    f"{shard.first_line:,}-{shard.first_line + shard.num_lines - 1:,} "
                    f"of {self._layout.ratings_file}, {len(encoded):,} examples")


class _WriteOutputFile(beam.DoFn):
  """Writes one output file: its pieces in shard order, shuffled reproducibly.

  TensorFlow's C++ TFRecord writer does the gzip and checksums, faster than Beam's
  Python TFRecord sink (docs/performance.md). The file is written under a
  temporary name and renamed, so a retried bundle never leaves a partial file.
  """

  def __init__(self, split_uris: List[str], files_per_split: List[int], seed: int):
    self._split_uris = split_uris
    self._files_per_split = files_per_split
    self._seed = seed

  def process(self, keyed_pieces) -> Iterator[int]:
    (split_index, file_index), pieces = keyed_pieces
    records = np.concatenate([r for _, r in sorted(pieces, key=lambda p: p[0])])
    rng = np.random.default_rng([self._seed, split_index, file_index])
    name = (f"{FILE_PREFIX}-{file_index:05d}-of-"
            f"{self._files_per_split[split_index]:05d}.gz")
    path = f"{self._split_uris[split_index]}/{name}"
    temporary = f"{path}.incomplete"
    # Level 1: noticeably faster ingestion for somewhat larger files (docs/performance.md).
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)
    with tf.io.TFRecordWriter(temporary, options) as writer:
      for record in records[rng.permutation(len(records))]:
        writer.write(record)
    tf.io.gfile.rename(temporary, path, overwrite=True)
    yield len(records)


_BEAM_CONTEXT = re.compile(r"\s*\[while running '[^']*'\]")


def _movielens_error(error: BaseException) -> Optional[parsing.MovieLensDataError]:
  """Finds our data error inside whatever Beam wrapped it in, or returns None."""
  seen = error
  while seen is not None:
    if isinstance(seen, parsing.MovieLensDataError):
      return parsing.MovieLensDataError(_BEAM_CONTEXT.sub("", str(seen)).strip())
    seen = seen.__cause__ or seen.__context__
  # Multi-process workers send back only the text of their traceback.
  match = re.search(r"MovieLensDataError: ([^\n]+)", str(error))
  if match:
    return parsing.MovieLensDataError(_BEAM_CONTEXT.sub("", match.group(1)).strip())
  return None


def _temporal_cutoffs(keys: parsing.ParsedRatings, split_names: List[str],
                      hash_buckets: List[int]) -> parsing.TemporalCutoffs:
  """Each user's split boundaries in time."""
  shares = dict(zip(split_names, hash_buckets))
  if list(shares) != list(features.SPLIT_NAMES):
    raise ValueError(f"the temporal split needs the splits {features.SPLIT_NAMES}, "
                     f"got {list(shares)}")
  cutoffs = parsing.TemporalCutoffs.of(keys.user_ids, keys.movie_ids, keys.timestamps,
                                       shares)
  progress.report("ingest", f"temporal split: each of {len(cutoffs.users):,} users' "
                  "latest ratings to test, the ones before them to eval")
  return cutoffs


def _choose_span(keys: parsing.ParsedRatings, length: spans.SpanLength,
                 requested: int, until: Optional[int], ratings_path: str) -> spans.Span:
  """The span this run ingests: `requested`, or the last one with ratings by `until`.

  An empty span is a MovieLensDataError naming it and the spans that do hold
  ratings, so that a caller replaying spans can report and skip it.
  """
  plan = spans.SpanPlan.of(keys.timestamps, length, until)
  try:
    span = plan.choose(requested)
  except spans.EmptySpanError as e:
    raise parsing.MovieLensDataError(f"{ratings_path}: {e}") from None
  progress.report("ingest", f"{span.describe()}: {plan.counts[span.number]:,} ratings "
                  f"(spans of {length}; {len(plan.with_ratings)} of {len(plan.counts)} "
                  "hold ratings)")
  return span


def _rating_histories(every_key: parsing.ParsedRatings, keys: parsing.ParsedRatings,
                      time_range: Optional[Tuple[int, int]],
                      cutoffs: Optional[parsing.TemporalCutoffs], seed: int,
                      hash_buckets: List[int], length: int) -> histories.RatingHistories:
  """What each rating's history is looked up in: the ratings ingested (`keys`) with
  their splits, and with spans every earlier span's ratings, all known."""
  started = time.monotonic()
  if cutoffs is None:
    splits = parsing.assign_splits(keys.user_ids, keys.movie_ids, seed, hash_buckets)
  else:
    splits = cutoffs.assign(keys.user_ids, keys.movie_ids, keys.timestamps)
  columns = [keys.user_ids, keys.movie_ids, keys.timestamps, splits]
  earlier = every_key.within(0, time_range[0]) if time_range is not None else None
  if earlier is not None:
    columns = [np.concatenate([known, this]) for known, this in zip(
        [earlier.user_ids, earlier.movie_ids, earlier.timestamps,
         np.zeros(len(earlier.timestamps), np.int64)], columns)]
  built = histories.RatingHistories.of(*columns, length=length)
  progress.report("ingest", f"histories: each rating's latest {length} earlier ratings, "
                  f"from {len(columns[0]):,} ratings"
                  + (f" ({len(earlier.timestamps):,} of earlier spans)" if earlier else "")
                  + f", in {time.monotonic() - started:.1f} s")
  return built


class Executor(base_beam_executor.BaseBeamExecutor):
  """Reads MovieLens through TFDS's sources and writes split tf.Examples."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    dataset = exec_properties["dataset"]
    seed = int(exec_properties["seed"])
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties["output_config"], output_config)
    split_names = [s.name for s in output_config.split_config.splits]
    hash_buckets = [s.hash_buckets for s in output_config.split_config.splits]

    source = sources.resolve(dataset, exec_properties.get("data_dir") or None,
                             exec_properties.get("download_dir") or None)
    layout = parsing.LAYOUTS[dataset]
    progress.report("ingest", f"MovieLens {dataset.upper()}: {source.description}")
    users = parsing.read_users(source.folder, layout)
    movies = parsing.read_movies(source.folder, layout)
    shards = parsing.plan_ratings_shards(
        f"{source.folder}/{layout.ratings_file}",
        int(exec_properties["lines_per_shard"]), layout.ratings_header)
    num_lines = sum(s.num_lines for s in shards)
    progress.report("ingest", (f"{len(users.ids):,} users, " if users is not None else
                               "users known by their ratings alone, ")
                    + f"{len(movies.ids):,} movies, "
                    f"{num_lines:,} rating lines in {len(shards)} shard(s)")
    split_method = exec_properties.get("split") or "random"
    span_length = spans.SpanLength(int(exec_properties.get("span_days") or 0),
                                   int(exec_properties.get("span_months") or 0))
    until = spans.end_of_day(exec_properties.get("until") or None)
    history_length = exec_properties.get("history_length")
    history_length = features.HISTORY_LENGTH if history_length is None else int(history_length)
    span, time_range, cutoffs, rating_histories = None, None, None, None
    if (history_length or span_length.enabled or until is not None
        or split_method == "temporal"):
      every_key = keys = parsing.read_rating_keys(shards, layout, users, movies)
      if span_length.enabled:
        span = _choose_span(keys, span_length, int(exec_properties.get("span", -1)),
                            until, shards[0].path)
        time_range = (span.start, span.end if until is None else min(span.end, until))
      elif until is not None:
        time_range = (0, until)
      if time_range is not None:
        keys = keys.within(*time_range)
        if keys is None:
          raise parsing.MovieLensDataError(
              f"{shards[0].path}: no ratings up to {exec_properties['until']}")
      if split_method == "temporal":
        cutoffs = _temporal_cutoffs(keys, split_names, hash_buckets)
      if history_length:
        rating_histories = _rating_histories(every_key, keys, time_range, cutoffs, seed,
                                             hash_buckets, history_length)
    num_rows = num_lines if time_range is None else len(keys.timestamps)
    files_per_split = [max(1, round(num_rows * b / sum(hash_buckets)
                                    / _ROWS_PER_OUTPUT_FILE)) for b in hash_buckets]

    examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
    examples.split_names = artifact_utils.encode_split_names(split_names)
    split_uris = [artifact_utils.get_split_uri([examples], name) for name in split_names]
    for uri in split_uris:
      tf.io.gfile.makedirs(uri)
    # The histories go to the workers as a file beside the output, which every
    # worker of a cluster reads, rather than inside the job's graph.
    histories_path = None
    if rating_histories is not None:
      histories_path = f"{examples.uri}/.histories-{os.getpid()}.npz"
      rating_histories.save(histories_path)
    pipeline = self._make_beam_pipeline()
    _ = (
        pipeline
        | "Shards" >> beam.Create(list(enumerate(shards)))
        | "Distribute" >> beam.Reshuffle()
        | "ParseShards" >> beam.ParDo(_ParseShard(
            layout, users, movies, seed, hash_buckets, files_per_split, len(shards),
            cutoffs, time_range, histories_path))
        | "GroupByOutputFile" >> beam.GroupByKey()
        | "WriteOutputFiles" >> beam.ParDo(_WriteOutputFile(
            split_uris, files_per_split, seed)))
    try:
      result = pipeline.run()
      result.wait_until_finish()
    except Exception as e:  # pylint: disable=broad-except
      data_error = _movielens_error(e)
      if data_error is not None:
        raise data_error from None
      raise
    finally:
      if histories_path is not None:
        tf.io.gfile.remove(histories_path)
    counts = {name: 0 for name in split_names}
    for counter in result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(_COUNTER_NAMESPACE))["counters"]:
      # Beam's portable Spark runner reports attempted counts only (committed: None);
      # they exceed committed ones only if a bundle was retried.
      written = counter.committed if counter.committed is not None else counter.attempted
      counts[split_names[int(counter.key.metric.name.split("_")[1])]] += written
    if sum(counts.values()) == 0:
      raise parsing.no_rows_error(shards[0].path, "ratings")

    # TFX's span convention: resolvers such as rolling_range pick spans by number
    # (and the latest version of each).
    examples.span = span.number if span else 0
    examples.version = 0
    if span:
      examples.set_string_custom_property("span_length", str(span_length))
      examples.set_string_custom_property("span_first_day", span.first_day)
      examples.set_string_custom_property("span_last_day", span.last_day)
    if until is not None:
      examples.set_string_custom_property("until", exec_properties["until"])
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    examples.set_string_custom_property("dataset", features.DATASETS[dataset])
    examples.set_string_custom_property("source", source.description)
    examples.set_string_custom_property("split_counts", json.dumps(counts))
    examples.set_string_custom_property("split_method", split_method)
    examples.set_string_custom_property(
        "split_hash_buckets", json.dumps(dict(zip(split_names, hash_buckets))))
    examples.set_int_custom_property("seed", seed)
    progress.report("ingest", "examples written: " + ", ".join(
        f"{name} {count:,}" for name, count in counts.items()))
    logging.info("MovieLensExampleGen wrote %s", counts)
