"""Settings of one pipeline run: data, output folder, seed, Beam and training options."""
import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence

from components.movielens_example_gen import spans
from engines import flink
from engines import spark
from models import features
from models import hparams as hparams_lib

# Resolved from the installed package, so the path holds wherever the package is
# installed, e.g. inside the Kubeflow container image (see Dockerfile).
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema",
                           "schema.pbtxt")
# This repository's root, where setup.py is (the package is installed editable).
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_ROOT = "runs"
DEFAULT_AUC_FLOOR = 0.75
DEFAULT_MAX_AUC_DROP = 0.005
# The recommender's NDCG@10 may fall at most this far below the last blessed one's.
DEFAULT_MAX_NDCG_DROP = 0.005
DIRECT_RUNNER = "DirectRunner"
FLINK_RUNNER = "FlinkRunner"
SPARK_RUNNER = "SparkRunner"
# Beam runners `recsys run --beam-runner` and `recsys compile --beam-runner` accept;
# each takes its own flags through --beam-arg (docs/scaling-out.md).
BEAM_RUNNERS = (DIRECT_RUNNER, "DataflowRunner", FLINK_RUNNER, SPARK_RUNNER)
# The local clusters `recsys cluster up --engine ENGINE` starts, by engine.
LOCAL_CLUSTERS = {cluster.ENGINE: cluster for cluster in (flink.FlinkCluster,
                                                          spark.SparkCluster)}
# Flags that name the cluster or job server a runner submits to; a run naming none
# goes to the local cluster of the runner's engine.
_CLUSTER_FLAGS = {FLINK_RUNNER: ("--flink_master", "--job_endpoint"),
                  SPARK_RUNNER: ("--spark_master_url", "--job_endpoint")}
# Orchestrators `recsys compile --target` writes a spec for; Vertex AI Pipelines
# runs the kubeflow-v2 spec as it is.
COMPILE_TARGETS = ("kubeflow-v2",)
# Free space a run needs in its output folder before it starts, in GB. What a
# 100k run writes there (docs/reliability.md) grows with the data: 1M has ten times
# the ratings, examples are stored several times (raw, transformed, statistics,
# evaluation), and each rerun with changed inputs adds a full set. The minimum
# leaves room for that and for the machine; override with --min-free-gb. A 1M run
# writes about 1 GB (with the examples' histories); 20M and 25M scale that.
MIN_FREE_GB = {"100k": 0.5, "1m": 2.0, "20m": 25.0, "25m": 30.0}


