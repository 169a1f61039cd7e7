"""ModelReport: both models' evaluations side by side.

Reads each Evaluator's TFMA output (metrics, plots, blessing), each Trainer's
history and RankingEvaluator's top-k lists, and writes into its artifact:
- metrics.json: per model, the overall test metrics (auc first), the confusion
  matrix at 0.5, AUC per slice, and whether it was blessed, with the reason; and
  under "ranking", each model's and baseline's top-k metrics;
- report.md: the side-by-side table, the reference study's numbers, the top-10
  lists table, AUC by slice;
- roc.png, training_curves.png, auc_by_slice.png, ranking_curves.png;
- cards/<model>.md and .html: each model's card (components/model_cards.py);
- tensorboard/<system>/: the evaluation as TensorBoard scalars, PR curves and a
  Fairness Indicators summary for each model; NDCG@k and recall@k (the step is
  k) for each model and baseline.
The run copies all but tensorboard/ to `<output_dir>/report/`.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components import model_cards
from components import ranking_evaluator
from components import report_figures
from components import report_tensorboard
from evaluation import results as evaluation_results
from evaluation import tfma_config
from evaluation import topk
from models import features

METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "report.md"
TENSORBOARD_DIR = "tensorboard"
# Bumped when metrics.json changes shape; `recsys report` refuses other versions.
FORMAT_VERSION = 4
MODEL_TITLES = {"cf": "CF (TFRS)", "deepfm": "DeepFM (Keras)"}
# The top-k table's columns: both models' `recommend`, then the baselines.
SYSTEM_TITLES = {**MODEL_TITLES, "retrieval": "retrieval (TFRS)",
                 "recommender": "recommender (served)",
                 "visitor": "recommender, for a visitor's history",
                 "last_blessed": "last blessed recommender",
                 "popularity": "popularity", "ease": "EASE",
                 "next_movie": "next movie (Markov chain)"}
# The study this project grew from: test AUC on MovieLens-1M, with its own splits.
REFERENCE_AUC = {"cf": 0.81, "deepfm": 0.82}
_VALUE_NAMES = {features.USER_GENDER: {"0": "female", "1": "male"}}


class ReportArtifact(types.Artifact):
  """A folder holding metrics.json, report.md, figures and TensorBoard summaries."""
  # namespace.Name: Kubeflow Pipelines v2 accepts no other form for a custom type.
  TYPE_NAME = "recsys.ModelReport"


def slice_label(feature: str, value: str) -> str:
  """'user_gender', '1' -> 'user_gender=male'."""
  return f"{feature}={_VALUE_NAMES.get(feature, {}).get(value, value)}"


def build_report(results: Dict[str, evaluation_results.ModelResults],
                 ranking: Optional[Dict] = None) -> Dict:
  """The content of metrics.json; `ranking` is RankingEvaluator's ranking.json."""
  return {"format_version": FORMAT_VERSION,
          "split": tfma_config.EVAL_SPLIT,
          "reference_auc_movielens_1m": REFERENCE_AUC,
          "models": {name: r.to_json() for name, r in results.items()},
          "ranking": ranking}


def _ranking_rows(ranking: Dict) -> List[Tuple[str, List[str]]]:
  """(label, one cell per system): the top-k metrics, coverage, already rated."""
  systems = ranking["systems"]
  names = list(systems)
  rows = [(metric, [_cell(systems[n]["metrics"][metric]) for n in names])
          for metric in systems[names[0]]["metrics"]]
  lead = f"ndcg@{topk.K}"
  if "confidence_95" in systems[names[0]]:
    rows.insert(1, (f"{lead}, 95% CI ±",
                    [_cell(systems[n].get("confidence_95", {}).get(lead)) for n in names]))
  rows.append(("catalogue coverage", [_cell(systems[n]["coverage"]) for n in names]))
  rows.append(("already rated", [_cell(systems[n]["already_rated_share"]) for n in names]))
  return rows


