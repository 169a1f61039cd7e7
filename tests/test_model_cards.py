"""Model cards (components/model_cards.py) from a hand-made report, and which
pushed models get them beside their versions."""
import json

from tfx.types import standard_artifacts

from components import model_cards
from components import model_report
from evaluation import tfma_config
from pipeline import run_state


def _report(deepfm_blessed: bool) -> dict:
  slices = {"movie_genres": {
      "Drama": {"example_count": 400, "auc": 0.71},
      "Horror": {"example_count": 50, "auc": 0.40},  # too few test ratings to show
      "Comedy": {"example_count": 300, "auc": 0.77}}}
  model = {"auc": 0.8123, "example_count": 1000, "blessed": deepfm_blessed,
           "blessing_reason": "auc 0.8123 >= floor 0.6000", "epochs": 4, "slices": slices}
  system = {"metrics": {"ndcg@10": 0.2, "recall@10": 0.3, "hit_rate@10": 0.6},
            "confidence_95": {"ndcg@10": 0.01, "recall@10": 0.02, "hit_rate@10": 0.03}}
  return {"format_version": model_report.FORMAT_VERSION, "split": "test",
          "models": {"deepfm": model},
          "ranking": {"users": 900, "test_users": 943, "systems": {
              "deepfm": system, "recommender": system, "popularity": system},
              "blessing": {"blessed": True, "checks": [{"check": "ndcg ok", "passed": True}]}}}


def _data():
  examples = standard_artifacts.Examples()
  examples.id, examples.span = 7, 0
  examples.set_string_custom_property("dataset", "movielens/100k-ratings")
  examples.set_string_custom_property("split_counts", json.dumps({"train": 80, "test": 10}))
  return model_cards.data_facts([examples], examples, None)


def test_a_card_says_what_the_report_recorded():
  card = model_cards.render("deepfm", _report(True), _data(), model_report.SYSTEM_TITLES,
                            model_report.slice_label, tfma_config.REPORTED_METRICS, 10)
  assert card.startswith("# Model card: DeepFM (Keras)\n")
  assert "- **Release**: movielens/100k-ratings" in card and "- **train**: 80 ratings" in card
  assert "| auc | 0.8123 |" in card and "| example_count | 1,000 |" in card
  # The weakest slices with enough test ratings, weakest first.
  assert card.index("movie_genres=Drama") < card.index("movie_genres=Comedy")
  assert "Horror" not in card
  assert "a fixed random sample of 900 of the 943 test users" in card
  assert "| DeepFM (Keras) | 0.2000 ± 0.0100 | 0.3000 ± 0.0200 | 0.6000 ± 0.0300 |" in card
  recommender = model_cards.render("recommender", _report(True), _data(),
                                   model_report.SYSTEM_TITLES, model_report.slice_label,
                                   tfma_config.REPORTED_METRICS, 10)
  assert "- **Blessed**: yes: ndcg ok." in recommender and "| auc |" not in recommender


def test_only_the_models_this_run_pushed_get_its_cards(tmp_path):
  report_dir, serving = tmp_path / "report", tmp_path / "serving"
  report_dir.mkdir()
  (report_dir / model_report.METRICS_FILE).write_text(json.dumps(_report(False)))
  cards = {"deepfm": "# DeepFM", "recommender": "# Recommender"}
  model_cards.write(cards, str(report_dir), model_report.SYSTEM_TITLES)
  for model in ("deepfm", "recommender"):
    (serving / model / "1").mkdir(parents=True)
  (serving / "deepfm" / "model_card.md").write_text("the card of the run that pushed it")
  copied = run_state.publish_cards(str(report_dir), str(serving))
  assert copied == [str(serving / "recommender" / "model_card.md")]
  assert (serving / "recommender" / "model_card.md").read_text() == "# Recommender"
  assert "<h1>Recommender</h1>" in (serving / "recommender" / "model_card.html").read_text()
  # DeepFM was not blessed here: what is served is an earlier run's, with its card.
  assert (serving / "deepfm" / "model_card.md").read_text() == (
      "the card of the run that pushed it")
