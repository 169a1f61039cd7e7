"""How TensorFlow runs our models: AutoGraph's rules, dtype policy, tf.distribute strategy."""
import contextlib
import functools
from typing import Iterator

import tensorflow as tf
from tensorflow.python.autograph.core import config as autograph_config

from models import hparams as hp


def leave_tf_keras_to_tensorflow() -> None:
  """Stops AutoGraph from rewriting tf-keras' own code on every trace.

  AutoGraph converts each Python function a tf.function calls unless its module
  is on a list; TensorFlow 2.16 lists `keras` but not `tf_keras`, the package
  TF_USE_LEGACY_KERAS selects, so tracing a train step rewrote Keras' layers,
  losses and metrics from their source, which made the first epoch several times
  slower for the same numbers (docs/performance.md). Our own layers are still
  converted, as Keras converts a layer's `call`. The rule list is internal to TensorFlow
  (`autograph/core/config.py`), which requirements.lock pins.
  """
  rules = autograph_config.CONVERSION_RULES
  if not any(getattr(rule, "_prefix", None) == "tf_keras" for rule in rules):
    autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"),
                                         *rules)


@functools.lru_cache(maxsize=None)
def _cpu_has_bfloat16() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      flags = f.read()
  except OSError:
    return False
  return " avx512_bf16" in flags or " amx_bf16" in flags


def uses_bfloat16(hparams) -> bool:
  """Whether the model computes in bfloat16: asked for, and fast on this CPU."""
  return getattr(hparams, "mixed_precision", "off") == "auto" and _cpu_has_bfloat16()


@contextlib.contextmanager
def precision_policy(bfloat16: bool) -> Iterator[None]:
  """Keras' dtype policy for the models built inside; restored afterwards."""
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy("mixed_bfloat16" if bfloat16 else "float32")
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


# models.hparams.DISTRIBUTIONS -> the tf.distribute strategy it names.
_STRATEGIES = {
    hp.NO_DISTRIBUTION: tf.distribute.get_strategy,  # the default: one device
    "mirrored": tf.distribute.MirroredStrategy,
    # Reads the cluster (every worker's address, this task's type and index) from
    # the TF_CONFIG environment variable, which the cluster's scheduler sets.
    "multi_worker_mirrored": tf.distribute.MultiWorkerMirroredStrategy,
}
assert tuple(_STRATEGIES) == hp.DISTRIBUTIONS


def distribution_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy called `name` (one of models.hparams.DISTRIBUTIONS)."""
  try:
    return _STRATEGIES[name]()
  except KeyError:
    raise ValueError(f"distribution must be one of {', '.join(hp.DISTRIBUTIONS)}, "
                     f"got {name!r}") from None


def wait_for_every_worker(strategy: tf.distribute.Strategy) -> None:
  """Returns once every worker of a MultiWorkerMirroredStrategy has called it.

  An all-reduce, which completes on no worker before every worker has joined it;
  with one worker, or another strategy, it returns at once.
  """
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)),
                    axis=None)