def ranking_table(report: Dict) -> str:
  """Plain-text table of every system's top-k lists in a metrics.json."""
  ranking = report["ranking"]
  names = list(ranking["systems"])
  width = max(14, *(len(SYSTEM_TITLES.get(n, n)) + 2 for n in names))
  lines = [f"{'top-k lists':<22}" + "".join(f"{SYSTEM_TITLES.get(n, n):>{width}}"
                                            for n in names)]
  for label, cells in _ranking_rows(ranking):
    lines.append(f"{label:<22}" + "".join(f"{cell:>{width}}" for cell in cells))
  return "\n".join(lines)


def _cell(value) -> str:
  """A value as the tables show it: counts with separators, the rest to 4 places."""
  if value is None:
    return "-"
  return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _rows(models: Dict, names: List[str]) -> List[Tuple[str, List[str]]]:
  """(label, one cell per model): the reported metrics, then the confusion matrix."""
  rows = [(metric, [_cell(models[n].get(metric)) for n in names])
          for metric in tfma_config.REPORTED_METRICS]
  for cell in evaluation_results.CONFUSION_CELLS:
    rows.append((f"{cell} @{tfma_config.DECISION_THRESHOLD:g}",
                 [_cell((models[n].get("confusion_matrix") or {}).get(cell))
                  for n in names]))
  return rows


def comparison_table(report: Dict) -> str:
  """Side-by-side plain-text table of the models in a metrics.json."""
  models = report["models"]
  names = list(models)
  width = max(14, *(len(MODEL_TITLES.get(n, n)) + 2 for n in names))
  lines = [f"{'test split':<22}" + "".join(f"{MODEL_TITLES.get(n, n):>{width}}"
                                           for n in names)]
  for label, cells in _rows(models, names):
    lines.append(f"{label:<22}" + "".join(f"{cell:>{width}}" for cell in cells))
  lines.append(f"{'blessed':<22}" + "".join(
      f"{'yes' if models[n]['blessed'] else 'NO':>{width}}" for n in names))
  lines.append(f"{'reference auc (1M)':<22}" + "".join(
      f"{REFERENCE_AUC.get(n, float('nan')):>{width}.2f}" for n in names))
  for n in names:
    lines.append(f"{n}: {'blessed' if models[n]['blessed'] else 'not blessed'}: "
                 f"{models[n]['blessing_reason']}")
  if report.get("ranking"):
    lines += ["", ranking_table(report)]
    if report["ranking"].get("blessing"):
      lines.append(_ranking_verdict(report["ranking"]["blessing"]))
  return "\n".join(lines)


def _ranking_verdict(blessing: Dict) -> str:
  """"recommender: blessed: ndcg@10 0.12 >= popularity's 0.08", from ranking.json."""
  verdict = "blessed" if blessing["blessed"] else "not blessed"
  return f"{blessing['model']}: {verdict}: {ranking_checks(blessing)}"


def ranking_checks(blessing: Dict) -> str:
  """The recommender's blessing checks, each failed one marked: "ndcg@10 0.12 >=
  popularity's 0.15 (failed)"."""
  return "; ".join(c["check"] + ("" if c["passed"] else " (failed)")
                   for c in blessing["checks"])


