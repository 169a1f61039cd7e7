"""Model cards: what each model a run pushes is, what it learned from, how it was
judged, where it is weak, and what it is not for, for the people who consume it.

Built from what the run recorded, never typed in: the Examples artifacts' lineage
properties (release, source, split, spans), TFDV's statistics of the data, TFMA's
metrics and slices, RankingEvaluator's top-k lists against the baselines, and the
blessings. The model-card-toolkit package pins an older TFMA than this stack's, so
the card is a Jinja2 template (Markdown) in the spirit of its schema (model
details, data, quantitative analysis, considerations), and HTML made from it.
ModelReport writes `cards/<model>.md` and `.html` into its artifact; the run
publishes them with the report, and beside each pushed model.
"""
import html
import json
import os
from typing import Dict, List, Optional

import jinja2
import markdown as markdown_lib
import tensorflow as tf
from tfx.components.statistics_gen import stats_artifact_utils

from components import ranking_evaluator
from models import features

CARDS_DIR = "cards"
CARD_FILE = "model_card"  # beside a pushed model's versions: model_card.md, .html
# Slices with fewer test examples say more about chance than about the model.
MIN_SLICE_EXAMPLES = 100
WEAKEST_SLICES = 3

# What each model is, and what it is not for.
PURPOSE = {
    "cf": ("collaborative filtering (TensorFlow Recommenders): a user and a movie "
           "embedding whose dot product, with biases, is the like logit",
           "the probability that a user likes a movie (a rating of 4 or more)"),
    "deepfm": ("DeepFM in Keras: a factorization machine and a DNN over shared "
               "embeddings of the user's and the movie's fields",
               "the probability that a user likes a movie (a rating of 4 or more)"),
    "recommender": ("two stages: TFRS retrieval towers (with the user's latest movies) "
                    "and EASE's co-occurrence propose candidates, DeepFM's like "
                    "probability and the other signals rank them",
                    "the top-k movies for a known user (`recommend`) or for a visitor "
                    "from the movies they rated (`recommend_for_history`)"),
}
SIGNATURES = {
    "cf": "`predict` (user_id, movie_id), `predict_raw`, `serving_default` "
          "(tf.Examples), `recommend` (user_id, k)",
    "deepfm": "`predict` (user_id, movie_id), `predict_raw`, `serving_default` "
              "(tf.Examples), `recommend` (user_id, k)",
    "recommender": "`recommend` (user_id, k), `recommend_for_history` (movie_ids, k)",
}
LIMITS = [
    "Trained on MovieLens: volunteers of one film-rating website, who rated at least "
    "20 movies each, in the years the release covers. Tastes of other people, "
    "places and times may differ.",
    "A like is a rating of 4 stars or more; a rating is not a purchase or a view, "
    "and movies a user never rated are not dislikes.",
    "Users and movies the training data never saw get the out-of-vocabulary "
    "embedding: the predictions for them rest on popularity and side features alone "
    "(a visitor is better served by `recommend_for_history`).",
    "Not for decisions about people: the models learn from demographics where the "
    "release has them (100K, 1M), and the slices above show where they are weaker.",
]

_TEMPLATE = jinja2.Environment(
    autoescape=False, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined).from_string("""\
# Model card: {{ title }}

## Model details

- **What it is**: {{ purpose[0] }}.
- **What it gives**: {{ purpose[1] }}.
- **Signatures** (TF Serving, REST and gRPC): {{ signatures }}.
- **Made** by {{ made_by }} of this run.
- **Blessed**: {{ "yes" if blessed else "no" }}: {{ blessing }}.

## Data

- **Release**: {{ data.dataset }} ({{ data.source }}).
- **Split**: {{ split_text }}.
{% for name, count in data.split_counts.items() %}
- **{{ name }}**: {{ "{:,}".format(count) }} ratings
{% endfor %}
{% if statistics_text %}
- **Statistics** (TFDV): {{ statistics_text }}.
{% endif %}

## Evaluation

{% if metrics %}
On the {{ split }} split, through the `serving_default` signature (TFMA):

| metric | value |
|---|---:|
{% for name, value in metrics.items() %}
| {{ name }} | {{ value }} |
{% endfor %}

{% if weakest %}
Weakest slices (AUC, slices of {{ min_slice }}+ test ratings):

| slice | test ratings | AUC |
|---|---:|---:|
{% for row in weakest %}
| {{ row.slice }} | {{ "{:,}".format(row.examples) }} | {{ "%.4f"|format(row.auc) }} |
{% endfor %}

{% endif %}
{% endif %}
{% if topk %}
Top-{{ k }} lists through `recommend`, against the baselines, for {{ topk_users }}
(relevant: the test movies each user liked; ± the 95% confidence interval over users):

| system | NDCG@{{ k }} | recall@{{ k }} | hit rate@{{ k }} |
|---|---:|---:|---:|
{% for row in topk %}
| {{ row.name }} | {{ row.ndcg }} | {{ row.recall }} | {{ row.hit_rate }} |
{% endfor %}

{% endif %}
## Considerations

{% for limit in limits %}
- {{ limit }}
{% endfor %}
""")

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em}}
td:not(:first-child){{text-align:right}}</style></head>
<body>
{body}
</body></html>
"""


def data_facts(learned_from: List, newest, statistics: Optional[Dict]) -> Dict:
  """What the cards say of the data: from the Examples artifacts the models learned
  from and the newest one (the same one, but in a run of spans), and the newest
  data's train statistics (`train_statistics`)."""
  def prop(artifact, name):
    return artifact.get_string_custom_property(name) if artifact.has_custom_property(
        name) else ""

  counts = json.loads(prop(newest, "split_counts") or "{}")
  spans = sorted({a.span for a in learned_from if a.id != newest.id})
  return {"dataset": prop(newest, "dataset"), "source": prop(newest, "source"),
          "split_method": prop(newest, "split_method") or "random",
          "split_counts": counts, "spans": ", ".join(map(str, spans)),
          "judged_span": newest.span, "statistics": statistics}


