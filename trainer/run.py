"""The body of every model's TFX Trainer `run_fn`: read, train, log, export."""
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from common import progress
from export import saved_model
from models import calibration
from models import data
from models import features
from models import history as training_history
from models import hparams as hp
from models import runtime
from models import training
from models import warm_start

_PREDICT_BATCH = 65_536


def run(fn_args, model_name: str, build: Callable, raw_feature_keys: Sequence[str]) -> None:
  """The body of every model's `run_fn`: read, train, calibrate, log, export.

  `fn_args.custom_config` holds {"hparams": {...}, "seed": int, "distribution":
  str}; the pipeline fills it from `models.hparams` and the run's settings, and
  adds "code_fingerprint", which only keys the cache, and "workers" when the
  Trainer runs this on several local worker processes, each with its own TF_CONFIG
  (components/multi_worker_trainer.py).

  With `fn_args.base_model` (the latest blessed model of this kind, when the
  Trainer has a `base_model` input), the model starts from its weights, carried
  over by id (models/warm_start.py) and shrunk by `warm_start_shrink`, and trains
  on from there, for `warm_start_epochs` where the hyperparameters set them.
  """
  config = fn_args.custom_config
  hparams = hp.from_config(model_name, config["hparams"])
  seed = int(config["seed"])
  # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the
  # collective ops, which a process that has run an op can no longer do.
  strategy = runtime.distribution_strategy(config.get("distribution", hp.NO_DISTRIBUTION))
  if strategy.extended.should_checkpoint:
    _train_and_export(fn_args, model_name, build, raw_feature_keys, strategy, hparams, seed,
                      fn_args.model_run_dir, fn_args.serving_model_dir)
  else:
    # A worker other than the chief: it takes part in training and saving (a
    # multi-worker save gathers variables from every worker), but only the
    # chief's logs and model are the Trainer's outputs; its own are deleted.
    scratch = tempfile.mkdtemp(prefix=f"{model_name}-worker-")
    progress.report(f"train {model_name}", f"not the chief: model and logs to {scratch}, "
                    "deleted after export")
    try:
      _train_and_export(fn_args, model_name, build, raw_feature_keys, strategy, hparams,
                        seed, os.path.join(scratch, "model_run"),
                        os.path.join(scratch, "model"))
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
  # TFX checks that the chief's model exists once run_fn returns, on every worker:
  # none may return before the chief has exported it.
  runtime.wait_for_every_worker(strategy)


def _train_and_export(fn_args, model_name: str, build: Callable,
                      raw_feature_keys: Sequence[str], strategy: tf.distribute.Strategy,
                      hparams, seed: int, model_run_dir: str, serving_model_dir: str) -> None:
  """`run`'s work on this worker, its logs to `model_run_dir`, its model to
  `serving_model_dir`."""
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  histories = hp.uses_history(hparams)
  train_examples = data.load_examples(fn_args.train_files, tf_transform_output, histories)
  eval_examples = data.load_examples(fn_args.eval_files, tf_transform_output, histories)
  base_model = _base_model(fn_args, model_name)
  if base_model:
    hparams = hp.for_warm_start(hparams)
  replicas = strategy.num_replicas_in_sync
  progress.report(f"train {model_name}", f"{len(train_examples[features.LABEL]):,} train "
                  f"and {len(eval_examples[features.LABEL]):,} eval examples, {hparams}"
                  + (f", on {replicas} replicas" if replicas > 1 else ""))

  def start_from_base_model(model):
    training.create_variables(model, train_examples)
    warm_start.warm_start(model, tf_transform_output, base_model, model_name,
                          shrink=hparams.warm_start_shrink)

  model, history = training.fit(strategy, model_name, build,
                                data.vocabulary_sizes(tf_transform_output), hparams,
                                train_examples, eval_examples, model_run_dir, seed,
                                before_training=start_from_base_model if base_model else None)
  training_history.write(history, model_run_dir)
  if getattr(model, "predicts_likes", True):
    model.calibration = _calibrate(model, eval_examples, model_name)
  saved_model.export(model, tf_transform_output, raw_feature_keys, serving_model_dir,
                     train_examples, also_rated=[eval_examples])
  progress.report(f"train {model_name}", f"exported to {serving_model_dir}")


def _base_model(fn_args, model_name: str):
  """The base model's serving directory, or None to start from scratch.

  TFX sets `fn_args.base_model` when the Trainer has a `base_model` input and the
  resolver found a model; a folder that is gone (its artifact deleted) means a
  cold start, said so, rather than a failed run.
  """
  base_model = getattr(fn_args, "base_model", None)
  if base_model and not tf.io.gfile.isdir(base_model):
    progress.report(f"train {model_name}", f"base model {base_model} not found: "
                    "training from scratch")
    return None
  return base_model or None


def _calibrate(model, eval_examples, model_name: str) -> calibration.Calibration:
  """Platt scaling fitted on the eval split (models/calibration.py)."""
  labels = eval_examples[features.LABEL]
  inputs = {k: v for k, v in eval_examples.items() if k != features.LABEL}
  probabilities = np.concatenate([
      tf.reshape(tf.cast(model(batch, training=False), tf.float32), [-1]).numpy()
      for batch in tf.data.Dataset.from_tensor_slices(inputs).batch(_PREDICT_BATCH)])
  slope, intercept = calibration.fit(probabilities, labels)
  fitted = calibration.Calibration(slope, intercept)
  calibrated = fitted(probabilities).numpy()
  progress.report(f"train {model_name}", f"calibrated on eval: mean prediction "
                  f"{probabilities.mean():.4f} -> {calibrated.mean():.4f} (mean label "
                  f"{labels.mean():.4f}; slope {slope:.3f}, intercept {intercept:+.3f})")
  return fitted