def _markdown(report: Dict, cards: Optional[Dict[str, str]] = None) -> str:
  models = report["models"]
  names = list(models)
  header = "| | " + " | ".join(MODEL_TITLES.get(n, n) for n in names) + " |"
  rule = "|---|" + "---:|" * len(names)
  rows = [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _rows(models, names)]
  rows.append("| blessed | " + " | ".join(
      "yes" if models[n]["blessed"] else "**no**" for n in names) + " |")
  rows.append("| reference study's test AUC, MovieLens-1M (not this data or split) | "
              + " | ".join(f"{REFERENCE_AUC.get(n, float('nan')):.2f}" for n in names)
              + " |")
  lines = [f"# MovieLens like prediction: {' vs '.join(MODEL_TITLES.get(n, n) for n in names)}",
           "", f"Test split, {models[names[0]]['example_count']:,} ratings. "
           "A rating of 4 or 5 is a like.", "", header, rule, *rows, "",
           "The reference numbers come from the notebook study this project grew "
           "from (cosine CF and DeepCTR's DeepFM on MovieLens-1M, with its own "
           "random splits); they are a yardstick, not a result on this run's data.",
           "", "## Blessing", ""]
  for n in names:
    verdict = "blessed" if models[n]["blessed"] else "not blessed"
    lines.append(f"- **{MODEL_TITLES.get(n, n)}**: {verdict}: {models[n]['blessing_reason']}")
  if report.get("ranking"):
    lines += _ranking_markdown(report["ranking"])
  lines += ["", "## AUC by slice", ""]
  for feature in tfma_config.SLICE_FEATURES:
    values = sorted({v for n in names for v in models[n]["slices"].get(feature, {})},
                    key=_natural)
    if not values:
      continue
    lines += [f"### {feature}", "", "| slice | examples | " + " | ".join(
        MODEL_TITLES.get(n, n) for n in names) + " |", "|---|---:|" + "---:|" * len(names)]
    for value in values:
      count = next(models[n]["slices"][feature][value]["example_count"] for n in names
                   if value in models[n]["slices"].get(feature, {}))
      cells = [f"{models[n]['slices'].get(feature, {}).get(value, {}).get('auc', float('nan')):.4f}"
               for n in names]
      lines.append(f"| {slice_label(feature, value)} | {count:,} | " + " | ".join(cells) + " |")
    lines.append("")
  if cards:
    lines += ["## Model cards", ""] + [
        f"- [{SYSTEM_TITLES.get(n, n)}]({model_cards.CARDS_DIR}/{n}.md) "
        f"([HTML]({model_cards.CARDS_DIR}/{n}.html))" for n in cards] + [""]
  lines += ["## Figures", "", f"![ROC curves]({report_figures.ROC_FILE})", "",
            f"![Training curves]({report_figures.TRAINING_FILE})", "",
            f"![AUC by slice]({report_figures.SLICES_FILE})", ""]
  if report.get("ranking"):
    lines += [f"![Top-k lists]({report_figures.RANKING_FILE})", ""]
  return "\n".join(lines)


def _ranking_markdown(ranking: Dict) -> List[str]:
  names = list(ranking["systems"])
  lines = ["", "## Top-10 lists", "",
           f"What each system would serve {ranking_evaluator.scored_users(ranking)}: the "
           "models through their `recommend` signature, as TF Serving calls it; the "
           "baselines over the same candidates (every movie the user has not rated in "
           "train or eval). Relevant: the test movies the user liked. The 95% "
           "confidence interval is over users (1.96 standard errors).", "",
           "| | " + " | ".join(SYSTEM_TITLES.get(n, n) for n in names) + " |",
           "|---|" + "---:|" * len(names)]
  lines += [f"| {label} | " + " | ".join(cells) + " |"
            for label, cells in _ranking_rows(ranking)]
  if ranking.get("blessing"):
    lines += ["", "The served recommender is retrieval's candidates ranked with DeepFM's "
              "like probability; it is blessed on these lists.", "",
              f"- {_ranking_verdict(ranking['blessing'])}"]
  return lines


def _natural(value: str):
  if value.lstrip("-").replace(".", "", 1).isdigit():
    return (0, float(value), "")
  return (1, 0.0, value)


def write_cards(report: Dict, folder: str, data: Dict) -> Dict[str, str]:
  """A model card for each model of the report and the served recommender
  (components/model_cards.py); returns their Markdown paths."""
  names = list(report["models"]) + (["recommender"] if report.get("ranking") else [])
  cards = {name: model_cards.render(name, report, data, SYSTEM_TITLES, slice_label,
                                    tfma_config.REPORTED_METRICS, topk.K)
           for name in names}
  return model_cards.write(cards, folder, SYSTEM_TITLES)


