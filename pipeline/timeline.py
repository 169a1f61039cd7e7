"""A replay's timeline: what each span's run learned, how it was judged, what it pushed.

`recsys replay` appends one record per span to `<output_dir>/report/timeline.json`
and redraws, from the whole timeline, the figure `timeline.png` beside it and the
TensorBoard scalars under `timeline_tensorboard/` (one run per model or baseline,
the span as the step). A record is JSON:

    {"span": 5, "first_day": "1997-10-20", "last_day": "1997-10-26", "until": null,
     "outcome": "done" | "stopped", "stopped": "<the run's error>" (stopped only),
     "seconds": 84.1, "learned_from": [0, 4],
     "examples": {"window": <ratings of the spans learned from>, "span": <its own>},
     "stages": {"Transform": {"state": "done", "seconds": 12.3}, ...},
     "drift": {"previous_span": 4, "features": {"<feature>": distance}, "drifted": [...]},
     "models": {"cf": {"auc": 0.79, "blessed": true, "reason": "...", "pushed": "1700..."},
                "deepfm": {...},
                "recommender": {"ndcg@10": 0.13, "recall@10": ..., "blessed": ..., ...}},
     "baselines": {"popularity": {"ndcg@10": ..., "recall@10": ...}, "ease": {...}}}
"""
import dataclasses
import json
import os
import shutil
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from common import errors  # pylint: disable=g-import-not-at-top

TIMELINE_FILE = "timeline.json"
FIGURE_FILE = "timeline.png"
TENSORBOARD_DIR = "timeline_tensorboard"
# What a run's report publication leaves in place in the report folder.
FILES = (TIMELINE_FILE, FIGURE_FILE, TENSORBOARD_DIR)

LIKE_MODELS = ("cf", "deepfm")
RECOMMENDER = "recommender"
BASELINES = ("popularity", "ease")
RANKING_METRICS = ("ndcg@10", "recall@10")
FORMAT_VERSION = 1


class TimelineError(errors.RecsysError, ValueError):
  """A timeline.json that belongs to another replay or cannot be read."""


@dataclasses.dataclass
class Timeline:
  """The records of one replay, by span, with the settings every span shares."""
  settings: Dict
  records: List[Dict] = dataclasses.field(default_factory=list)

  def record_of(self, span: int, until: Optional[str]) -> Optional[Dict]:
    """The record of `span` cut at `until`, if the replay has run it."""
    for record in self.records:
      if record["span"] == span and record["until"] == until:
        return record
    return None

  def add(self, record: Dict) -> None:
    """Adds `record`, replacing an earlier one of the same span (another cut of it)."""
    self.records = sorted([r for r in self.records if r["span"] != record["span"]]
                          + [record], key=lambda r: r["span"])

  def to_json(self) -> Dict:
    return {"format_version": FORMAT_VERSION, "settings": self.settings,
            "spans": self.records}


def load(folder: str, settings: Dict) -> Timeline:
  """The timeline in `folder`, or a new one; refuses one made with other `settings`."""
  path = os.path.join(folder, TIMELINE_FILE)
  if not os.path.exists(path):
    return Timeline(settings)
  try:
    with open(path) as f:
      content = json.load(f)
  except json.JSONDecodeError as e:
    raise TimelineError(f"{path}: not JSON ({e}); move it away to start the replay "
                        "afresh") from None
  if content.get("format_version") != FORMAT_VERSION:
    raise TimelineError(f"{path}: format {content.get('format_version')}, this version "
                        f"writes {FORMAT_VERSION}; move it away to start afresh")
  if content["settings"] != settings:
    different = sorted(k for k in set(settings) | set(content["settings"])
                       if settings.get(k) != content["settings"].get(k))
    raise TimelineError(
        f"{path} is the timeline of a replay with other settings ("
        + ", ".join(f"{k}: {content['settings'].get(k)!r} there, {settings.get(k)!r} now"
                    for k in different)
        + "); use another --output-dir, or the same settings to continue it")
  return Timeline(settings, content["spans"])


