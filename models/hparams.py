"""Hyperparameters of both models, and the named presets the pipeline chooses from.

`seed` presets reproduce the reference study's settings; `best` presets are ours,
chosen on the eval split of MovieLens-100K (`bench/train_speed.py --set ...`).
"""
import dataclasses
from typing import Any, Dict, Tuple

# How a Trainer spreads training over devices and machines (a tf.distribute
# strategy, training.distribution_strategy): "none", one device; "mirrored", every
# local GPU (or the CPU); "multi_worker_mirrored", every worker of the cluster that
# TF_CONFIG describes. A run setting rather than a model's hyperparameter.
NO_DISTRIBUTION = "none"
DISTRIBUTIONS = (NO_DISTRIBUTION, "mirrored", "multi_worker_mirrored")


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
  # Weight of an auxiliary squared-error loss on the star rating (training.RatingHead).
  rating_loss_weight: float = 0.0


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
  # Weight of an auxiliary squared-error loss on the star rating (training.RatingHead).
  rating_loss_weight: float = 0.0
  # "auto": bfloat16 compute (float32 weights) where the CPU has bf16 instructions
  # (AVX512_BF16 or AMX), ~1.25x faster there; "off": float32 throughout.
  mixed_precision: str = "off"


PRESETS = {
    "cf": {
        "seed": CFHparams(),
        # Eval AUC on MovieLens-100K (bench/train_speed.py, seed 42): 0.7890 with
        # the like label alone; with an auxiliary loss on the star rating, weight
        # 0.05 / 0.1 / 0.2 / 0.5: 0.7927 / 0.7945 (test 0.8012) / 0.7938 / 0.7883.
        # The id statistics as a linear term: 0.7823 (not used).
        "best": CFHparams(embedding_dim=64, scoring="dot", use_biases=True,
                          init_stddev=0.05, l2=3e-2, learning_rate=1e-3,
                          batch_size=1024, epochs=80, early_stopping_patience=3,
                          rating_loss_weight=0.1),
    },
    "deepfm": {
        "seed": DeepFMHparams(),
        # Eval AUC on MovieLens-100K (bench/train_speed.py, seed 42): 0.7864 for
        # the reference settings (dropout 0.3/0.5, L2 1e-5, embeddings 32, Adam 3e-4
        # did no better: 0.779-0.783); + the id statistics: 0.7918; + the rating
        # loss, weight 0.2 / 0.5 / 1.0: 0.7960 / 0.7978 / 0.7965; + Adam 3e-3:
        # 0.7998, test 0.8053 (2e-3: 0.7985). Around it no better (0.796-0.800):
        # rating weight 1.0, L2 3e-5, dropout 0.3, embeddings 32, DNN (128, 64) or
        # (512, 256, 128), batch 512, prior 3 or 30, patience 5. bfloat16 compute
        # where the CPU has it. Since the Trainers read ExampleGen's examples (in
        # its order) through the Transform graph: 0.7995, test 0.8049; dropout 0.5:
        # 0.8023 / 0.8063; L2 on embeddings 3e-4: 0.8008 / 0.8063, 1e-3: 0.7982;
        # both 3e-4: 0.8015 / 0.8035; L2 on the DNN 1e-5: 0.7996 / 0.8011;
        # embeddings 8: 0.7985; init 1e-3: 0.7996; dropout 0.5 with L2 3e-4:
        # 0.8020, with Adam 1e-3: 0.7975. None reaches 0.810 on test.
        # Since a Keras step trains on 16 batches in a seeded permutation per
        # epoch (training.ChunkedTrainStep): 0.8007, test 0.8072; dropout 0.5:
        # 0.8026 / 0.8070, 0.3: 0.7996; L2 on embeddings 3e-4: 0.8011 / 0.8053;
        # rating weight 1.0: 0.8002; Adam 2e-3: 0.7992; L2 on the batch's rows
        # instead of the whole table (as CF), 1e-3 / 1e-2: 0.7987 / 0.7991; a CF
        # term user . movie over 32 or 64 dimensions of its own, L2 0.01-0.3 on
        # the batch's rows: 0.7927-0.7999; an ordinal loss on the star rating
        # (P(rating >= k), k = 2, 3, 5, from the same score) instead of the
        # squared error, weight 0.5-2: 0.7997-0.8011; learning rate cut 2-3x when
        # eval AUC stalls: 0.8008-0.8011.
        # Over training seeds 42, 1, 2, 3, 4 (make bench-train): eval 0.7981-0.8007,
        # test 0.8017-0.8072, mean 0.8047; the mean of the five models' predictions
        # 0.8040 / 0.8095, and that blended with the `best` CF's (0.7 / 0.3 of the
        # logits, the best weights on eval) 0.8053 / 0.8107. Also no better: the
        # user's train-rated movies as one more field (SVD++'s implicit feedback:
        # the mean of their own embeddings, the example's movie left out),
        # 0.8018-0.8021 / 0.8083-0.8086 at seed 42, but a third of the speed
        # (76-104k examples/s); averaged weights (Adam's EMA, momentum 0.98-0.99,
        # written back each epoch), 0.7997 eval over the five seeds.
        "best": DeepFMHparams(learning_rate=3e-3, epochs=40, use_id_statistics=True,
                              rating_loss_weight=0.5, mixed_precision="auto"),
    },
}
_CLASSES = {"cf": CFHparams, "deepfm": DeepFMHparams}