def available_cores() -> int:
  """Cores this process may run on (its CPU affinity, not the machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


# From this many ratings on, the DirectRunner runs one worker process per core.
# Below, one in-process worker: on 2 cores, worker processes cost more than they
# gain (each imports TensorFlow, and examples are pickled across), at 1M ratings
# and more so at 100K (measurements: docs/performance.md).
MULTI_PROCESSING_MIN_RATINGS = 2_000_000
_SETUP_FILE = os.path.join(PROJECT_DIR, "setup.py")


def default_beam_args(num_ratings: int = 0) -> List[str]:
  """DirectRunner flags for a data set of `num_ratings` ratings.

  `--setup_file` names this project's setup.py: remote workers install the project
  from it, and TFX then skips packaging itself into an sdist for each Beam step
  (seconds each, docs/performance.md), which the DirectRunner never reads.
  """
  if num_ratings >= MULTI_PROCESSING_MIN_RATINGS and available_cores() > 1:
    mode = ["--direct_running_mode=multi_processing",
            f"--direct_num_workers={available_cores()}"]
  else:
    mode = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
  return mode + setup_file_args()


def setup_file_args() -> List[str]:
  """Beam's --setup_file flag naming this project's setup.py, when it has one."""
  return [f"--setup_file={_SETUP_FILE}"] if os.path.exists(_SETUP_FILE) else []


def beam_pipeline_args(runner: str = DIRECT_RUNNER, extra_args: Sequence[str] = (),
                       num_ratings: int = 0) -> List[str]:
  """The Beam flags of every Beam-based component: the runner's, then `extra_args`.

  DirectRunner gets default_beam_args() for `num_ratings` (later flags override
  earlier ones); any other runner gets `--runner=NAME`, this project's setup.py
  (its workers install the project from it) and the flags given, since the
  DirectRunner defaults mean nothing to it. FlinkRunner and SparkRunner without a
  cluster named in `extra_args` also get the flags of their engine's local cluster
  (`recsys cluster up [--engine spark]`).
  """
  if runner not in BEAM_RUNNERS:
    raise ValueError(f"Beam runner must be one of {', '.join(BEAM_RUNNERS)}, "
                     f"got {runner!r}")
  chosen = [arg for arg in extra_args if arg.startswith("--runner")]
  if chosen:
    raise ValueError(f"choose the runner with --beam-runner, not {chosen[0]!r}")
  if runner == DIRECT_RUNNER:
    return default_beam_args(num_ratings) + list(extra_args)
  if runner in _CLUSTER_FLAGS and not names_cluster(runner, extra_args):
    return [f"--runner={runner}", *setup_file_args(), *local_cluster_args(runner),
            *extra_args]
  return [f"--runner={runner}", *setup_file_args(), *extra_args]


def names_cluster(runner: str, beam_args: Sequence[str]) -> bool:
  """Whether the flags say which cluster or job server of `runner` to submit to."""
  return any(arg.startswith(_CLUSTER_FLAGS[runner]) for arg in beam_args)


def local_cluster_args(runner: str) -> List[str]:
  """The flags of the local cluster of `runner`'s engine that `recsys cluster up`
  started here, or none when it has not (the run then stops before its first step:
  local_runner's preflight)."""
  cluster = next(cluster for cluster in LOCAL_CLUSTERS.values()
                 if cluster.RUNNER == runner)()
  return cluster.beam_args() if cluster.state() else []


def is_uri(path: str) -> bool:
  """Whether `path` is a URI such as gs://bucket/folder rather than a local path."""
  return "://" in path


def _absolute(path: str) -> str:
  return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def fingerprint_folder(folder: Optional[str]) -> Optional[str]:
  """Changes when any file under `folder` is added, removed, resized or touched.

  None when `folder` is not a folder here, e.g. a cluster path compiled into a
  Kubeflow spec: the orchestrator's cache then keys on the path alone.
  """
  if not folder or is_uri(folder) or not os.path.isdir(os.path.expanduser(folder)):
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
  # How ratings are split into train/eval/test: "random" (comparable to the
  # reference study's AUC) or "temporal" (each user's latest ratings are the test).
  split: str = "random"
  # Continuous training (docs/continuous-training.md): the ratings cut into spans of
  # this many days or calendar months; a run ingests one span (`span`; -1, the last
  # one with ratings up to the day `until`), learns from the `window_spans` spans
  # before it (0: all of them) and is judged on it, the future of its data.
  span_days: int = 0
  span_months: int = 0
  span: int = -1
  until: Optional[str] = None
  window_spans: int = 0
  # Train on a span whose data drifted from the previous span's (components/drift.py).
  accept_drift: bool = False
  beam_args: Optional[List[str]] = None  # default: beam_pipeline_args() for the data set
  enable_cache: bool = True
  presets: Dict[str, str] = dataclasses.field(
      default_factory=lambda: {"cf": "best", "deepfm": "best",
                               "retrieval": "best"})  # or "seed"
  # Per model, hyperparameters that replace the preset's, e.g. {"cf": {"epochs": 3}};
  # "recommender" for the served recommender's RecommenderHparams.
  overrides: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  # Blessing: test AUC at least this, and (once a model of the same kind has been
  # blessed) at most this much below that model's AUC on the same test split. The
  # default tolerance is just above the +-0.004 AUC that a change of seed moves.
  auc_floor: float = DEFAULT_AUC_FLOOR
  max_auc_drop: float = DEFAULT_MAX_AUC_DROP
  # Blessing of the recommender: NDCG@10 at least popularity's and at most this
  # below the last blessed recommender's on the same test split.
  max_ndcg_drop: float = DEFAULT_MAX_NDCG_DROP
  serving_dir: Optional[str] = None  # default <output_dir>/serving
  # Where TFX writes component outputs (default <output_dir>/tfx); on a cluster a
  # bucket every step can reach, e.g. gs://bucket/movielens.
  pipeline_root: Optional[str] = None
  # How each Trainer spreads training: one of models.hparams.DISTRIBUTIONS.
  distribution: str = hparams_lib.NO_DISTRIBUTION
  # Local worker processes each Trainer trains in under multi_worker_mirrored
  # (components/multi_worker_trainer.py); 1: the pipeline's own process.
  workers: int = 1
  # The fixed schema, as the machine that runs ImportSchemaGen sees it.
  schema_file: str = SCHEMA_FILE
  min_free_gb: Optional[float] = None  # default MIN_FREE_GB[dataset]

  def __post_init__(self):
    if self.dataset not in features.DATASETS:
      raise ValueError(f"dataset must be one of {sorted(features.DATASETS)}, "
                       f"got {self.dataset!r}")
    if self.split not in features.SPLIT_METHODS:
      raise ValueError(f"split must be one of {', '.join(features.SPLIT_METHODS)}, "
                       f"got {self.split!r}")
    hparams_lib.check_overrides(self.overrides)
    if self.distribution not in hparams_lib.DISTRIBUTIONS:
      raise ValueError(f"distribution must be one of {', '.join(hparams_lib.DISTRIBUTIONS)}, "
                       f"got {self.distribution!r}")
    if self.workers < 1:
      raise ValueError(f"workers must be 1 or more, got {self.workers}")
    if self.workers > 1 and self.distribution != hparams_lib.MULTI_WORKER_MIRRORED:
      raise ValueError(f"{self.workers} workers need distribution "
                       f"{hparams_lib.MULTI_WORKER_MIRRORED}, got {self.distribution!r}: only it "
                       "trains one model across processes")
    spans.SpanLength(self.span_days, self.span_months)  # a ValueError if both
    spans.end_of_day(self.until)  # likewise for a malformed day
    if self.window_spans < 0:
      raise ValueError(f"window_spans must be 0 (all) or more, got {self.window_spans}")
    if (self.span >= 0 or self.window_spans) and not self.spans_enabled:
      raise ValueError("span and window_spans need spans: set span_days or span_months")
    if self.output_dir is None:
      self.output_dir = os.path.join(DEFAULT_OUTPUT_ROOT, self.pipeline_name)
    self.output_dir = _absolute(self.output_dir)
    if self.beam_args is None:
      self.beam_args = beam_pipeline_args(
          num_ratings=features.DATASET_RATINGS[self.dataset])
    if self.serving_dir is None:
      self.serving_dir = os.path.join(self.output_dir, "serving")
    self.serving_dir = _absolute(self.serving_dir)
    if self.pipeline_root is None:
      self.pipeline_root = os.path.join(self.output_dir, "tfx")
    self.pipeline_root = _absolute(self.pipeline_root)
    if self.min_free_gb is None:
      self.min_free_gb = MIN_FREE_GB[self.dataset]

  def hparams(self, model: str):
    """The hyperparameters of `model` ("cf", "deepfm" or "retrieval") for this run."""
    preset = hparams_lib.preset(model, self.presets[model],
                                features.DATASET_RATINGS[self.dataset])
    return dataclasses.replace(preset, **self.overrides.get(model, {}))

  def recommender_hparams(self) -> hparams_lib.RecommenderHparams:
    """How the served recommender combines its models; `--set recommender.NAME=VALUE`."""
    return dataclasses.replace(hparams_lib.RecommenderHparams(),
                               **self.overrides.get("recommender", {}))

  @property
  def spans_enabled(self) -> bool:
    """Whether the ratings come in spans, each run learning from those before its own."""
    return bool(self.span_days or self.span_months)

  @property
  def pipeline_name(self) -> str:
    return f"movielens-{self.dataset}"

  @property
  def metadata_path(self) -> str:
    """The ML Metadata SQLite store of the run."""
    return os.path.join(self.output_dir, "metadata.sqlite")

  def serving_model_dir(self, model: str) -> str:
    """Where the Pusher puts numbered versions of `model`, as TF Serving reads them."""
    return os.path.join(self.serving_dir, model)
