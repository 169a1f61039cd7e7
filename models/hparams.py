"""Hyperparameters of both models, and the named presets the pipeline chooses from.

`seed` presets reproduce the reference study's settings; `best` presets are ours,
chosen on the eval split of MovieLens-100K (`bench/train_speed.py --set ...`); what
was tried, and the AUCs, are in docs/experiments.md.
"""
import dataclasses
from typing import Any, Dict, Tuple

# How a Trainer spreads training over devices and machines (a tf.distribute
# strategy, runtime.distribution_strategy): "none", one device; "mirrored", every
# local GPU (or the CPU); "multi_worker_mirrored", every worker of the cluster that
# TF_CONFIG describes. A run setting rather than a model's hyperparameter.
NO_DISTRIBUTION = "none"
MULTI_WORKER_MIRRORED = "multi_worker_mirrored"
DISTRIBUTIONS = (NO_DISTRIBUTION, "mirrored", MULTI_WORKER_MIRRORED)


@dataclasses.dataclass(frozen=True)
class CFHparams:
  """Collaborative filtering: user and movie embeddings, nothing else."""
  embedding_dim: int = 64
  scoring: str = "cosine"  # "cosine": (cos + 1) / 2; "dot": sigmoid(u.m + biases)
  use_biases: bool = False  # per-user and per-movie biases (dot scoring only)
  init_stddev: float = 1.0  # normal initialiser, as torch.nn.Embedding's
  l2: float = 0.0  # on the embeddings looked up in a batch
  learning_rate: float = 0.1
  batch_size: int = 1024
  epochs: int = 5
  early_stopping_patience: int = 0  # 0: train all epochs
  # A linear term over the user's and movie's train-split like rate and rating count
  # (features.ID_STATISTICS; dot scoring only).
  use_id_statistics: bool = False
  # Weight of an auxiliary squared-error loss on the star rating (layers.RatingHead).
  rating_loss_weight: float = 0.0
  # Warm start's shrink (models/warm_start.py): carried values become
  # shrink * base + (1 - shrink) * fresh initialisation; 1 keeps the base's values.
  warm_start_shrink: float = 1.0


@dataclasses.dataclass(frozen=True)
class DeepFMHparams:
  """DeepFM: first- and second-order FM terms and a DNN over shared field embeddings."""
  embedding_dim: int = 16
  dnn_units: Tuple[int, ...] = (256, 128, 64)
  dropout: float = 0.0
  l2_embedding: float = 1e-4
  l2_dnn: float = 1e-4
  init_stddev: float = 1e-4  # DeepCTR's default
  learning_rate: float = 1e-3
  batch_size: int = 1024
  epochs: int = 30
  early_stopping_patience: int = 3
  # The user's and movie's train-split like rate and rating count
  # (features.ID_STATISTICS) as DNN inputs and a first-order term.
  use_id_statistics: bool = False
  # Weight of an auxiliary squared-error loss on the star rating (layers.RatingHead).
  rating_loss_weight: float = 0.0
  # "auto": bfloat16 compute (float32 weights) where the CPU has bf16 instructions
  # (AVX512_BF16 or AMX), where it trains faster (docs/performance.md); "off":
  # float32 throughout.
  mixed_precision: str = "off"
  warm_start_shrink: float = 1.0  # as CFHparams'


@dataclasses.dataclass(frozen=True)
class RetrievalHparams:
  """Two-tower retrieval (models/retrieval.py)."""
  embedding_dim: int = 64
  side_features: bool = True  # user and movie side fields in the towers, not ids alone
  sampling_correction: bool = True  # logQ correction of the in-batch negatives
  liked_weight: float = 1.0  # a liked rating's weight in the loss; a disliked one's is 1
  towers: int = 1  # pairs of towers, trained side by side, their scores averaged
  # The query tower's encoder of the user's history (models/sequence.py): "none",
  # "mean", "gru" or "attention"; how many of the latest movies it reads, and
  # whether how long ago each was rated.
  history_encoder: str = "none"
  history_length: int = 20
  history_ages: bool = False
  # The share of training examples whose user is made unknown (every user field
  # out of vocabulary), so that the query tower learns to work from the history
  # alone, as for a visitor in no table.
  user_dropout: float = 0.0
  # The share of training examples whose history is hidden from the query, so that
  # it also learns the user's whole taste from their fields alone; served, the
  # query is history_weight x the query with the history + (1 - history_weight) x
  # the query without it (one vector: the index is unchanged).
  history_dropout: float = 0.0
  history_weight: float = 1.0
  learning_rate: float = 0.1  # Adagrad
  batch_size: int = 1024
  epochs: int = 10
  early_stopping_patience: int = 0
  # Epochs when starting from a base model (models/warm_start.py); 0: `epochs`.
  # Retrieval has no early stopping to end a warm start sooner.
  warm_start_epochs: int = 0
  warm_start_shrink: float = 1.0  # as CFHparams'


