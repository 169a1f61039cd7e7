"""Settings of one pipeline run: data, output folder, seed and Beam options."""
import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional

from models import features
from models import hparams as hparams_lib

SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "schema", "schema.pbtxt")
DEFAULT_OUTPUT_ROOT = "runs"
DEFAULT_AUC_FLOOR = 0.75
DEFAULT_MAX_AUC_DROP = 0.005
# Free space a run needs in its output folder before it starts, in GB. Measured on
# ml-100k: a first run writes ~20 MB under the output folder, and TFX builds a
# ~42 MB package in /tmp per Beam step (~170 MB a run, never deleted). 1M has ten
# times the ratings and examples are stored several times (raw, transformed,
# statistics, evaluation), and each rerun with changed inputs adds a full set. The
# minimum leaves room for that and for the machine; override with --min-free-gb.
MIN_FREE_GB = {"100k": 0.5, "1m": 2.0}


def default_beam_args() -> List[str]:
  """DirectRunner flags: one process, a worker thread per core.

  Measured on 2 cores with 1M ratings: multi_processing took 35 s for
  MovieLensExampleGen and 42 s for StatisticsGen, in_memory 19 s and 37 s (worker
  start-up and pickling outweigh the second core); on 100K it was 2-3x slower.
  Override with `recsys run --beam-arg=--direct_running_mode=multi_processing`.
  """
  return ["--direct_running_mode=in_memory",
          f"--direct_num_workers={os.cpu_count() or 1}"]


def fingerprint_folder(folder: Optional[str]) -> Optional[str]:
  """Changes when any file under `folder` is added, removed, resized or touched."""
  if not folder:
    return None
  entries = []
  for root, _, files in os.walk(os.path.abspath(os.path.expanduser(folder))):
    for name in sorted(files):
      path = os.path.join(root, name)
      try:
        stat = os.stat(path)
      except OSError:
        continue
      entries.append(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}")
  return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


@dataclasses.dataclass
class PipelineConfig:
  """Everything a run depends on; the pipeline is built from this alone."""
  dataset: str = features.DEFAULT_DATASET
  data_dir: Optional[str] = None  # None: download through TFDS
  output_dir: Optional[str] = None  # default runs/movielens-<dataset>
  download_dir: Optional[str] = None  # default ~/tensorflow_datasets/downloads
  seed: int = 42
  beam_args: Optional[List[str]] = None  # default: default_beam_args()
  enable_cache: bool = True
  presets: Dict[str, str] = dataclasses.field(
      default_factory=lambda: {"cf": "best", "deepfm": "best"})  # or "seed"
  # Per model, hyperparameters that replace the preset's, e.g. {"cf": {"epochs": 3}}.
  overrides: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  # Blessing: test AUC at least this, and (once a model of the same kind has been
  # blessed) at most this much below that model's AUC on the same test split. The
  # default tolerance is just above the +-0.004 AUC that a change of seed moves.
  auc_floor: float = DEFAULT_AUC_FLOOR
  max_auc_drop: float = DEFAULT_MAX_AUC_DROP
  serving_dir: Optional[str] = None  # default <output_dir>/serving
  min_free_gb: Optional[float] = None  # default MIN_FREE_GB[dataset]

  def __post_init__(self):
    if self.dataset not in features.DATASETS:
      raise ValueError(f"dataset must be one of {sorted(features.DATASETS)}, "
                       f"got {self.dataset!r}")
    if self.output_dir is None:
      self.output_dir = os.path.join(DEFAULT_OUTPUT_ROOT, self.pipeline_name)
    self.output_dir = os.path.abspath(os.path.expanduser(self.output_dir))
    if self.beam_args is None:
      self.beam_args = default_beam_args()
    if self.serving_dir is None:
      self.serving_dir = os.path.join(self.output_dir, "serving")
    self.serving_dir = os.path.abspath(os.path.expanduser(self.serving_dir))
    if self.min_free_gb is None:
      self.min_free_gb = MIN_FREE_GB[self.dataset]

  def hparams(self, model: str):
    """The hyperparameters of `model` ("cf" or "deepfm") for this run."""
    preset = hparams_lib.preset(model, self.presets[model])
    return dataclasses.replace(preset, **self.overrides.get(model, {}))

  @property
  def pipeline_name(self) -> str:
    return f"movielens-{self.dataset}"

  @property
  def pipeline_root(self) -> str:
    """Where TFX writes component outputs."""
    return os.path.join(self.output_dir, "tfx")

  @property
  def metadata_path(self) -> str:
    """The ML Metadata SQLite store of the run."""
    return os.path.join(self.output_dir, "metadata.sqlite")

  def serving_model_dir(self, model: str) -> str:
    """Where the Pusher puts numbered versions of `model`, as TF Serving reads them."""
    return os.path.join(self.serving_dir, model)