def write(results: Dict[str, evaluation_results.ModelResults], folder: str,
          ranking: Optional[Dict] = None, data: Optional[Dict] = None) -> Dict:
  """Writes metrics.json, report.md, figures and TensorBoard summaries to `folder`;
  with `data` (model_cards.data_facts), a model card for each model."""
  report = build_report(results, ranking)
  tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(os.path.join(folder, METRICS_FILE), "w") as f:
    json.dump(report, f, indent=2)
  cards = write_cards(report, folder, data) if data is not None else {}
  with tf.io.gfile.GFile(os.path.join(folder, MARKDOWN_FILE), "w") as f:
    f.write(_markdown(report, cards))
  report_figures.write_all(results, folder, MODEL_TITLES, slice_label)
  for name, model_results in results.items():
    report_tensorboard.write(model_results, os.path.join(folder, TENSORBOARD_DIR, name),
                             slice_label)
  if ranking:
    report_figures.write_ranking_curves(ranking, folder, SYSTEM_TITLES)
    for name, system in ranking["systems"].items():
      report_tensorboard.write_ranking(system, os.path.join(folder, TENSORBOARD_DIR, name))
  return report


def load(folder: str) -> Dict:
  """metrics.json of a report folder, checked to be this version's format."""
  path = os.path.join(folder, METRICS_FILE)
  try:
    with tf.io.gfile.GFile(path) as f:
      report = json.load(f)
  except (tf.errors.OpError, OSError) as e:
    raise evaluation_results.EvaluationError(f"cannot read {path}: {e}") from e
  except json.JSONDecodeError as e:
    raise evaluation_results.EvaluationError(f"{path} is not valid JSON: {e}") from e
  version = report.get("format_version") if isinstance(report, dict) else None
  if version != FORMAT_VERSION:
    raise evaluation_results.EvaluationError(
        f"{path} was written by another version of this project (report format "
        f"{version}, this version reads {FORMAT_VERSION}); rerun the pipeline")
  return report


@component
def ModelReport(cf_evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
                cf_blessing: InputArtifact[standard_artifacts.ModelBlessing],
                cf_model_run: InputArtifact[standard_artifacts.ModelRun],
                deepfm_evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
                deepfm_blessing: InputArtifact[standard_artifacts.ModelBlessing],
                deepfm_model_run: InputArtifact[standard_artifacts.ModelRun],
                ranking: InputArtifact[ranking_evaluator.RankingEvaluation],
                report: OutputArtifact[ReportArtifact],
                code_fingerprint: Parameter[str],
                learned_from: InputArtifact[List[standard_artifacts.Examples]] = None,
                examples: InputArtifact[standard_artifacts.Examples] = None,
                statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None):
  """Writes the side-by-side report of both models' evaluations and, with the
  examples the models `learned_from`, the newest `examples` and their `statistics`,
  the models' cards.

  `code_fingerprint` (common.code_fingerprint) only keys the cache, so a report
  written by other code is never reused.
  """
  del code_fingerprint
  inputs = {"cf": (cf_evaluation, cf_blessing, cf_model_run),
            "deepfm": (deepfm_evaluation, deepfm_blessing, deepfm_model_run)}
  results = {
      name: evaluation_results.read(
          evaluation_artifact.uri,
          bool(blessing.get_int_custom_property("blessed")), model_run.uri)
      for name, (evaluation_artifact, blessing, model_run) in inputs.items()}
  data = None
  if examples is not None:
    data = model_cards.data_facts(learned_from or [examples], examples,
                                  model_cards.train_statistics(statistics)
                                  if statistics is not None else None)
  write(results, report.uri, ranking_evaluator.load(ranking.uri), data)
  report.set_int_custom_property("format_version", FORMAT_VERSION)
