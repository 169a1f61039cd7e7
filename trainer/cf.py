"""TFX Trainer entry point of the collaborative-filtering like model."""
from models import cf
from models import features
from trainer import run


def run_fn(fn_args) -> None:
  """Trains `models.cf` on the run's examples and exports it for serving."""
  run.run(fn_args, "cf", cf.build, features.CF_RAW_FEATURES)