@dataclasses.dataclass(frozen=True)
class RecommenderHparams:
  """The served `recommend`: retrieval's candidates, re-ranked (export/two_stage.py).

  The order is retrieval's engagement logit + like_weight * log P(like) +
  popularity_weight * log(1 + ratings) + co_occurrence_weight * EASE score +
  recent_co_occurrence_weight * their latest movies' EASE score: a movie the user
  would likely watch but probably dislike drops down the list, and one often rated
  with theirs, above all with their latest, rises. The weights were chosen on the
  eval splits of MovieLens-100K's temporal and random splits, with retrieval
  trained on train alone (bench/tune_co_occurrence.py, docs/experiments.md).
  """
  candidates: int = 200  # movies retrieved per user, before the rated ones are dropped
  like_weight: float = 2.0
  popularity_weight: float = 0.0
  # Which movies are watched together (export/co_occurrence.py): EASE over the
  # co_occurrence_movies most rated movies (its weights grow with their square).
  co_occurrence_weight: float = 4.0
  co_occurrence_movies: int = 10_000
  # What the user watched last: the EASE score of their recent_movies latest
  # movies alone, by recent_co_occurrence_weight.
  recent_co_occurrence_weight: float = 4.0
  recent_movies: int = 5
  # A visitor's list: EASE's score + visitor_like_weight * log P(like).
  visitor_like_weight: float = 0.02


PRESETS = {
    "cf": {
        "seed": CFHparams(),
        # Dot scoring with biases, and a light auxiliary loss on the star rating:
        # the best eval AUC on MovieLens-100K of the settings tried; the id
        # statistics did worse here (docs/experiments.md). Warm-started from its
        # exact base weights it settled below a cold start's AUC; shrunk to 0.3
        # of them it ended above it (docs/models.md#warm-start).
        "best": CFHparams(embedding_dim=64, scoring="dot", use_biases=True,
                          init_stddev=0.05, l2=3e-2, learning_rate=1e-3,
                          batch_size=1024, epochs=80, early_stopping_patience=3,
                          rating_loss_weight=0.1, warm_start_shrink=0.3),
    },
    "deepfm": {
        "seed": DeepFMHparams(),
        # The reference architecture plus the id statistics, the rating loss and a
        # higher learning rate: the best eval AUC on MovieLens-100K of the settings
        # tried, none of which reached the 0.810 test AUC aimed for; bfloat16
        # compute where the CPU has it (docs/experiments.md). Warm start shrinks
        # the base's values to half, as for CF (docs/models.md#warm-start).
        "best": DeepFMHparams(learning_rate=3e-3, epochs=40, use_id_statistics=True,
                              rating_loss_weight=0.5, mixed_precision="auto",
                              warm_start_shrink=0.5),
    },
    "retrieval": {
        "seed": RetrievalHparams(),
        # Tried on MovieLens-100K's temporal split (docs/experiments.md): three
        # pairs of towers ranked better than one, or two, over three seeds.
        # Warm-started, its eval NDCG@10 peaked within 3 epochs and then fell below
        # the cold start's (bench/warm_start.py, docs/models.md#warm-start). The
        # weighted mean of the latest 20 movies, with their ages, beat a GRU and
        # self-attention; served at half weight beside the query without it, it
        # gave the best product of the temporal and random eval splits' NDCG@10
        # under the recommender's blend (docs/experiments.md).
        "best": RetrievalHparams(learning_rate=0.05, towers=3, warm_start_epochs=3,
                                 history_encoder="mean", history_ages=True,
                                 user_dropout=0.2, history_dropout=0.3,
                                 history_weight=0.5),
    },
}
_CLASSES = {"cf": CFHparams, "deepfm": DeepFMHparams, "retrieval": RetrievalHparams}

