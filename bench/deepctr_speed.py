"""Throughput measurement of the reference DeepCTR DeepFM on real MovieLens-100K.

Data prep and model are copied verbatim from /work/shared/anchors/seed_deepfm_ml100k.py
(same features, DeepFM(cols, cols, task="binary", l2_reg_dnn=1e-4, l2_reg_embedding=1e-4), Adam,
binary_crossentropy, 90/10 stratified split random_state=42, validation_split=0.1, EarlyStopping
patience 3 on val_loss, up to 30 epochs). Adds timing only.

Runs in its own environment, as DeepCTR 0.9.3 needs TensorFlow <= 2.10 (`make bench-deepctr`
builds it in .tools/deepctr: Python 3.10, tensorflow==2.10.1 "numpy<1.24" deepctr==0.9.3
scikit-learn pandas).

Usage: python bench/deepctr_speed.py DATA_DIR [BATCH]
Prints the reference-style line, then one JSON line. The throughput is training time only
(first train batch to last train batch of each epoch), epochs 2..N, as bench/train_speed.py
measures ours.
"""
import json
import math
import sys
import time

import numpy as np
import pandas as pd
import tensorflow as tf
from deepctr.feature_column import SparseFeat
from deepctr.feature_column import VarLenSparseFeat
from deepctr.feature_column import get_feature_names
from deepctr.models import DeepFM
from sklearn.metrics import accuracy_score
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder

try:
    # DeepCTR 0.9.3 builds tensorflow.python.keras models, so callbacks must come from the same Keras
    from tensorflow.python.keras.callbacks import Callback
    from tensorflow.python.keras.callbacks import EarlyStopping
except ImportError:
    EarlyStopping, Callback = tf.keras.callbacks.EarlyStopping, tf.keras.callbacks.Callback

VALIDATION_SPLIT = 0.1


class TrainTimer(Callback):
    """Per epoch: wall time from on_train_batch_begin(batch 0) to on_train_batch_end(last batch).

    Validation (run by fit after the last train batch) uses on_test_batch_* hooks, so it is excluded.
    Logs are converted to numpy before on_train_batch_end is called (this callback does not declare
    _supports_tf_logs), so the last step's result is materialised before the end time is taken.
    """

    def __init__(self):
        super().__init__()
        self.epoch_train_s, self.epoch_steps = [], []
        self._t0 = self._t1 = None
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = self._t1 = None
        self._steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._t1 = time.perf_counter()
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_train_s.append(self._t1 - self._t0)
        self.epoch_steps.append(self._steps)


tf.random.set_seed(0)
data_dir = sys.argv[1]
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
r = pd.read_csv(f"{data_dir}/u.data", sep="\t", names=["user_id", "movie_id", "rating", "ts"])
u = pd.read_csv(f"{data_dir}/u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip_code"])
genre_names = [g.split("|")[0] for g in open(f"{data_dir}/u.genre", encoding="latin-1").read().split("\n") if g]
m = pd.read_csv(f"{data_dir}/u.item", sep="|", encoding="latin-1", header=None)
m = m.rename(columns={0: "movie_id", 2: "release"})
flags = m.iloc[:, 5:24].values
m["genres"] = ["|".join(genre_names[j] for j in np.nonzero(row)[0]) or "unknown" for row in flags]
m["movie_year"] = pd.to_datetime(m.release, errors="coerce").dt.year.fillna(1995).astype(int) // 10 * 10
df = r.merge(m[["movie_id", "genres", "movie_year"]], on="movie_id").merge(u, on="user_id")
df["like"] = (df.rating > 3).astype(int)
sparse = ["movie_id", "user_id", "gender", "age", "occupation", "zip_code", "movie_year"]
for f in sparse:
    df[f] = LabelEncoder().fit_transform(df[f].astype(str))
key2index = {}
def split(x):
    for k in x.split("|"):
        key2index.setdefault(k, len(key2index) + 1)
    return [key2index[k] for k in x.split("|")]
genres = [split(x) for x in df.genres.values]
max_len = max(map(len, genres))
genres = tf.keras.preprocessing.sequence.pad_sequences(genres, maxlen=max_len, padding="post")
fixlen = [SparseFeat(f, df[f].max() + 1, embedding_dim=16) for f in sparse]
varlen = [VarLenSparseFeat(SparseFeat("genres", vocabulary_size=len(key2index) + 1, embedding_dim=16),
                           maxlen=max_len, combiner="mean", weight_name=None)]
cols = fixlen + varlen
names = get_feature_names(cols + cols)
train, test = train_test_split(df, test_size=0.1, random_state=42, stratify=df.like.values)
def inputs(part):
    x = {n: part[n].values for n in names if n != "genres"}
    x["genres"] = genres[part.index]
    return x
model = DeepFM(cols, cols, task="binary", l2_reg_dnn=1e-4, l2_reg_embedding=1e-4)
model.compile("adam", "binary_crossentropy")  # Adam, lr 1e-3 (the default), as in the seed

# Keras' validation_split keeps the first floor(n * (1 - split)) rows for training (data_adapter.train_validation_split)
train_n = int(math.floor(len(train) * (1.0 - VALIDATION_SPLIT)))
timer = TrainTimer()
t0 = time.time()
h = model.fit(inputs(train), train.like.values, batch_size=batch, epochs=30, verbose=0,
              validation_split=VALIDATION_SPLIT,
              callbacks=[EarlyStopping(monitor="val_loss", patience=3), timer])
fit_s = time.time() - t0
p = model.predict(inputs(test), batch_size=65536, verbose=0).ravel()
auc = roc_auc_score(test.like, p)
epochs = len(h.history["loss"])
steps_expected = math.ceil(train_n / batch)
assert all(s == steps_expected for s in timer.epoch_steps), (timer.epoch_steps, steps_expected)
later = timer.epoch_train_s[1:] if epochs > 1 else timer.epoch_train_s
train_eps = train_n * len(later) / sum(later)
print(f"seed-DeepFM ml-100k batch {batch}: test AUC {auc:.4f} "
      f"acc {accuracy_score(test.like, p >= 0.5):.4f} epochs {epochs} train {fit_s:.1f}s", file=sys.stderr)
print("per-epoch train-only seconds: " + " ".join(f"{s:.3f}" for s in timer.epoch_train_s)
      + f" (steps/epoch {steps_expected})", file=sys.stderr)
print(json.dumps({
    "batch": batch,
    "test_auc": round(auc, 4),
    "epochs": epochs,
    "train_examples_per_epoch": train_n,
    "fit_seconds": round(fit_s, 2),
    "train_examples_per_second": round(train_eps, 1),
    "fit_examples_per_second_overall": round(train_n * epochs / fit_s, 1),
}))