def train_statistics(statistics, split: str = "train") -> Optional[Dict]:
  """Examples, distinct users and movies, and like rate of one split's TFDV statistics."""
  try:
    dataset = stats_artifact_utils.load_statistics(statistics, split).proto().datasets[0]
  except Exception:  # pylint: disable=broad-except
    return None  # a split without statistics: the card says less
  by_name = {".".join(f.path.step): f for f in dataset.features}

  def unique(name):
    feature = by_name.get(name)
    return int(feature.string_stats.unique) if feature is not None else 0

  like = by_name.get(features.LABEL)
  like_rate = 0.0
  if like is not None:
    if like.HasField("num_stats"):
      like_rate = like.num_stats.mean
    else:
      counts = {b.label: b.sample_count for b in like.string_stats.rank_histogram.buckets}
      like_rate = counts.get("1", 0.0) / max(sum(counts.values()), 1.0)
  return {"split": split, "examples": int(dataset.num_examples),
          "users": unique(features.USER_ID), "movies": unique(features.MOVIE_ID),
          "like_rate": float(like_rate)}


def _weakest_slices(slices: Dict[str, Dict], slice_label) -> List[Dict]:
  rows = [{"slice": slice_label(feature, value), "examples": int(m["example_count"]),
           "auc": m["auc"]}
          for feature, values in slices.items() for value, m in values.items()
          if m.get("example_count", 0) >= MIN_SLICE_EXAMPLES and m.get("auc") is not None]
  return sorted(rows, key=lambda row: row["auc"])[:WEAKEST_SLICES]


def _topk_rows(ranking: Dict, model: str, titles: Dict[str, str], k: int) -> List[Dict]:
  def cell(system, name):
    value = system["metrics"][f"{name}@{k}"]
    half = system.get("confidence_95", {}).get(f"{name}@{k}")
    return f"{value:.4f}" + (f" ± {half:.4f}" if half is not None else "")

  shown = [model] + [name for name in ("popularity", "ease") if name != model]
  return [{"name": titles.get(name, name), "ndcg": cell(ranking["systems"][name], "ndcg"),
           "recall": cell(ranking["systems"][name], "recall"),
           "hit_rate": cell(ranking["systems"][name], "hit_rate")}
          for name in shown if name in ranking["systems"]]


def render(model: str, report: Dict, data: Dict, titles: Dict[str, str],
           slice_label, metric_names, k: int) -> str:
  """The Markdown card of `model` ("cf", "deepfm" or "recommender") from the report
  (metrics.json's content) and `data` (`data_facts`)."""
  ranking = report.get("ranking") or {}
  like_model = report["models"].get(model)
  if like_model is not None:
    made_by = f"`Trainer.{model}`" + (f", {like_model['epochs']} epochs"
                                      if like_model.get("epochs") else "")
    blessed, blessing = like_model["blessed"], like_model["blessing_reason"]
    metrics = {name: (f"{like_model[name]:,}" if isinstance(like_model[name], int)
                      else f"{like_model[name]:.4f}")
               for name in metric_names if like_model.get(name) is not None}
    weakest = _weakest_slices(like_model.get("slices", {}), slice_label)
  else:  # the recommender: blessed on its lists
    verdict = ranking.get("blessing", {})
    made_by = "`RecommenderBuilder`, from the models of `Trainer.retrieval` and `Trainer.deepfm`"
    blessed = bool(verdict.get("blessed"))
    blessing = "; ".join(c["check"] for c in verdict.get("checks", [])) or "not judged"
    metrics, weakest = {}, []
  topk_users = ranking_evaluator.scored_users(ranking) if ranking else ""
  split_text = data["split_method"]
  if data["spans"]:
    split_text += f"; learned from span(s) {data['spans']}, judged on span {data['judged_span']}"
  statistics_text = ""
  if data.get("statistics"):
    stats = data["statistics"]
    statistics_text = (f"the {stats['split']} split of the newest data holds "
                       f"{stats['examples']:,} ratings by {stats['users']:,} users of "
                       f"{stats['movies']:,} movies, {stats['like_rate']:.1%} of them likes")
  return _TEMPLATE.render(
      split_text=split_text, statistics_text=statistics_text,
      title=titles.get(model, model), purpose=PURPOSE[model], signatures=SIGNATURES[model],
      made_by=made_by, blessed=blessed, blessing=blessing, data=data, split=report["split"],
      metrics=metrics, weakest=weakest, min_slice=MIN_SLICE_EXAMPLES,
      topk=_topk_rows(ranking, model, titles, k) if ranking else [], k=k,
      topk_users=topk_users, limits=LIMITS)


def to_html(markdown_text: str, title: str) -> str:
  body = markdown_lib.markdown(markdown_text, extensions=["tables"])
  return _PAGE.format(title=html.escape(title), body=body)


def write(cards: Dict[str, str], folder: str, titles: Dict[str, str]) -> Dict[str, str]:
  """Writes `<folder>/cards/<model>.md` and `.html`; returns the Markdown paths."""
  out = os.path.join(folder, CARDS_DIR)
  tf.io.gfile.makedirs(out)
  paths = {}
  for model, text in cards.items():
    paths[model] = os.path.join(out, f"{model}.md")
    with tf.io.gfile.GFile(paths[model], "w") as f:
      f.write(text)
    with tf.io.gfile.GFile(os.path.join(out, f"{model}.html"), "w") as f:
      f.write(to_html(text, f"Model card: {titles.get(model, model)}"))
  return paths
