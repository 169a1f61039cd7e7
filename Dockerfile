# The image of every step when the pipeline runs on Kubeflow Pipelines v2 or Vertex
# AI Pipelines (`recsys compile --image`), and of the Beam workers on Dataflow
# (`--beam-arg=--sdk_container_image=IMAGE`). Build it from the repository root:
#   docker build -t REGISTRY/recsys:TAG . && docker push REGISTRY/recsys:TAG
# TFX's image brings Python 3.10, the TFX 1.16 stack and Beam's worker boot
# (/opt/apache/beam/boot, its entrypoint, which Dataflow starts; Kubeflow gives each
# step its own command).
FROM tensorflow/tfx:1.16.0

# pipeline/kubeflow_v2_runner.py's IMAGE_PROJECT_DIR: the compiled spec reads the
# schema file from here.
WORKDIR /opt/recsys
# Our packages set it on import too; here every process starts with it.
ENV TF_USE_LEGACY_KERAS=1

# The exact versions the project is tested with, then the project itself without
# resolving anything again (editable, so its files stay at /opt/recsys).
COPY requirements.lock ./
RUN python -c "import sys; assert sys.version_info[:2] == (3, 10), sys.version" && \
    python -m pip install --no-cache-dir -r requirements.lock
COPY setup.py ./
COPY common/ common/
COPY models/ models/
COPY serving/ serving/
COPY export/ export/
COPY evaluation/ evaluation/
COPY trainer/ trainer/
COPY components/ components/
COPY engines/ engines/
COPY pipeline/ pipeline/
COPY testing/ testing/
RUN python -m pip install --no-cache-dir --no-deps -e . && \
    python -c "import pipeline.pipeline, trainer.cf, trainer.deepfm"
