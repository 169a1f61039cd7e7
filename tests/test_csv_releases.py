"""MovieLens 20M and 25M: CSV files, half stars, no users table, and models without
user demographics."""
import os
import zipfile

import numpy as np
import pyarrow.compute as pc
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.structured import movielens_parsing
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

from components import drift
from components import import_schema_gen
from components.movielens_example_gen import parsing
from components.movielens_example_gen import sources
from evaluation import tfma_config
from models import data
from models import features
from pipeline import configs
from serving import contract
from testing import examples
from testing import synthetic
from tests import transform_fixture
from tests.conftest import export_briefly_trained

ML_25M = parsing.LAYOUTS["25m"]

# A release as GroupLens writes 25M's, by hand: a title with a comma (quoted), one
# with a quote inside, a movie without genres, half stars from 0.5 to 5.0.
MOVIES_CSV = '''movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
11,"American President, The (1995)",Comedy|Drama|Romance
50,"Usual Suspects, The (1995)",Crime|Mystery|Thriller
209171,"""Women of Devil's Island"" (1962)",Action|Adventure|Drama
182727,A Christmas Story Live! (2017),(no genres listed)
'''
RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,1147880044
1,11,3.5,1147868817
1,50,0.5,1147868828
2,50,5.0,1141415820
2,209171,4.5,1141417080
3,182727,2.5,1439474476
"""


def _write(folder, movies=MOVIES_CSV, ratings=RATINGS_CSV):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "movies.csv"), "w", encoding="utf-8") as f:
    f.write(movies)
  with open(os.path.join(folder, "ratings.csv"), "w", encoding="utf-8") as f:
    f.write(ratings)
  return str(folder)


def _column(table, name):
  return pc.list_flatten(table.column(name)).to_pylist()


def test_a_hand_made_release_reads_as_tfds_names_it(tmp_path):
  table = parsing.read_release(_write(tmp_path), ML_25M)
  assert table.num_rows == 6
  assert not set(table.column_names) & set(features.DEMOGRAPHIC_FEATURES)
  titles = [t.decode() for t in _column(table, features.MOVIE_TITLE)]
  assert titles[1] == "American President, The (1995)"
  assert titles[4] == '"Women of Devil\'s Island" (1962)'
  assert _column(table, features.USER_RATING) == [4.0, 3.5, 0.5, 5.0, 4.5, 2.5]
  # A like is 4 stars or more: 3.5 is not one, 4.5 is.
  assert _column(table, features.LABEL) == [1, 0, 0, 1, 1, 0]
  genres = table.column(features.MOVIE_GENRES).to_pylist()
  assert genres[5] == [b"(no genres listed)"]
  assert len(genres[0]) == 5


@pytest.mark.parametrize("dataset", ["20m", "25m"])
def test_a_csv_release_matches_tfds_parser_row_for_row(dataset, tmp_path):
  release = synthetic.write_release(str(tmp_path), dataset, num_users=60, num_movies=150,
                                    num_ratings=3_000, seed=4)
  table = parsing.read_release(release.folder, parsing.LAYOUTS[dataset], lines_per_shard=700)
  theirs = [example for _, example in movielens_parsing.parse_current_ratings_data(
      release.folder)]
  assert table.num_rows == len(theirs) == 3_000
  for i, (row, tfds_row) in enumerate(zip(table.to_pylist(), theirs)):
    ours = {"user_id": row[features.USER_ID][0].decode(),
            "movie_id": row[features.MOVIE_ID][0].decode(),
            "movie_title": row[features.MOVIE_TITLE][0].decode(),
            "movie_genres": [g.decode() for g in row[features.MOVIE_GENRES]],
            "user_rating": row[features.USER_RATING][0],
            "timestamp": row[features.TIMESTAMP][0]}
    tfds_row = dict(tfds_row, user_rating=float(tfds_row["user_rating"]),
                    timestamp=int(tfds_row["timestamp"]))
    assert ours == tfds_row, f"row {i} differs"
  ratings = np.array(_column(table, features.USER_RATING))
  assert set(ratings) > {0.5, 1.5, 4.5, 5.0}  # half stars, both sides of a like
  np.testing.assert_array_equal(_column(table, features.LABEL), ratings >= 4)
  assert sum(_column(table, features.LABEL)) == release.num_likes


@pytest.mark.parametrize("file_name, bad, good, message", [
    ("ratings.csv", "userId,movieId,rating,timestamp", "user,movie,rating,time",
     r"ratings.csv, line 1: expected the header 'userId,movieId,rating,timestamp', "
     r"found 'user,movie,rating,time'"),
    ("ratings.csv", "1,11,3.5,", "1,11,0.4,",
     r"ratings.csv, line 3: rating '0.4' is outside 0.5 to 5"),
    ("ratings.csv", "2,50,5.0,", "2,50,5.5,",
     r"ratings.csv, line 5: rating '5.5' is outside 0.5 to 5"),
    ("ratings.csv", "2,209171,", "2,209172,",
     r"ratings.csv, line 6: movie id '209172' is not in movies.csv"),
    ("ratings.csv", "3,182727,", "x3,182727,",
     r"ratings.csv, line 7: user id 'x3' is not a whole number"),
    ("ratings.csv", "1,50,0.5,1147868828", "1,50,0.5",
     r"ratings.csv, line 4: expected 4 fields"),
    ("movies.csv", "movieId,title,genres", "id,title,genres",
     r"movies.csv, line 1: expected the header 'movieId,title,genres'"),
    ("movies.csv", '"Usual Suspects, The (1995)"', "Usual Suspects, The (1995)",
     r"movies.csv, line 4: expected 3 comma-separated fields .* found 4"),
    ("movies.csv", '182727,A Christmas', '182727,"A Christmas',
     r"movies.csv, line \d+: not valid CSV"),
    ("movies.csv", "11,\"American", "1,\"American",
     r"movies.csv, line 3: movie id '1' already defined on line 2"),
    ("movies.csv", "Action|Adventure|Drama", "Action||Drama",
     r"movies.csv, line 5: genres 'Action\|\|Drama': a genre name is empty"),
])
def test_bad_csv_input_names_the_file_and_line(file_name, bad, good, message, tmp_path):
  files = {"movies.csv": MOVIES_CSV, "ratings.csv": RATINGS_CSV}
  assert bad in files[file_name]
  files[file_name] = files[file_name].replace(bad, good, 1)
  folder = _write(tmp_path, files["movies.csv"], files["ratings.csv"])
  with pytest.raises(parsing.MovieLensDataError, match=message):
    parsing.read_release(folder, ML_25M)


@pytest.mark.parametrize("ratings, movies, message", [
    ("userId,movieId,rating,timestamp\n\n", MOVIES_CSV, "ratings.csv: no ratings found"),
    ("userId,movieId,rating,timestamp", MOVIES_CSV,
     "ratings.csv: no ratings found after the header line"),
    (RATINGS_CSV, "movieId,title,genres\n", "movies.csv: no movies found after the header"),
])
def test_a_file_with_its_header_alone_has_nothing_in_it(ratings, movies, message, tmp_path):
  folder = _write(tmp_path, movies=movies, ratings=ratings)
  with pytest.raises(parsing.MovieLensDataError, match=message):
    parsing.read_release(folder, ML_25M)


def test_shards_start_after_the_header_and_count_lines_from_it(tmp_path):
  folder = _write(tmp_path)
  shards = parsing.plan_ratings_shards(os.path.join(folder, "ratings.csv"), 4,
                                       ML_25M.ratings_header)
  assert [(s.first_line, s.num_lines) for s in shards] == [(2, 4), (6, 2)]
  assert parsing.read_shard_bytes(shards[0]).startswith(b"1,1,4.0,")


def test_the_release_is_found_as_folder_or_official_zip(tmp_path):
  folder = _write(tmp_path / "downloads" / "ml-25m")
  assert sources.resolve("25m", str(tmp_path / "downloads")).folder == folder
  os.remove(os.path.join(folder, "movies.csv"))
  with pytest.raises(parsing.MovieLensDataError, match="incomplete: movies.csv not found"):
    sources.resolve("25m", folder)

  manual = tmp_path / "manual"
  manual.mkdir()
  zip_path = manual / "ml-20m.zip"
  with zipfile.ZipFile(zip_path, "w") as archive:
    for name, text in (("movies.csv", MOVIES_CSV), ("ratings.csv", RATINGS_CSV)):
      archive.writestr(f"ml-20m/{name}", text)
  url = sources.tfds_config("20m").download_url
  assert url == "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
  # TFDS checks the zip against the checksum it registers for the official one...
  with pytest.raises(parsing.MovieLensDataError, match="not the official MovieLens 20M"):
    sources.resolve("20m", str(manual), str(tmp_path / "dl"))
  # ...and, told this one's (before it, in this process: TFDS keeps what it was told),
  # extracts it.
  source = sources.resolve("20m", str(manual), str(tmp_path / "dl"),
                           url_infos={url: checksums.compute_url_info(zip_path)})
  assert source.kind == "zip"
  assert parsing.read_release(source.folder, parsing.LAYOUTS["20m"]).num_rows == 6


def _schema():
  return io_utils.parse_pbtxt_file(configs.SCHEMA_FILE, schema_pb2.Schema())


def test_the_schema_is_fitted_to_what_the_release_has():
  schema = _schema()
  assert import_schema_gen.for_dataset(schema, "1m") == schema
  fitted = import_schema_gen.for_dataset(schema, "25m")
  names = {f.name for f in fitted.feature}
  assert names == {f.name for f in schema.feature} - set(features.DEMOGRAPHIC_FEATURES)
  assert [d.name for d in fitted.string_domain] == [features.MOVIE_GENRES]
  by_name = {f.name: f for f in fitted.feature}
  assert by_name[features.USER_RATING].float_domain.min == 0.5
  assert not by_name[features.MOVIE_GENRES].value_count.HasField("max")
  assert features.AGE_BUCKET in {f.name for f in schema.feature}  # a copy was changed


def test_a_synthetic_release_has_no_anomalies_against_its_schema(tmp_path):
  release = synthetic.write_release(str(tmp_path), "25m", num_users=40, num_movies=120,
                                    num_ratings=1_500, seed=2)
  table = examples.with_histories(parsing.read_release(release.folder, ML_25M))
  several = (features.MOVIE_GENRES,) + features.HISTORY_RAW_FEATURES
  statistics = tfdv.generate_statistics_from_dataframe(table.to_pandas().assign(
      **{name: lambda frame, name=name: frame[name].map(lambda v: v[0])
         for name in table.column_names if name not in several}))
  fitted = import_schema_gen.for_dataset(_schema(), "25m")
  anomalies = tfdv.validate_statistics(statistics, fitted)
  assert not anomalies.anomaly_info, anomalies.anomaly_info
  # The 1M schema would refuse these examples: half stars below 1 and no demographics.
  assert tfdv.validate_statistics(statistics, _schema()).anomaly_info


def test_slices_and_drift_checks_keep_to_what_the_release_has():
  assert tfma_config.slice_features("25m") == (features.MOVIE_GENRES,)
  assert tfma_config.slice_features("1m") == tfma_config.SLICE_FEATURES
  compared = drift.thresholds_for(0, 1, "20m")
  assert features.USER_RATING in compared and features.LABEL in compared
  assert not set(compared) & set(features.DEMOGRAPHIC_FEATURES)


@pytest.fixture(scope="module")
def transformed_25m(tmp_path_factory):
  """A synthetic 25M-layout release, with histories, after the project's Transform."""
  folder = tmp_path_factory.mktemp("release_25m")
  release = synthetic.write_release(str(folder), "25m", num_users=120, num_movies=200,
                                    num_ratings=6_000, seed=8, watch_affinity=3.0)
  table = examples.with_histories(parsing.read_release(release.folder, ML_25M))
  return transform_fixture.run_transform(transform_fixture.rows_from_table(table),
                                         str(tmp_path_factory.mktemp("transform_25m")))


