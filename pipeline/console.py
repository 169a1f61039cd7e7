"""What a run shows a person: one line per stage on the console, everything else in the log.

By default the console carries only our progress lines, our warnings and errors.
TFX's, Beam's and TensorFlow's logs and warnings, from Python and from C++
alike, go to the run's log file (`<output_dir>/logs/run-<time>.log`); `verbose`
shows their warnings on the console as well.
"""
import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator, List, Optional

from absl import logging as absl_logging
from tfx.orchestration.portable import launcher

from common import progress


class StageProgress:
  """Prints a line when each component starts and ends, and how long it took.

  Wraps TFX's component launcher for the duration of a run instead of watching
  its log lines: TensorFlow's SavedModel export and absl flag parsing reset absl's
  verbosity mid-run, TFX's INFO records then stopped, and with them the progress.
  """

  def __init__(self, node_ids: List[str], before_each: Callable[[], None]):
    self._node_ids = node_ids
    self._before_each = before_each

  @contextlib.contextmanager
  def installed(self) -> Iterator[None]:
    original_launch = launcher.Launcher.launch
    original_prepare = launcher.Launcher._prepare_execution  # pylint: disable=protected-access
    node_ids, before_each = self._node_ids, self._before_each

    def prepare(component_launcher, *args, **kwargs):
      result = original_prepare(component_launcher, *args, **kwargs)
      component_launcher.recsys_cached = not result.is_execution_needed
      return result

    def launch(component_launcher):
      node_id = component_launcher._pipeline_node.node_info.id  # pylint: disable=protected-access
      position = (f"{node_ids.index(node_id) + 1}/{len(node_ids)}"
                  if node_id in node_ids else "-")
      before_each()
      progress.report(f"stage {position}", f"{node_id} running")
      started = time.monotonic()
      try:
        result = original_launch(component_launcher)
      except BaseException:
        progress.report(f"stage {position}", f"{node_id} failed after "
                        f"{time.monotonic() - started:.1f} s")
        raise
      how = ("reused from cache" if getattr(component_launcher, "recsys_cached", False)
             else "done")
      progress.report(f"stage {position}",
                      f"{node_id} {how} in {time.monotonic() - started:.1f} s")
      return result

    launcher.Launcher.launch = launch
    launcher.Launcher._prepare_execution = prepare  # pylint: disable=protected-access
    try:
      yield
    finally:
      launcher.Launcher.launch = original_launch
      launcher.Launcher._prepare_execution = original_prepare  # pylint: disable=protected-access


# Console warnings that say nothing to a user (they still go to the log file).
_NOISE = ("ArtifactQuery.property_predicate is not supported",)
_SILENT = logging.CRITICAL + 1


def _not_noise(record: logging.LogRecord) -> bool:
  return not any(text in str(record.msg) for text in _NOISE)


def _console_handlers() -> List[logging.Handler]:
  """The root logger's handlers (absl's among them), and the stream handlers of
  loggers that have their own (TensorFlow's)."""
  others = [logger for logger in logging.root.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)]
  return logging.getLogger().handlers + [
      handler for logger in others for handler in logger.handlers
      if isinstance(handler, logging.StreamHandler)
      and not isinstance(handler, logging.FileHandler)]


@contextlib.contextmanager
def logs_to_file(log_path: str, verbose: bool = False) -> Iterator[Callable[[], None]]:
  """Sends INFO logs and Python warnings to `log_path`.

  The console's log handlers are muted, or with `verbose` kept to warnings.
  Yields a function that re-applies the INFO level (see StageProgress), called
  before each component.
  """
  root = logging.getLogger()
  saved_level = root.level
  saved_handler_levels = [(h, h.level) for h in _console_handlers()]
  for handler, _ in saved_handler_levels:
    handler.setLevel(max(handler.level, logging.WARNING if verbose else _SILENT))
    handler.addFilter(_not_noise)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  file_handler = logging.FileHandler(log_path)
  file_handler.setLevel(logging.INFO)
  file_handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(name)s: %(message)s"))
  root.addHandler(file_handler)
  if not verbose:
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger
  # Through absl's verbosity flag, not the absl logger's level: TensorFlow's
  # SavedModel export sets the flag to FATAL and back, and Transform's flag parsing
  # resets it, which would drop TFX's INFO records from the log file.
  saved_verbosity = absl_logging.get_verbosity()

  def log_info():
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)

  log_info()
  try:
    yield log_info
  finally:
    logging.captureWarnings(False)
    root.removeHandler(file_handler)
    file_handler.close()
    root.setLevel(saved_level)
    absl_logging.set_verbosity(saved_verbosity)
    for handler, level in saved_handler_levels:
      handler.setLevel(level)
      handler.removeFilter(_not_noise)


def _file_descriptor(stream) -> Optional[int]:
  try:
    return stream.fileno()
  except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
    return None


@contextlib.contextmanager
def output_to_file(log_path: str) -> Iterator[None]:
  """Everything printed to stdout and stderr goes to `log_path`, except our progress.

  At the file-descriptor level, so that what TensorFlow's C++ code, Beam's worker
  processes and libraries that print directly write lands in the log too; the
  progress lines keep the console the run started with.
  """
  console = sys.stderr
  own_console = None
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  if _file_descriptor(sys.stderr) == 2:
    own_console = console = os.fdopen(os.dup(2), "w", buffering=1,
                                      encoding=sys.stderr.encoding, errors="replace")
  saved = {fd: os.dup(fd) for fd in (1, 2)}
  saved_streams = sys.stdout, sys.stderr
  log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
  for fd in saved:
    os.dup2(log.fileno(), fd)
  sys.stdout = sys.stderr = log
  try:
    with progress.printing_to(console):
      yield
  finally:
    sys.stdout, sys.stderr = saved_streams
    log.flush()
    for fd, copy in saved.items():
      os.dup2(copy, fd)
      os.close(copy)
    log.close()
    if own_console is not None:
      own_console.close()


@contextlib.contextmanager
def run_output(log_path: str, verbose: bool) -> Iterator[Callable[[], None]]:
  """The console and log of one run: see this module's docstring.

  Yields logs_to_file's function that re-applies the INFO level.
  """
  with logs_to_file(log_path, verbose) as log_info:
    if verbose:
      yield log_info
    else:
      with output_to_file(log_path):
        yield log_info
