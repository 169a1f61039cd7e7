"""TFX Trainer entry point of the two-tower retrieval model."""
from models import features
from models import retrieval
from trainer import run


def run_fn(fn_args) -> None:
  """Trains `models.retrieval` on the run's examples and exports it for serving.

  The pipeline gives this Trainer the train and eval splits as training data:
  a user's most recent ratings (eval, under the temporal split) say most about
  what they watch next. Its eval loss is therefore not held out; nothing is chosen
  on it (no early stopping), and the model is judged on the test split by its lists.
  """
  run.run(fn_args, "retrieval", retrieval.build, features.RETRIEVAL_RAW_FEATURES)