@pytest.mark.parametrize("model_name", ["deepfm", "retrieval"])
def test_models_without_demographics_train_export_and_serve(model_name, transformed_25m,
                                                            tmp_path):
  sizes = data.vocabulary_sizes(transformed_25m.output)
  assert set(sizes) == {features.USER_ID, features.MOVIE_ID, features.MOVIE_DECADE,
                        features.MOVIE_GENRES}
  export_dir = str(tmp_path / "model")
  export_briefly_trained(model_name, transformed_25m, export_dir)
  loaded = tf.saved_model.load(export_dir)
  raw_inputs = set(loaded.signatures[contract.PREDICT_RAW].structured_input_signature[1])
  assert not raw_inputs & set(features.DEMOGRAPHIC_FEATURES)
  assert {features.USER_ID, features.MOVIE_ID, features.MOVIE_GENRES} <= raw_inputs
  users = tf.constant(["1", "2", "999999"])  # the last was never seen
  scores = loaded.signatures[contract.PREDICT](
      user_id=users, movie_id=tf.constant(["10", "20", "30"]))
  values = next(iter(scores.values())).numpy()
  assert values.shape == (3,) and np.all(np.isfinite(values))
  top = loaded.signatures[contract.RECOMMEND](user_id=users, k=tf.constant(5))
  movie_ids = top[contract.MOVIE_IDS].numpy()
  assert movie_ids.shape == (3, 5)
  rated = {(r[features.USER_ID][0], r[features.MOVIE_ID][0]) for r in transformed_25m.raw}
  assert not any((b"1", m) in rated for m in movie_ids[0])


@pytest.mark.parametrize("layout", ["1m", "25m"])
def test_a_synthetic_release_is_the_same_written_a_chunk_at_a_time(layout, tmp_path,
                                                                   monkeypatch):
  # What keeps a 25M-rating release (testing/synthetic.py's SHAPES) in memory.
  settings = {"num_users": 80, "num_movies": 150, "num_ratings": 5_000, "seed": 6}
  whole = synthetic.write_release(str(tmp_path / "whole"), layout, **settings)
  monkeypatch.setattr(synthetic, "_CHUNK", 777)
  chunked = synthetic.write_release(str(tmp_path / "chunked"), layout, **settings)
  assert (whole.num_ratings, whole.num_likes) == (chunked.num_ratings, chunked.num_likes)
  ratings = parsing.LAYOUTS[layout].ratings_file
  assert (tmp_path / "whole" / ratings).read_bytes() == (
      tmp_path / "chunked" / ratings).read_bytes()
  times = _column(parsing.read_release(chunked.folder, parsing.LAYOUTS[layout]),
                  features.TIMESTAMP)
  low, high = synthetic.TIMESTAMP_RANGES[layout]
  assert low <= min(times) and max(times) < high
