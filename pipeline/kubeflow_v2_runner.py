"""Compiles the pipeline for Kubeflow Pipelines v2 and Vertex AI Pipelines.

The spec holds the same components as a local run (pipeline.create_pipeline),
without the local SQLite ML Metadata: the cluster keeps its own. Every step runs
in one container image that has this project installed at IMAGE_PROJECT_DIR (the
Dockerfile at the repository root builds it FROM tensorflow/tfx:1.16.0): the steps
import our executors, run_fns and preprocessing_fn from there and ImportSchemaGen
reads the schema file there. Vertex AI Pipelines runs the same PipelineJob spec.
"""
import dataclasses
import os
from typing import Any, Dict

from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_dsl

# Where the Dockerfile puts this project inside the image (its WORKDIR).
IMAGE_PROJECT_DIR = "/opt/recsys"


def in_image(path: str) -> str:
  """A file of this project as the steps running in the image see it; others as given."""
  relative = os.path.relpath(path, configs.PROJECT_DIR)
  return path if relative.startswith("..") else os.path.join(IMAGE_PROJECT_DIR, relative)


def _setup_file_in_image(flag: str) -> str:
  name, _, path = flag.partition("=")
  return f"{name}={in_image(path)}" if name == "--setup_file" else flag


def compile_pipeline(config: configs.PipelineConfig, image: str,
                     output_file: str) -> Dict[str, Any]:
  """Writes the PipelineJob spec (JSON) of the pipeline to `output_file`; returns it.

  Args:
    config: the run's settings; its pipeline_root, data_dir and serving_dir are
      paths as the cluster's containers see them.
    image: the container image of every step, built from this repository's
      Dockerfile.
    output_file: where to write the JSON spec.
  """
  config = dataclasses.replace(
      config, schema_file=in_image(config.schema_file),
      beam_args=[_setup_file_in_image(arg) for arg in config.beam_args])
  output_file = os.path.abspath(output_file)
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=image),
      output_dir=os.path.dirname(output_file),
      output_filename=os.path.basename(output_file))
  return runner.run(pipeline_dsl.create_pipeline(config, local_metadata=False))