# From this many ratings on (MovieLens-1M), the `best` presets train with 4x larger
# batches at a higher learning rate for fewer epochs, so that each Trainer stays
# well under 90 s on 2 cores, and DeepFM's L2 penalties (on the whole weight
# tables, so a prior whose weight against the mean loss should fall as the data
# grows) are 10x weaker for 10x the ratings. Measured on the synthetic 1M-scale
# release of bench/pipeline_1m.py (eval / test AUC, bench/train_speed.py):
# - CF: batch 1024, Adam 1e-3: 0.8413 after 25 epochs (~5 s each); batch 4096,
#   3e-3: 0.8405 after 12 epochs (~3-6 s each under load); batch 8192, 8e-3: 0.8350.
# - DeepFM, batch 4096, Adam 6e-3 (~4 s an epoch): L2 1e-4 (the 100K preset's)
#   0.8129 / 0.8135 after 20 epochs, still rising (Adam 1e-2: 0.7926; batch 8192,
#   1e-2: 0.7987; init 0.01, 17 epochs: 0.8073); L2 on embeddings only 1e-5, 17
#   epochs: 0.8502 / 0.8496, 12 epochs: 0.8483 / 0.8479 (2.5e-5: 0.8462 / 0.8464);
#   L2 1e-5 on embeddings and DNN, 12 epochs: 0.8547 / 0.8560 (3e-6: 0.8522 / 0.8531).
# The `seed` presets stay the reference study's at every size.
LARGE_DATA_MIN_RATINGS = 500_000
LARGE_DATA_OVERRIDES = {
    "cf": {"batch_size": 4096, "learning_rate": 3e-3, "epochs": 12},
    "deepfm": {"batch_size": 4096, "learning_rate": 6e-3, "epochs": 12,
               "l2_embedding": 1e-5, "l2_dnn": 1e-5},
}


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
    chosen = dataclasses.replace(chosen, **LARGE_DATA_OVERRIDES[model])
  return chosen


def to_config(hparams) -> Dict[str, Any]:
  """Hyperparameters as a JSON-friendly dict, for the Trainer's custom_config."""
  return dataclasses.asdict(hparams)


def from_config(model: str, config: Dict[str, Any]):
  """The inverse of to_config: a Trainer's custom_config back to hyperparameters."""
  values = dict(config)
  if "dnn_units" in values:
    values["dnn_units"] = tuple(values["dnn_units"])
  return _CLASSES[model](**values)
