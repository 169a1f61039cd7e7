"""End to end: the real TFX components under LocalDagRunner with SQLite ML Metadata."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.orchestration import metadata
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.anomalies_gate import DataValidationError
from components.movielens_example_gen import MovieLensDataError
from components.movielens_example_gen import parsing
from components.movielens_example_gen import synthetic
from models import features
from models import training
from pipeline import configs
from pipeline import local_runner
from tests.conftest import REAL_100K, REPO, requires

pytestmark = pytest.mark.e2e

_TEST_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


_FEW_EPOCHS = {"cf": {"epochs": 6}, "deepfm": {"epochs": 4}}


def _config(data_dir, output_dir, dataset="1m", overrides=None) -> configs.PipelineConfig:
  return configs.PipelineConfig(dataset=dataset, data_dir=str(data_dir),
                                output_dir=str(output_dir), beam_args=_TEST_BEAM_ARGS,
                                overrides=overrides or {})


def _store(config):
  return metadata.Metadata(metadata.sqlite_metadata_connection_config(
      config.metadata_path))


def _live_artifacts(config, type_name):
  with _store(config) as m:
    return [a for a in m.store.get_artifacts_by_type(type_name)
            if a.state == metadata_store_pb2.Artifact.LIVE]


def _latest_examples(config):
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  ingested = [a for a in _live_artifacts(config, "Examples")
              if "split_counts" in a.custom_properties]  # not Transform's output
  mlmd_artifact = max(ingested, key=lambda a: a.id)
  examples = standard_artifacts.Examples()
  examples.set_mlmd_artifact(mlmd_artifact)
  return examples


def _read_split(examples, split):
  """Parses every tf.Example of a split (as TFX's readers would) into columns."""
  files = tf.io.gfile.glob(os.path.join(
      artifact_utils.get_split_uri([examples], split), "*.gz"))
  spec = {features.USER_ID: tf.io.FixedLenFeature([], tf.string),
          features.MOVIE_ID: tf.io.FixedLenFeature([], tf.string),
          features.LABEL: tf.io.FixedLenFeature([], tf.int64),
          features.USER_RATING: tf.io.FixedLenFeature([], tf.float32)}
  return training.to_columns(
      tf.data.TFRecordDataset(files, compression_type="GZIP").batch(50_000).map(
          lambda x: tf.io.parse_example(x, spec)))


def _model_run(config, model):
  """The model_run_dir (TensorBoard logs, history) of the latest run of `model`."""
  with _store(config) as m:
    trainer_runs = [a for a in m.store.get_artifacts_by_type("ModelRun")
                    if f"Trainer.{model}" in a.uri]
  return max(trainer_runs, key=lambda a: a.id).uri


def _states(summary):
  return {c.node_id: c.state for c in summary.components}


def test_synthetic_run_ingests_trains_reports_and_caches(tmp_path):
  data = tmp_path / "data"
  release = synthetic.write_release(str(data), "1m", num_users=300, num_movies=400,
                                    num_ratings=20_000, seed=11)
  config = _config(data, tmp_path / "run", overrides=_FEW_EPOCHS)
  summary = local_runner.run(config)
  assert set(_states(summary).values()) == {"done"}
  assert list(_states(summary)) == [
      "ImportSchemaGen", "MovieLensExampleGen", "StatisticsGen", "ExampleValidator",
      "AnomaliesGate", "Transform", "Trainer.cf", "Trainer.deepfm", "ModelReport"]

  # Both models learned the planted signal, scored through their exported signature.
  with open(summary.report_path) as f:
    report = json.load(f)
  assert summary.report_path == str(tmp_path / "run" / "report" / "metrics.json")
  for model in ("cf", "deepfm"):
    assert list(report[model])[:2] == ["split", "auc"]
    assert report[model]["auc"] > 0.7, report
    assert report[model]["example_count"] == summary.split_counts["test"]
    history = json.loads((pathlib.Path(_model_run(config, model)) / "history.json").read_text())
    assert len(history["val_auc"]) == _FEW_EPOCHS[model]["epochs"]
    assert list(pathlib.Path(_model_run(config, model)).rglob("events.out.tfevents.*"))

  examples = _latest_examples(config)
  counts = json.loads(examples.get_string_custom_property("split_counts"))
  assert sum(counts.values()) == release.num_ratings
  assert examples.get_string_custom_property("dataset") == "movielens/1m-ratings"
  assert json.loads(examples.get_string_custom_property("split_hash_buckets")) == {
      "train": 8, "eval": 1, "test": 1}
  pairs = set()
  for split, expected_share in (("train", 0.8), ("eval", 0.1), ("test", 0.1)):
    rows = _read_split(examples, split)
    assert len(rows[features.LABEL]) == counts[split]
    assert abs(counts[split] / release.num_ratings - expected_share) < 0.03
    np.testing.assert_array_equal(rows[features.LABEL],
                                  (rows[features.USER_RATING] >= 4).astype(int))
    pairs |= set(zip(rows[features.USER_ID], rows[features.MOVIE_ID]))
  assert len(pairs) == release.num_ratings  # every rating once, in one split

  schema_artifact = _live_artifacts(config, "Schema")[0]
  imported = io_utils.parse_pbtxt_file(
      os.path.join(schema_artifact.uri, "schema.pbtxt"), schema_pb2.Schema())
  assert imported == io_utils.parse_pbtxt_file(configs.SCHEMA_FILE, schema_pb2.Schema())
  zip_feature = next(f for f in imported.feature if f.name == features.ZIP_CODE)
  assert zip_feature.type == schema_pb2.BYTES

  # Unchanged inputs: every component is served from the cache.
  assert set(_states(local_runner.run(config)).values()) == {"cached"}

  # Changed data: ingestion runs again and sees the change.
  ratings = data / "ratings.dat"
  ratings.write_text("\n".join(ratings.read_text().splitlines()[:-10]) + "\n")
  states = _states(local_runner.run(config))
  assert states["MovieLensExampleGen"] == "done"
  counts = json.loads(_latest_examples(config).get_string_custom_property("split_counts"))
  assert sum(counts.values()) == release.num_ratings - 10


@requires(REAL_100K)
def test_real_100k_ingestion(tmp_path):
  config = _config(REAL_100K, tmp_path / "run", dataset="100k")
  summary = local_runner.run(config)
  assert set(_states(summary).values()) == {"done"}
  with open(summary.report_path) as f:
    report = json.load(f)
  assert report["cf"]["auc"] > 0.78 and report["deepfm"]["auc"] > 0.78, report
  examples = _latest_examples(config)
  splits = {s: _read_split(examples, s) for s in ("train", "eval", "test")}
  users = np.concatenate([r[features.USER_ID] for r in splits.values()])
  movies = np.concatenate([r[features.MOVIE_ID] for r in splits.values()])
  likes = sum(int(r[features.LABEL].sum()) for r in splits.values())
  assert len(users) == 100_000
  assert len(set(users)) == 943 and len(set(movies)) == 1682
  assert likes == 55_375
  # The split of each rating is the one its (user, movie) hash gives, run after run.
  table = parsing.read_release(str(REAL_100K), parsing.LAYOUTS["100k"])
  expected = parsing.assign_splits(
      np.array([v.decode() for v in pc.list_flatten(table.column(features.USER_ID))
                .to_pylist()], dtype=object),
      np.array([v.decode() for v in pc.list_flatten(table.column(features.MOVIE_ID))
                .to_pylist()], dtype=object),
      seed=config.seed, hash_buckets=[8, 1, 1])
  for index, split in enumerate(("train", "eval", "test")):
    assert len(splits[split][features.LABEL]) == int((expected == index).sum())


def test_anomaly_stops_the_run_naming_the_feature(synthetic_1m, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(synthetic_1m.folder, data)
  movies = data / "movies.dat"
  lines = movies.read_bytes().split(b"\n")
  lines[0] = lines[0].rsplit(b"::", 1)[0] + b"::Cyberpunk"  # not a MovieLens genre
  movies.write_bytes(b"\n".join(lines))
  config = _config(data, tmp_path / "run")
  with pytest.raises(DataValidationError) as error:
    local_runner.run(config)
  message = str(error.value)
  assert "feature 'movie_genres'" in message and "Unexpected string values" in message
  states = _states(local_runner.summarize_run(config))
  assert states["ExampleValidator"] == "done"
  assert states["AnomaliesGate"] == "failed"


def test_malformed_data_fails_ingestion_and_registers_nothing(synthetic_1m, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(synthetic_1m.folder, data)
  ratings = data / "ratings.dat"
  lines = ratings.read_text().splitlines()
  lines[4999] = "1::2::11::978300760"
  ratings.write_text("\n".join(lines) + "\n")
  config = _config(data, tmp_path / "run")
  with pytest.raises(MovieLensDataError, match=(
      f"^{ratings}, line 5000: rating '11' is outside 1 to 5$")):
    local_runner.run(config)
  assert _states(local_runner.summarize_run(config))["MovieLensExampleGen"] == "failed"
  assert not _live_artifacts(config, "Examples")  # nothing registered at all


def test_cli_reports_bad_input_in_one_line(synthetic_1m, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(synthetic_1m.folder, data)
  users = data / "users.dat"
  lines = users.read_text(encoding="iso-8859-1").splitlines()
  lines[2] = lines[2].replace("::", ":", 1)
  users.write_text("\n".join(lines) + "\n", encoding="iso-8859-1")
  result = subprocess.run(
      [sys.executable, "-m", "pipeline.cli", "run", "--dataset", "1m",
       "--data-dir", str(data), "--output-dir", str(tmp_path / "run"),
       "--beam-arg=--direct_num_workers=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert f"error: {users}, line 3: expected 5 fields separated by '::'" in result.stderr
  assert "Traceback" not in result.stderr
  assert re.search(r"stage 2/\d+: MovieLensExampleGen running", result.stderr)
