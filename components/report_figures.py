"""The report's PNG figures: ROC curves, training curves, AUC by slice, top-k curves."""
import os
from typing import Callable, Dict

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from evaluation import tfma_config  # pylint: disable=g-import-not-at-top
from evaluation import topk  # pylint: disable=g-import-not-at-top

ROC_FILE = "roc.png"
TRAINING_FILE = "training_curves.png"
SLICES_FILE = "auc_by_slice.png"
RANKING_FILE = "ranking_curves.png"
_MIN_SLICE_EXAMPLES = 20  # smaller slices' AUC is mostly noise


def _save(figure, path: str) -> None:
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def roc_curves(results, path: str, titles: Dict[str, str]) -> None:
  """Every model's ROC curve on the test split, on one plot."""
  figure, axes = plt.subplots(figsize=(5.5, 5))
  for name, r in results.items():
    fpr, tpr = r.roc
    axes.plot(fpr, tpr, label=f"{titles.get(name, name)}: AUC {r.metrics[tfma_config.AUC]:.4f}")
  axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
  axes.set(xlabel="false positive rate", ylabel="true positive rate",
           title="ROC, test split", xlim=(0, 1), ylim=(0, 1))
  axes.legend(loc="lower right")
  _save(figure, path)


# Log loss (binary cross-entropy averaged over the epoch), not Keras's `loss`:
# a tfrs.Model reports the last batch's loss there.
_CURVES = ("log_loss", "auc")


def training_curves(results, path: str, titles: Dict[str, str]) -> None:
  """Training and validation log loss and AUC per epoch, one column per model."""
  figure, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 6),
                              squeeze=False)
  for column, (name, r) in enumerate(results.items()):
    for row, metric in enumerate(_CURVES):
      ax = axes[row][column]
      for prefix, label in (("", "train"), ("val_", "eval split")):
        values = r.history.get(prefix + metric, [])
        ax.plot(range(1, len(values) + 1), values, marker=".", label=label)
      ax.set(xlabel="epoch", ylabel=metric, title=f"{titles.get(name, name)}: {metric}")
      ax.legend()
  _save(figure, path)


def auc_by_slice(results, path: str, titles: Dict[str, str],
                 slice_label: Callable[[str, str], str]) -> None:
  """Test AUC per slice of every slicing feature, the models side by side."""
  names = list(results)
  # The slices the evaluation has (20M and 25M: genres alone).
  sliced = [f for f in tfma_config.SLICE_FEATURES
            if results[names[0]].slice_metrics.get(f)] or list(tfma_config.SLICE_FEATURES)
  figure, axes = plt.subplots(len(sliced), 1, figsize=(9, 3.2 * len(sliced)), squeeze=False)
  for ax, feature in zip(axes[:, 0], sliced):
    first = results[names[0]].slice_metrics.get(feature, {})
    values = [v for v, m in first.items() if m["example_count"] >= _MIN_SLICE_EXAMPLES]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
      slices = results[name].slice_metrics.get(feature, {})
      ax.bar([x + i * width for x in range(len(values))],
             [slices.get(v, {}).get(tfma_config.AUC, 0) for v in values],
             width=width, label=titles.get(name, name))
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(values))])
    ax.set_xticklabels([slice_label(feature, v).split("=", 1)[1] for v in values],
                       rotation=45 if len(values) > 8 else 0,
                       ha="right" if len(values) > 8 else "center", fontsize=8)
    ax.set(ylabel="AUC", title=f"test AUC by {feature} (slices of {_MIN_SLICE_EXAMPLES}+ ratings)",
           ylim=(0.5, 1))
    ax.legend(loc="lower right", fontsize=8)
  _save(figure, path)


def write_all(results, folder: str, titles: Dict[str, str],
              slice_label: Callable[[str, str], str]) -> None:
  roc_curves(results, os.path.join(folder, ROC_FILE), titles)
  training_curves(results, os.path.join(folder, TRAINING_FILE), titles)
  auc_by_slice(results, os.path.join(folder, SLICES_FILE), titles, slice_label)


def write_ranking_curves(ranking: Dict, folder: str, titles: Dict[str, str]) -> None:
  """NDCG@k and recall@k for k = 1..50, every model against the baselines."""
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, system in ranking["systems"].items():
    style = "-" if name in ranking["models"] else "--"  # baselines dashed
    for ax, curve in zip(axes, ("ndcg", "recall")):
      ax.plot(topk.CURVE_KS, system["curves"][curve], style, label=titles.get(name, name))
  for ax, curve in zip(axes, ("NDCG@k", "recall@k")):
    ax.set(xlabel="k (list length)", ylabel=curve,
           title=f"{curve}, {ranking['users']:,} test users")
    ax.grid(alpha=0.3)
  axes[0].legend()
  _save(figure, os.path.join(folder, RANKING_FILE))
