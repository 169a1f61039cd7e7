"""TFX Trainer entry point of the DeepFM like model."""
from models import deepfm
from models import features
from trainer import run


def run_fn(fn_args) -> None:
  """Trains `models.deepfm` on the run's examples and exports it for serving."""
  run.run(fn_args, "deepfm", deepfm.build, features.DEEPFM_RAW_FEATURES)