def save(timeline: Timeline, folder: str) -> str:
  """Writes timeline.json (whole, or not at all), the figure and the TensorBoard scalars."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, TIMELINE_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(timeline.to_json(), f, indent=1)
  os.replace(path + ".tmp", path)
  figure(timeline, os.path.join(folder, FIGURE_FILE))
  write_tensorboard(timeline, os.path.join(folder, TENSORBOARD_DIR))
  return path


def _series(timeline: Timeline, system: str, metric: str):
  """(spans, values, blessed) of one system's metric over the spans that have it."""
  points = []
  for record in timeline.records:
    entry = (record.get("models", {}).get(system)
             or record.get("baselines", {}).get(system) or {})
    if metric in entry:
      points.append((record["span"], entry[metric], entry.get("blessed")))
  return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def figure(timeline: Timeline, path: str) -> None:
  """Test AUC of the like models and NDCG@10 of the recommender against the
  baselines, per span; hollow markers where the model was not blessed, grey bands
  where the run stopped (drift, anomalies)."""
  fig, (auc_axes, ndcg_axes) = plt.subplots(1, 2, figsize=(12, 4.2))
  for axes, systems, metric in ((auc_axes, LIKE_MODELS, "auc"),
                                (ndcg_axes, (RECOMMENDER, *BASELINES), "ndcg@10")):
    for system in systems:
      spans, values, blessed = _series(timeline, system, metric)
      if not spans:
        continue
      baseline = system in BASELINES
      line, = axes.plot(spans, values, "--" if baseline else "-", label=system)
      if not baseline:
        axes.scatter([s for s, b in zip(spans, blessed) if b],
                     [v for v, b in zip(values, blessed) if b], color=line.get_color())
        axes.scatter([s for s, b in zip(spans, blessed) if not b],
                     [v for v, b in zip(values, blessed) if not b],
                     facecolors="none", edgecolors=line.get_color())
    for record in timeline.records:
      if record["outcome"] == "stopped":
        axes.axvspan(record["span"] - 0.4, record["span"] + 0.4, color="grey", alpha=0.25)
    axes.set(xlabel=f"span ({timeline.settings.get('every', '')})", ylabel=metric,
             title=f"test {metric} on each span, learned from the spans before it")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:  # not when every span so far stopped
      axes.legend(fontsize=8)
  fig.text(0.01, 0.01, "filled: blessed and pushed; hollow: rejected; grey: run stopped",
           fontsize=8)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_tensorboard(timeline: Timeline, logdir: str) -> None:
  """One TensorBoard run per system (`<logdir>/<system>`), the span as the step.

  Redrawn whole from the timeline, so that a span resumed after a kill is never
  logged twice.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shutil.rmtree(logdir, ignore_errors=True)
  systems = (*LIKE_MODELS, RECOMMENDER, *BASELINES)
  writers = {name: tf.summary.create_file_writer(os.path.join(logdir, name))
             for name in (*systems, "run")}
  for record in timeline.records:
    step = record["span"]
    for name in systems:
      entry = (record.get("models", {}).get(name)
               or record.get("baselines", {}).get(name) or {})
      with writers[name].as_default():
        for metric, value in entry.items():
          if metric in ("auc", *RANKING_METRICS):
            tf.summary.scalar(f"timeline/{metric}", value, step=step)
        if "blessed" in entry:
          tf.summary.scalar("timeline/blessed", float(entry["blessed"]), step=step)
    with writers["run"].as_default():
      tf.summary.scalar("timeline/seconds", record["seconds"], step=step)
      tf.summary.scalar("timeline/stopped", float(record["outcome"] == "stopped"),
                        step=step)
      for feature, distance in record.get("drift", {}).get("features", {}).items():
        tf.summary.scalar(f"drift/{feature}", distance, step=step)
  for writer in writers.values():
    writer.close()


def _cell(record: Dict, system: str, metric: str, width: int) -> str:
  """A metric of a model (marked + blessed, x rejected) or a baseline, right-aligned."""
  entry = record["models"].get(system) or record["baselines"].get(system) or {}
  if metric not in entry:
    return f"{'-':>{width}}"
  mark = "" if "blessed" not in entry else ("+" if entry["blessed"] else "x")
  return f"{entry[metric]:.4f}{mark}".rjust(width)


def table(timeline: Timeline) -> str:
  """One line per span: dates, examples, AUCs, NDCG@10 against popularity, pushes."""
  lines = [f"{'span':>4}  {'days':<23} {'learned':>7} {'tested':>6}  {'cf auc':>8} "
           f"{'deepfm auc':>10}  {'rec ndcg':>9} {'pop ndcg':>8}  {'pushed':<22} {'s':>5}"]
  for r in timeline.records:
    days = f"{r['first_day']}..{r['until'] or r['last_day']}"
    if r["outcome"] == "stopped":
      reason = r["stopped"].splitlines()
      lines.append(f"{r['span']:>4}  {days:<23} stopped: "
                   + "; ".join(line.strip() for line in reason[:2])[:110])
      continue
    models = r["models"]
    pushed = ",".join(name for name, m in models.items() if m.get("pushed")) or "-"
    lines.append(
        f"{r['span']:>4}  {days:<23} {r['examples']['window']:>7,} "
        f"{r['examples']['span']:>6,}  {_cell(r, 'cf', 'auc', 8)} "
        f"{_cell(r, 'deepfm', 'auc', 10)}  {_cell(r, RECOMMENDER, 'ndcg@10', 9)} "
        f"{_cell(r, 'popularity', 'ndcg@10', 8)}  {pushed:<22} {r['seconds']:>5.0f}")
  lines.append("learned: ratings of the spans before (the window); tested: the span's "
               "own; + blessed, x rejected")
  return "\n".join(lines)
