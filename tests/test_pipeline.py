"""End to end: the real TFX components under LocalDagRunner with SQLite ML Metadata."""
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.orchestration import metadata
from tfx.types import artifact_utils
from tfx.utils import io_utils

from common import ports
from components import model_report
from components import pusher
from components.anomalies_gate import DataValidationError
from components.movielens_example_gen.parsing import MovieLensDataError
from evaluation import tfma_config
from models import data
from models import features
from pipeline import cli
from pipeline import configs
from pipeline import local_runner
from pipeline import pipeline as pipeline_dsl
from pipeline import run_state
from pipeline import run_store
from tests.conftest import BRIEF_TRAINING
from tests.conftest import REPO
from tests.conftest import RUN_CONSOLE
from tests.conftest import RUN_TEMPORARY_FILES
from tests.conftest import cli_error
from tests.conftest import copy_of_finished_run
from tests.conftest import pipeline_config

pytestmark = pytest.mark.e2e


def _store(config):
  return metadata.Metadata(metadata.sqlite_metadata_connection_config(
      config.metadata_path))


def _live_artifacts(config, type_name):
  with _store(config) as m:
    return [a for a in m.store.get_artifacts_by_type(type_name)
            if a.state == metadata_store_pb2.Artifact.LIVE]


def _latest_examples(config):
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  mlmd_artifact = max(_live_artifacts(config, "Examples"), key=lambda a: a.id)
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
  return data.to_columns(
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


_NODES = ["ImportSchemaGen", "LatestBlessed.cf", "LatestBlessed.deepfm",
          "LatestBlessed.recommender", "MovieLensExampleGen", "StatisticsGen",
          "ExampleValidator", "AnomaliesGate", "Transform", "Trainer.cf", "Trainer.deepfm",
          "Trainer.retrieval", "Evaluator.cf", "Evaluator.deepfm", "RecommenderBuilder",
          "ServedModelBuilder.cf", "ServedModelBuilder.deepfm", "Pusher.cf", "Pusher.deepfm",
          "RankingEvaluator", "ModelReport", "Pusher.recommender"]


def _pushed_versions(config, model):
  return pusher.pushed_versions(config.serving_model_dir(model))


def test_the_console_shows_every_stage_start_and_end(finished_run):
  _, config, _ = finished_run
  lines = RUN_CONSOLE[config.output_dir].splitlines()
  for position, node_id in enumerate(_NODES, 1):
    stage = f"stage {position}/{len(_NODES)}: {node_id}"
    assert any(line.endswith(f"{stage} running") for line in lines), stage
    assert any(re.search(rf"{re.escape(stage)} done in \d+\.\d s$", line)
               for line in lines), stage
  # And from inside the Trainers, each model's epochs.
  for model, epochs in BRIEF_TRAINING.items():
    assert any(f"train {model}: epoch 1/{epochs['epochs']}: " in line for line in lines)


def test_a_run_leaves_no_temporary_files(finished_run):
  _, config, _ = finished_run
  # TFX's Beam packaging and TensorFlow's AutoGraph files went to <output>/.tmp.
  assert not os.path.exists(os.path.join(config.output_dir, ".tmp"))
  assert RUN_TEMPORARY_FILES[config.output_dir] == []


def test_synthetic_run_ingests_trains_evaluates_and_pushes(finished_run):
  release, config, summary = finished_run
  assert set(_states(summary).values()) == {"done"}
  assert list(_states(summary)) == _NODES

  # Both models learned the planted signal, judged by TFMA through their exported
  # serving_default signature, blessed and pushed in TF Serving's layout.
  report = model_report.load(os.path.dirname(summary.report_path))
  assert summary.report_path == os.path.join(config.output_dir, "report", "metrics.json")
  for model in ("cf", "deepfm"):
    result = report["models"][model]
    assert list(result)[:2] == ["split", "auc"]
    assert result["auc"] > 0.7, report
    assert result["example_count"] == summary.split_counts["test"]
    assert result["blessed"] is True
    # Platt-scaled on eval (models/calibration.py): the mean prediction is the
    # mean label's, up to the sampling noise of ~2,000 test ratings.
    assert result["calibration"] == pytest.approx(1.0, abs=0.05), result["calibration"]
    assert result["blessing_reason"].startswith(f"auc {result['auc']:.4f} >= floor 0.6")
    assert result["epochs"] == BRIEF_TRAINING[model]["epochs"]
    # The confusion matrix at 0.5 holds every test example and agrees with the
    # accuracy, precision and recall TFMA reported beside it.
    matrix = result["confusion_matrix"]
    assert matrix["threshold"] == tfma_config.DECISION_THRESHOLD
    tp, fp, tn, fn = (matrix[cell] for cell in (
        "true_positives", "false_positives", "true_negatives", "false_negatives"))
    assert tp + fp + tn + fn == result["example_count"]
    assert result["binary_accuracy"] == pytest.approx((tp + tn) / result["example_count"],
                                                      abs=1e-4)
    assert result["precision"] == pytest.approx(tp / (tp + fp), abs=1e-4)
    assert result["recall"] == pytest.approx(tp / (tp + fn), abs=1e-4)
    assert result["mean_label"] == pytest.approx((tp + fn) / result["example_count"],
                                                 abs=1e-4)
    # Slices: every user group and genre, with counts that add up.
    assert set(result["slices"]) == set(tfma_config.SLICE_FEATURES)
    assert sum(s["example_count"] for s in result["slices"][features.USER_GENDER].values()
               ) == result["example_count"]
    assert len(result["slices"][features.MOVIE_GENRES]) >= 10
    assert sum(s["example_count"] for s in result["slices"][features.MOVIE_GENRES].values()
               ) > result["example_count"]  # a movie counts in each of its genres
    history = json.loads((pathlib.Path(_model_run(config, model)) / "history.json").read_text())
    assert len(history["val_auc"]) == BRIEF_TRAINING[model]["epochs"]
    assert list(pathlib.Path(_model_run(config, model)).rglob("events.out.tfevents.*"))
    versions = _pushed_versions(config, model)
    assert len(versions) == 1 and versions[0].isdigit()
    pushed = pathlib.Path(config.serving_model_dir(model)) / versions[0]
    serve = tf.saved_model.load(str(pushed)).signatures["serving_default"]
    assert serve.structured_outputs.keys() == {"like_probability"}

  folder = pathlib.Path(summary.report_path).parent
  markdown = (folder / "report.md").read_text()
  assert "| auc | " in markdown and "0.81 | 0.82" in markdown
  cf_matrix = report["models"]["cf"]["confusion_matrix"]
  assert f"| true_positives @0.5 | {cf_matrix['true_positives']:,} | " in markdown
  for figure in ("roc.png", "training_curves.png", "auc_by_slice.png", "ranking_curves.png"):
    assert (folder / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
  assert not (folder / "tensorboard").exists()  # summaries stay in the artifact

  # The top-k lists each model's `recommend` serves, beside the baselines'.
  ranking = report["ranking"]
  test_users = {u for u in _read_split(_latest_examples(config), "test")[features.USER_ID]}
  assert ranking["users"] == ranking["test_users"] == len(test_users)  # none left out
  assert set(ranking["systems"]) == {"cf", "deepfm", "retrieval", "recommender", "visitor",
                                     "popularity", "ease", "next_movie"}
  for name, system in ranking["systems"].items():
    assert system["already_rated_share"] == 0, name  # train and eval ratings excluded
    assert system["users_scored"] + system["users_without_relevant"] == len(test_users)
    assert 0 < system["metrics"]["ndcg@10"] <= system["metrics"]["hit_rate@10"] <= 1, name
    assert len(system["curves"]["ndcg"]) == 50 and system["curves"]["recall"][-1] <= 1
    # Values in [0, 1] spread at most by a standard deviation of 0.5.
    assert 0 < system["confidence_95"]["ndcg@10"] <= (
        1.96 * 0.51 / np.sqrt(system["users_scored"])), name
  assert "## Top-10 lists" in markdown and "| ndcg@10 | " in markdown
  assert "| ndcg@10, 95% CI ± | " in markdown
  # Users of this release watch to their taste: retrieval finds it, well above
  # popularity, and the recommender built on it is blessed and pushed.
  ndcg = {name: system["metrics"]["ndcg@10"] for name, system in ranking["systems"].items()}
  assert ndcg["retrieval"] > 2 * ndcg["popularity"], ndcg
  assert ndcg["recommender"] > 2 * ndcg["popularity"], ndcg
  # Asked about the same users as visitors, from their ratings alone.
  assert ndcg["visitor"] > 1.5 * ndcg["popularity"], ndcg
  assert ranking["blessing"]["blessed"] is True, ranking["blessing"]
  assert f"recommender: blessed: ndcg@10 {ndcg['recommender']:.4f} >= popularity's" in markdown
  versions = _pushed_versions(config, "recommender")
  assert len(versions) == 1
  served = tf.saved_model.load(str(pathlib.Path(config.serving_model_dir("recommender"))
                                   / versions[0]))
  assert {"recommend", "predict", "predict_raw", "serving_default"} <= set(served.signatures)
  # The evaluated recommender left out train and eval ratings (already_rated_share
  # above); the served one leaves out every rating, test included.
  every_rating = set()
  for split in features.SPLIT_NAMES:
    columns = _read_split(_latest_examples(config), split)
    every_rating |= set(zip(columns[features.USER_ID], columns[features.MOVIE_ID]))
  # So do the pushed like models (ServedModelBuilder), whose Trainers' own
  # `recommend` leaves out train and eval only.
  asked = sorted(test_users)[:100]
  for model in ("recommender", "cf", "deepfm"):
    pushed = tf.saved_model.load(str(pathlib.Path(config.serving_model_dir(model))
                                     / _pushed_versions(config, model)[0]))
    answer = pushed.signatures["recommend"](user_id=tf.constant(asked), k=tf.constant(50))
    served_pairs = {(user, movie) for user, row in zip(asked, answer["movie_ids"].numpy())
                    for movie in row if movie}
    assert len(served_pairs) > 1000, model
    assert not served_pairs & every_rating, model

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


def test_trainers_read_what_tfx_data_accessor_reads(finished_run):
  """The Trainers' batch parser and Transform graph give what TFX's own reader and
  the graph give, with the same dtypes and order, from ExampleGen's raw examples."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
  _, config, summary = finished_run
  graph = max(_live_artifacts(config, "TransformGraph"), key=lambda a: a.id)
  # Transform writes no transformed copy of the examples; ExampleGen's are the only ones.
  assert all("split_counts" in a.custom_properties
             for a in _live_artifacts(config, "Examples"))
  examples_dir = _latest_examples(config).uri
  tf_transform_output = tft.TFTransformOutput(graph.uri)
  pattern = os.path.join(examples_dir, "Split-eval", "*")
  ours = data.load_examples([pattern], tf_transform_output)
  transform = tf_transform_output.transform_features_layer()
  theirs = data.to_columns(tfxio.TFExampleRecord(
      pattern, schema=tf_transform_output.raw_metadata.schema,
      telemetry_descriptors=["test"]).TensorFlowDataset(
          tfxio.TensorFlowDatasetOptions(batch_size=1000, num_epochs=1, shuffle=False))
      .map(transform))
  assert sorted(ours) == sorted(theirs) == sorted(
      tf_transform_output.transformed_feature_spec())
  assert len(ours[features.LABEL]) == summary.split_counts["eval"]
  history = features.transformed_name(features.HISTORY_MOVIE_IDS)
  for key, column in theirs.items():
    # Movie indices in a history are narrowed on purpose: 50 of them per rating.
    assert ours[key].dtype == (np.int32 if key == history else column.dtype), key
    np.testing.assert_array_equal(ours[key], column, err_msg=key)
  with pytest.raises(ValueError, match="no examples match"):
    data.load_examples([os.path.join(examples_dir, "Split-nothing", "*")],
                           tf_transform_output)


def test_report_command_reads_the_stored_run(finished_run, tmp_path, capsys):
  _, config, summary = finished_run
  assert cli.main(["report", config.output_dir]) == 0
  printed = capsys.readouterr().out
  report = model_report.load(os.path.dirname(summary.report_path))
  assert f"{report['models']['cf']['auc']:.4f}" in printed
  assert f"{report['models']['deepfm']['auc']:.4f}" in printed
  assert "cf: blessed: auc" in printed and "reference auc (1M)" in printed

  # Bad run folders: one line naming the problem, no traceback.
  def error_of(run_dir):
    return cli_error(capsys, "report", str(run_dir))

  assert error_of(tmp_path / "nowhere") == f"error: {tmp_path / 'nowhere'}: no such folder"
  assert "is not a pipeline run folder: it has no metadata.sqlite" in error_of(tmp_path)
  # The same run with a report from another version of the project.
  report_dir = pathlib.Path(run_store.RunStore(config.output_dir).require(
      model_report.ReportArtifact.TYPE_NAME))
  stored = json.loads((report_dir / "metrics.json").read_text())
  try:
    (report_dir / "metrics.json").write_text(json.dumps({**stored, "format_version": 1}))
    assert "was written by another version of this project (report format 1" in (
        error_of(config.output_dir))
    (report_dir / "metrics.json").unlink()
    assert "cannot read" in error_of(config.output_dir)
  finally:
    (report_dir / "metrics.json").write_text(json.dumps(stored))


_SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def test_every_pushed_model_has_a_card_made_of_what_the_run_recorded(finished_run, capsys):
  _, config, summary = finished_run
  folder = pathlib.Path(summary.report_path).parent
  report = json.loads((folder / "metrics.json").read_text())
  ranking = report["ranking"]
  counts = json.loads(_latest_examples(config).get_string_custom_property("split_counts"))
  for model in ("cf", "deepfm", "recommender"):
    card = (folder / "cards" / f"{model}.md").read_text()
    assert "<table>" in (folder / "cards" / f"{model}.html").read_text()
    assert "**Release**: movielens/1m-ratings" in card
    assert f"- **train**: {counts['train']:,} ratings" in card
    system = ranking["systems"][model]
    assert (f"| {system['metrics']['ndcg@10']:.4f} ± {system['confidence_95']['ndcg@10']:.4f}"
            in card)
    if model != "recommender":
      assert f"| auc | {report['models'][model]['auc']:.4f} |" in card
      assert f"`Trainer.{model}`, {BRIEF_TRAINING[model]['epochs']} epochs" in card
    # Beside the pushed versions too: every model of this run was blessed and pushed.
    assert (pathlib.Path(config.serving_dir) / model / "model_card.md").read_text() == card
  assert "## Model cards" in (folder / "report.md").read_text()
  assert cli.main(["card", config.output_dir]) == 0
  printed = capsys.readouterr().out
  deepfm_card = folder / "cards" / "deepfm.md"
  assert f"deepfm: {deepfm_card} (and .html); beside the pushed model: " in printed
  assert len(printed.splitlines()) == 3


def test_pushed_models_serve_as_tf_serving_loads_them(finished_run, capsys):
  """The serving folder as TF Serving reads it (the binary cannot be installed here)."""
  _, config, _ = finished_run
  serving = pathlib.Path(config.serving_dir)
  policy = ("    model_version_policy {\n      latest {\n        num_versions: 2\n"
            "      }\n    }\n")
  assert (serving / "models.config").read_text() == (
      'model_config_list {\n'
      '  config {\n    name: "cf"\n    base_path: "/models/cf"\n'
      f'    model_platform: "tensorflow"\n{policy}  }}\n'
      '  config {\n    name: "deepfm"\n    base_path: "/models/deepfm"\n'
      f'    model_platform: "tensorflow"\n{policy}  }}\n'
      '  config {\n    name: "recommender"\n    base_path: "/models/recommender"\n'
      f'    model_platform: "tensorflow"\n{policy}  }}\n}}\n')
  examples = _latest_examples(config)
  user = _read_split(examples, "test")[features.USER_ID][0].decode()
  first_file = tf.io.gfile.glob(os.path.join(
      artifact_utils.get_split_uri([examples], "test"), "*.gz"))[0]
  record = next(iter(tf.data.TFRecordDataset(first_file, compression_type="GZIP")))
  example = tf.train.Example.FromString(record.numpy()).features.feature
  raw_keys = {"cf": features.CF_RAW_FEATURES, "deepfm": features.DEEPFM_RAW_FEATURES}
  for model in ("cf", "deepfm"):
    pushed = serving / model / _pushed_versions(config, model)[0]
    loaded = tf.saved_model.load(str(pushed)).signatures
    assert set(loaded) == {"serving_default", "predict_raw", "predict", "recommend",
                           "transform_features"}
    top = loaded["recommend"](user_id=tf.constant([user, "never-seen"]), k=tf.constant(10))
    assert top["movie_ids"].shape == (2, 10)
    # saved_model_cli, as TF Serving users call a model: one raw test example with
    # the features this model needs, as saved_model_cli builds tf.Examples from JSON.
    values = {}
    for key in raw_keys[model]:
      feature = example[key]
      kind = feature.WhichOneof("kind")
      values[key] = [v.decode() if kind == "bytes_list" else v
                     for v in getattr(feature, kind).value]
    ran = subprocess.run(
        [_SAVED_MODEL_CLI, "run", "--dir", str(pushed), "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--input_examples", f"examples=[{json.dumps(values)}]"],
        capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "like_probability" in ran.stdout

  # recsys recommend: the latest pushed model, in-process, with titles from the run.
  assert cli.main(["recommend", "--user", user, "--k", "5", "--model", "deepfm",
                   "--run-dir", config.output_dir]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith(f"Top 5 movies for user {user} (deepfm from ")
  rows = printed[2:]
  assert len(rows) == 5 and all(re.search(r"\(\d{4}\)", row) for row in rows)  # titles
  # The default: the pushed two-stage recommender.
  assert cli.main(["recommend", "--user", "someone-new", "--k", "3",
                   "--run-dir", config.output_dir]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith("Top 3 movies for user someone-new (recommender from ")
  assert len(printed) == 5
  # A visitor in no table, from the movies they rated: never offered those again.
  assert cli.main(["recommend", "--history", "1,2,3", "--k", "4",
                   "--run-dir", config.output_dir]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith("Top 4 movies for a visitor who rated 1, 2, 3 (recommender ")
  offered = [row.split()[1] for row in printed[2:]]
  assert len(offered) == 4 and not set(offered) & {"1", "2", "3"}
  assert cli.main(["recommend", "--user", user, "--k", "0",
                   "--run-dir", config.output_dir]) == 1
  assert "k must be between 1 and 100" in capsys.readouterr().err


def _wait_for(url, seconds):
  deadline = time.monotonic() + seconds
  while True:
    try:
      with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)
    except OSError:
      if time.monotonic() > deadline:
        raise
      time.sleep(1)


_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_CHROMIUM is None, reason=(
    "Chromium is not installed: `make test` installs Debian's chromium where it "
    "can (apt-get as root); elsewhere install it to run this browser test"))
def test_tensorboard_shows_both_evaluations_in_a_browser(finished_run, tmp_path):
  _, config, summary = finished_run
  report = model_report.load(os.path.dirname(summary.report_path))
  port = ports.free_port()
  board = subprocess.Popen(
      [sys.executable, "-m", "pipeline.cli", "tensorboard", config.output_dir,
       "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    url = f"http://localhost:{port}"
    runs = _wait_for(f"{url}/data/runs", seconds=120)
    assert set(runs) == {"cf/train", "cf/validation", "deepfm/train", "deepfm/validation",
                         "retrieval/train", "retrieval/validation", "evaluation/cf",
                         "evaluation/deepfm", "evaluation/retrieval",
                         "evaluation/recommender", "evaluation/visitor",
                         "evaluation/popularity", "evaluation/ease", "evaluation/next_movie"}
    tags = _wait_for(f"{url}/data/plugin/scalars/tags", seconds=10)
    # The top-k curves of every model and baseline, with k as the step.
    for system in report["ranking"]["systems"]:
      assert {"ranking/ndcg@k", "ranking/recall@k", "ranking/ndcg@10"} <= set(
          tags[f"evaluation/{system}"])
      curve = _wait_for(f"{url}/data/plugin/scalars/scalars?run=evaluation%2F{system}"
                        "&tag=ranking%2Fndcg%40k", seconds=10)
      assert [point[1] for point in curve] == list(range(1, 51))
      assert curve[9][2] == pytest.approx(
          report["ranking"]["systems"][system]["metrics"]["ndcg@10"], abs=1e-6)
    for model in ("cf", "deepfm"):
      assert {"test/auc", "test/auc_precision_recall", "test/blessed",
              "test/true_positives@0.5", "test/false_negatives@0.5",
              "test_slices/user_gender/male/auc"} <= set(tags[f"evaluation/{model}"])
      assert "epoch_auc" in tags[f"{model}/validation"]
      points = _wait_for(f"{url}/data/plugin/scalars/scalars?run=evaluation%2F{model}"
                         "&tag=test%2Fauc", seconds=10)
      assert points[-1][2] == pytest.approx(report["models"][model]["auc"], abs=1e-4)
    plugins = _wait_for(f"{url}/data/plugins_listing", seconds=10)
    assert plugins["pr_curves"]["enabled"] and plugins["fairness_indicators"]["enabled"]
    fairness = _wait_for(f"{url}/data/plugin/fairness_indicators/get_evaluation_result"
                         "?run=evaluation%2Fcf", seconds=10)
    assert {entry["slice"] for entry in fairness} >= {"user_gender:0", "user_gender:1"}

    # As a person sees it: the evaluation cards of both models in headless Chromium.
    page = f"{url}/?tagFilter=%5Etest%2F&runFilter=evaluation#timeseries"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-quic", f"--user-data-dir={tmp_path / 'chromium'}",
             "--window-size=1400,1000", "--run-all-compositor-stages-before-draw",
             "--virtual-time-budget=60000"]
    # TensorBoard renders only the cards in view: the first row or two of 14.
    expected = ("evaluation/cf", "evaluation/deepfm", "test/auc", "test/auc_precision_recall",
                "test/binary_accuracy")
    # On a loaded machine the page can be dumped before the cards arrive (seen once
    # in CI); like a person, load it again, at most three times in all.
    for _ in range(3):
      dom = subprocess.run([_CHROMIUM, *flags, "--dump-dom", page], capture_output=True,
                           text=True, timeout=180, check=True).stdout
      if all(text in dom for text in expected):
        break
    for text in expected:
      assert text in dom, text
    screenshot = tmp_path / "tensorboard.png"
    subprocess.run([_CHROMIUM, *flags, f"--screenshot={screenshot}", page],
                   capture_output=True, timeout=180, check=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
  finally:
    board.terminate()
    board.wait(timeout=30)


def test_reruns_cache_reject_worse_models_and_keep_pushed_ones(finished_run, monkeypatch,
                                                               tmp_path):
  _, _, first = finished_run
  config = copy_of_finished_run(finished_run, tmp_path / "run")
  first_report = model_report.load(os.path.dirname(first.report_path))
  pushed = {model: _pushed_versions(config, model) for model in ("cf", "deepfm", "recommender")}

  # CF trained for one epoch, and both like models judged against a floor no model
  # reaches: neither is blessed or pushed, and the report gives every reason. One
  # epoch of CF is also worse than the blessed CF by more than the allowed drop.
  # Everything else is unchanged and comes from the cache, DeepFM and the
  # recommender built on it included; but every Evaluator runs again, now against
  # the latest blessed models (this run's own, for DeepFM and the recommender). The
  # recommender is blessed again and not pushed again: the same SavedModel is
  # already served.
  worse = dataclasses.replace(config, auc_floor=0.99,
                              overrides={**config.overrides, "cf": {"epochs": 1}})
  summary = local_runner.run(worse)
  states = _states(summary)
  assert states["Trainer.cf"] == states["Evaluator.deepfm"] == states["Pusher.cf"] == "done"
  assert states["RankingEvaluator"] == states["Pusher.recommender"] == "done"
  for node in ("MovieLensExampleGen", "Transform", "Trainer.deepfm", "Trainer.retrieval",
               "RecommenderBuilder", "ServedModelBuilder.deepfm"):
    assert states[node] == "cached", (node, states)
  report = model_report.load(os.path.dirname(summary.report_path))
  for model in ("cf", "deepfm"):
    result = report["models"][model]
    assert result["baseline_auc"] == pytest.approx(first_report["models"][model]["auc"],
                                                   abs=1e-4)
    assert result["blessed"] is False
    assert "is below the floor 0.9900" in result["blessing_reason"]
    if result["auc"] < result["baseline_auc"] - config.max_auc_drop:
      assert "below the latest blessed model's (allowed drop 0.0050)" in (
          result["blessing_reason"])
  cf = report["models"]["cf"]
  assert cf["auc"] < cf["baseline_auc"] - config.max_auc_drop  # one epoch of CF is far worse
  assert report["ranking"]["blessing"]["blessed"] is True
  assert {model: _pushed_versions(config, model) for model in pushed} == pushed

  # Once more: now every component is served from the cache.
  states = _states(local_runner.run(worse))
  assert {state for node, state in states.items()
          if not node.startswith("LatestBlessed")} == {"cached"}
  # Edited code reruns the component that runs it, and only that one: its code's
  # fingerprint keys the cache. (Which components an edit of a given module
  # reaches is test_code_fingerprint's subject.)
  real_fingerprint = pipeline_dsl.code_fingerprint_of

  def after_an_edit_of_the_report(component):
    return real_fingerprint(component) + ("-edited" if component == "ModelReport" else "")

  with monkeypatch.context() as edited:
    edited.setattr(pipeline_dsl, "code_fingerprint_of", after_an_edit_of_the_report)
    states = _states(local_runner.run(worse))
  assert {node: state for node, state in states.items()
          if state != "cached" and not node.startswith("LatestBlessed")} == {
              "ModelReport": "done"}


def test_anomaly_stops_the_run_naming_the_feature(synthetic_1m, tmp_path):
  data_dir = tmp_path / "data"
  shutil.copytree(synthetic_1m.folder, data_dir)
  movies = data_dir / "movies.dat"
  lines = movies.read_bytes().split(b"\n")
  lines[0] = lines[0].rsplit(b"::", 1)[0] + b"::Cyberpunk"  # not a MovieLens genre
  movies.write_bytes(b"\n".join(lines))
  config = pipeline_config(data_dir, tmp_path / "run")
  with pytest.raises(DataValidationError) as error:
    local_runner.run(config)
  message = str(error.value)
  assert "feature 'movie_genres'" in message and "Unexpected string values" in message
  states = _states(run_state.summarize_run(config))
  assert states["ExampleValidator"] == "done"
  assert states["AnomaliesGate"] == "failed"


def test_malformed_data_fails_ingestion_and_registers_nothing(synthetic_1m, tmp_path):
  data_dir = tmp_path / "data"
  shutil.copytree(synthetic_1m.folder, data_dir)
  ratings = data_dir / "ratings.dat"
  lines = ratings.read_text().splitlines()
  lines[4999] = "1::2::11::978300760"
  ratings.write_text("\n".join(lines) + "\n")
  config = pipeline_config(data_dir, tmp_path / "run")
  with pytest.raises(MovieLensDataError, match=(
      f"^{ratings}, line 5000: rating '11' is outside 1 to 5$")):
    local_runner.run(config)
  assert _states(run_state.summarize_run(config))["MovieLensExampleGen"] == "failed"
  assert not _live_artifacts(config, "Examples")  # nothing registered at all


def test_cli_reports_bad_input_in_one_line(synthetic_1m, tmp_path, capsys):
  data_dir = tmp_path / "data"
  shutil.copytree(synthetic_1m.folder, data_dir)
  users = data_dir / "users.dat"
  lines = users.read_text(encoding="iso-8859-1").splitlines()
  lines[2] = lines[2].replace("::", ":", 1)
  users.write_text("\n".join(lines) + "\n", encoding="iso-8859-1")
  assert cli.main(["run", "--dataset", "1m", "--data-dir", str(data_dir), "--output-dir",
                   str(tmp_path / "run"), "--beam-arg=--direct_num_workers=1"]) == 1
  console = capsys.readouterr().err
  assert console.strip().splitlines()[-1].startswith(
      f"error: {users}, line 3: expected 5 fields separated by '::'")
  assert "Traceback" not in console
  assert re.search(r"stage \d+/\d+: MovieLensExampleGen running", console)
  # Every line before the error is a progress line: the rest went to the run's log.
  before = console.strip().splitlines()[:-1]
  assert before and all(line.startswith("[recsys ") or not line for line in before)