# From this many ratings on (MovieLens-1M), the `best` presets train with 4x larger
# batches at a higher learning rate for fewer epochs, so that each Trainer stays
# within the pipeline's per-component time target on 2 cores, and DeepFM's L2
# penalties (on the whole weight tables, so a prior whose weight against the mean
# loss should fall as the data grows) are 10x weaker for 10x the ratings. The AUCs
# behind these values: docs/experiments.md. The `seed` presets stay the reference
# study's at every size.
LARGE_DATA_MIN_RATINGS = 500_000
LARGE_DATA_OVERRIDES = {
    "cf": {"batch_size": 4096, "learning_rate": 3e-3, "epochs": 12},
    "deepfm": {"batch_size": 4096, "learning_rate": 6e-3, "epochs": 12,
               "l2_embedding": 1e-5, "l2_dnn": 1e-5},
    # 3 epochs, for the Trainer's 90 s target with three pairs of towers. Not
    # larger batches: the in-batch softmax costs batch size x dimensions per
    # example, and batch 4096 trained 4x slower per example than 1024.
    "retrieval": {"epochs": 3},
}


# For a catalogue far larger than MovieLens's: towers half as wide halve the
# BruteForce index's scoring time, for a little NDCG (docs/experiments.md;
# bench/catalogue_1m.py). `--set retrieval.embedding_dim=32`.
LARGE_CATALOGUE_RETRIEVAL = {"embedding_dim": 32}


def preset(model: str, name: str, num_ratings: int = 0):
  """The `name` preset ("seed" or "best") of `model` ("cf" or "deepfm").

  `num_ratings`, the data set's size, scales the `best` presets' training schedule
  (LARGE_DATA_OVERRIDES).
  """
  try:
    chosen = PRESETS[model][name]
  except KeyError:
    raise ValueError(f"no preset {name!r} for model {model!r}; choose one of "
                     f"{sorted(PRESETS.get(model, {}))}") from None
  if name == "best" and num_ratings >= LARGE_DATA_MIN_RATINGS:
    chosen = dataclasses.replace(chosen, **LARGE_DATA_OVERRIDES.get(model, {}))
  return chosen


def check_overrides(overrides: Dict[str, Dict[str, Any]]) -> None:
  """Raises ValueError naming the first model or hyperparameter in `overrides`
  ({"cf": {"epochs": 3}, ...}) that does not exist; "recommender" names
  RecommenderHparams."""
  classes = {**_CLASSES, "recommender": RecommenderHparams}
  for model, values in overrides.items():
    if model not in classes:
      raise ValueError(f"no model {model!r} to set hyperparameters of; the models are "
                       f"{', '.join(sorted(classes))}")
    names = sorted(field.name for field in dataclasses.fields(classes[model]))
    for name in values:
      if name not in names:
        raise ValueError(f"{model} has no hyperparameter {name!r}; its hyperparameters "
                         f"are {', '.join(names)}")


def for_warm_start(hparams):
  """The hyperparameters to train on from a base model: fewer epochs where the
  model sets `warm_start_epochs`, never more than `epochs`."""
  warm_start_epochs = getattr(hparams, "warm_start_epochs", 0)
  if not warm_start_epochs:
    return hparams
  return dataclasses.replace(hparams, epochs=min(hparams.epochs, warm_start_epochs))


def uses_history(hparams) -> bool:
  """Whether the model encodes the user's history (models/sequence.py)."""
  return getattr(hparams, "history_encoder", "none") != "none"


def to_config(hparams) -> Dict[str, Any]:
  """Hyperparameters as a JSON-friendly dict, for the Trainer's custom_config."""
  return dataclasses.asdict(hparams)


def from_config(model: str, config: Dict[str, Any]):
  """The inverse of to_config: a Trainer's custom_config back to hyperparameters."""
  values = dict(config)
  if "dnn_units" in values:
    values["dnn_units"] = tuple(values["dnn_units"])
  return _CLASSES[model](**values)
