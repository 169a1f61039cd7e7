"""ServedModelBuilder: the form of a like model (CF, DeepFM) that is pushed.

A Trainer's SavedModel leaves out of `recommend` the movies each user rated in the
splits it learned from, train and eval: RankingEvaluator judges its lists on the
test split, whose movies must stay candidates. Pushed so, it would offer users
films they rated in the test split. This component writes the pushed form: the
same SavedModel, whose `recommend` also leaves out every rating ingested
(export/served.py), as RecommenderBuilder's served recommender does. One node per
like model (`ServedModelBuilder.cf`, `.deepfm`), between its Evaluator and Pusher.
"""
import time
from typing import List

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from common import progress
from components import ranking_evaluator
from evaluation import ranking
from export import served
from models import features


def build(split_patterns, model_dir: str, tf_transform_output: tft.TFTransformOutput,
          served_dir: str, name: str) -> None:
  """Writes the SavedModel in `model_dir` again, excluding every rating, to `served_dir`."""
  started = time.monotonic()
  splits = ranking.read_splits(split_patterns)
  every_split = tuple(splits.splits)
  users, movies = ranking.rated_pairs(splits, every_split)
  # As many more candidates as the most ratings any one user has: enough whatever
  # the model leaves out itself (with spans, its Trainer saw none of the earlier
  # spans' test splits).
  deeper = ranking.most_ratings(splits, every_split)
  catalogue = np.array(tf_transform_output.vocabulary_by_name(features.MOVIE_ID), object)
  model = served.ServedLikeModel(tf.saved_model.load(model_dir),
                                 served.UserRatings(users, movies, catalogue), deeper=deeper,
                                 catalogue_size=len(catalogue))
  served.export_like_model(model, served_dir)
  progress.report(f"serve {name}", f"served model: {len(users):,} ratings of "
                  f"{'+'.join(every_split)} excluded, written in "
                  f"{time.monotonic() - started:.1f} s")


@component
def ServedModelBuilder(examples: InputArtifact[standard_artifacts.Examples],
                       transform_graph: InputArtifact[standard_artifacts.TransformGraph],
                       model: InputArtifact[standard_artifacts.Model],
                       served_model: OutputArtifact[standard_artifacts.Model],
                       model_name: Parameter[str], code_fingerprint: Parameter[str],
                       history: InputArtifact[List[standard_artifacts.Examples]] = None):
  """`model` as it is pushed (`served_model`): every rating excluded from `recommend`.

  `history`: with spans, the spans the model learned from
  (ranking_evaluator.split_patterns). `code_fingerprint` (common.code_fingerprint)
  only keys the cache.
  """
  del code_fingerprint
  build(ranking_evaluator.split_patterns(examples, history or ()),
        path_utils.serving_model_path(model.uri), tft.TFTransformOutput(transform_graph.uri),
        path_utils.serving_model_dir(served_model.uri), model_name)
