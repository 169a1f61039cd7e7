"""The whole pipeline on the real MovieLens-100K files, when they are at hand.

Its own module, so that pytest-xdist can run it beside test_pipeline.py's runs.
"""
import os

import numpy as np
import pyarrow.compute as pc
import pytest

from components import model_report
from components.movielens_example_gen import parsing
from models import features
from pipeline import local_runner
from tests.conftest import REAL_100K
from tests.conftest import pipeline_config
from tests.conftest import requires
from tests.test_pipeline import _latest_examples
from tests.test_pipeline import _read_split
from tests.test_pipeline import _states

pytestmark = pytest.mark.e2e


@requires(REAL_100K)
def test_real_100k_ingestion(tmp_path):
  # The tuned settings, but one pair of retrieval towers: this checks the data and
  # the quality gates on real users; the ensemble is test_models.py's subject.
  config = pipeline_config(REAL_100K, tmp_path / "run", dataset="100k",
                           overrides={"retrieval": {"towers": 1}})
  summary = local_runner.run(config)
  assert set(_states(summary).values()) == {"done"}
  everything = model_report.load(os.path.dirname(summary.report_path))
  report = everything["models"]
  assert report["cf"]["auc"] > 0.78 and report["deepfm"]["auc"] > 0.78, report
  assert report["cf"]["blessed"] and report["deepfm"]["blessed"]
  # The served recommender on real users: well above "most liked", and blessed.
  ndcg = {name: system["metrics"]["ndcg@10"]
          for name, system in everything["ranking"]["systems"].items()}
  assert ndcg["recommender"] > 1.5 * ndcg["popularity"], ndcg
  # A visitor in no table, from their ratings alone (issue 37's floor: 1.3x).
  assert ndcg["visitor"] > 1.3 * ndcg["popularity"], ndcg
  assert everything["ranking"]["blessing"]["blessed"] is True
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
