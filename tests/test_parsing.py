"""MovieLens parsing: real-data counts, parity with TFDS's parsers, bad input."""
import os
import shutil

import numpy as np
import pyarrow.compute as pc
import pytest
from tensorflow_datasets.structured import movielens_parsing
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

from components.movielens_example_gen import parsing
from models import features
from pipeline import configs
from testing import synthetic
from tests.conftest import REAL_1M
from tests.conftest import REAL_100K
from tests.conftest import requires

ML_1M = parsing.LAYOUTS["1m"]
ML_100K = parsing.LAYOUTS["100k"]


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else value


def _values(table, name):
  """All values of a feature column, its one-value lists unwrapped, bytes as text."""
  return [_text(v) for v in pc.list_flatten(table.column(name)).to_pylist()]


def _rows(table):
  """Table rows as dicts of scalars (lists only for genres), bytes as text."""
  for row in table.to_pylist():
    yield {k: ([_text(g) for g in v] if k == features.MOVIE_GENRES else _text(v[0]))
           for k, v in row.items()}


def _tfds_view(row):
  """Our row in the types TFDS's parser yields, for an exact comparison."""
  view = {
      "user_id": row[features.USER_ID], "movie_id": row[features.MOVIE_ID],
      "movie_title": row[features.MOVIE_TITLE],
      "movie_genres": row[features.MOVIE_GENRES],
      "user_rating": row[features.USER_RATING],
      "timestamp": row[features.TIMESTAMP],
      "user_gender": bool(row[features.USER_GENDER]),
      "bucketized_user_age": row[features.AGE_BUCKET],
      "user_occupation_label": row[features.OCCUPATION_LABEL],
      "user_occupation_text": row[features.OCCUPATION_TEXT],
      "user_zip_code": row[features.ZIP_CODE],
  }
  if features.RAW_USER_AGE in row:
    view["raw_user_age"] = row[features.RAW_USER_AGE]
  return view


def _normalise_tfds(example):
  """TFDS's parser yields ratings, timestamps and 1M ages as strings."""
  example = dict(example)
  example["user_rating"] = float(example["user_rating"])
  example["timestamp"] = int(example["timestamp"])
  example["bucketized_user_age"] = int(example["bucketized_user_age"])
  if "raw_user_age" in example:
    example["raw_user_age"] = float(example["raw_user_age"])
  return example


def _assert_same_as_tfds(table, tfds_rows):
  ours = list(_rows(table))
  assert len(ours) == len(tfds_rows)
  for i, (mine, (_, theirs)) in enumerate(zip(ours, tfds_rows)):
    assert _tfds_view(mine) == _normalise_tfds(theirs), f"row {i} differs"


@requires(REAL_100K)
def test_real_100k_counts():
  table = parsing.read_release(str(REAL_100K), ML_100K, lines_per_shard=30_000)
  assert table.num_rows == 100_000
  assert len(set(_values(table, features.USER_ID))) == 943
  assert len(set(_values(table, features.MOVIE_ID))) == 1682
  assert sum(_values(table, features.LABEL)) == 55_375


@requires(REAL_100K)
def test_real_100k_matches_tfds_parser_row_for_row():
  table = parsing.read_release(str(REAL_100K), ML_100K)
  _assert_same_as_tfds(table, list(movielens_parsing.parse_100k_ratings_data(
      str(REAL_100K))))


@requires(REAL_1M)
def test_real_1m_tables_match_tfds_parser(tmp_path):
  # ratings.dat is not available offline: synthetic ratings over the real tables.
  release = synthetic.write_release(str(tmp_path), "1m", num_ratings=20_000, seed=3,
                                    tables_from=str(REAL_1M))
  table = parsing.read_release(release.folder, ML_1M, lines_per_shard=7_000)
  _assert_same_as_tfds(table, list(movielens_parsing.parse_1m_ratings_data(
      release.folder)))
  titles = set(_values(table, features.MOVIE_TITLE))
  # ISO-8859-1 titles of the real movies.dat, read as the right characters.
  assert any("é" in t for t in titles)


@pytest.mark.parametrize("layout", ["1m", "100k"])
def test_synthetic_release_parses_completely(layout, tmp_path):
  release = synthetic.write_release(str(tmp_path), layout, num_users=50,
                                    num_movies=80, num_ratings=2_000, seed=5)
  table = parsing.read_release(release.folder, parsing.LAYOUTS[layout],
                               lines_per_shard=700)
  assert table.num_rows == release.num_ratings == 2_000
  assert sum(_values(table, features.LABEL)) == release.num_likes
  assert (features.RAW_USER_AGE in table.column_names) == (layout == "100k")
  genres = set(_values(table, features.MOVIE_GENRES))
  schema = io_utils.parse_pbtxt_file(configs.SCHEMA_FILE, schema_pb2.Schema())
  allowed = next(d.value for d in schema.string_domain if d.name == features.MOVIE_GENRES)
  assert genres <= set(allowed) and "Children's" not in genres
  ratings = np.array(_values(table, features.USER_RATING))
  likes = np.array(_values(table, features.LABEL))
  np.testing.assert_array_equal(likes, (ratings >= 4).astype(int))


def test_latin1_and_utf8_titles_read_the_same(synthetic_1m, tmp_path):
  utf8_copy = tmp_path / "utf8"
  shutil.copytree(synthetic_1m.folder, utf8_copy)
  movies = utf8_copy / "movies.dat"
  latin1 = movies.read_bytes()
  assert b"\xe9" in latin1  # 'é' as one ISO-8859-1 byte
  movies.write_text(latin1.decode("iso-8859-1"), encoding="utf-8")
  a = parsing.read_movies(synthetic_1m.folder, ML_1M).titles.to_pylist()
  b = parsing.read_movies(str(utf8_copy), ML_1M).titles.to_pylist()  # str, not bytes
  assert a == b and any("é" in t for t in a)


def test_splits_are_deterministic_and_80_10_10():
  users = np.array([str(u) for u in range(2000) for _ in range(20)], dtype=object)
  movies = np.array([str(m) for _ in range(2000) for m in range(20)], dtype=object)
  first = parsing.assign_splits(users, movies, seed=42, hash_buckets=[8, 1, 1])
  again = parsing.assign_splits(users, movies, seed=42, hash_buckets=[8, 1, 1])
  other_seed = parsing.assign_splits(users, movies, seed=7, hash_buckets=[8, 1, 1])
  np.testing.assert_array_equal(first, again)
  assert (first != other_seed).mean() > 0.2
  shares = np.bincount(first, minlength=3) / len(first)
  np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.01)


# Each case: file to edit, (line number, new content) or a whole-file writer,
# and what the error must say besides the file name.
_CORRUPTIONS = {
    "too few fields": ("ratings.dat", 3, "1::2::3", "line 3: expected 4 fields"),
    "too many fields": ("ratings.dat", 5, "1::2::3::4::5", "line 5: expected 4 fields"),
    "non-numeric rating": ("ratings.dat", 4, "1::2::five::978300760",
                           "line 4: rating 'five' is not a number"),
    "rating above 5": ("ratings.dat", 2, "1::2::6::978300760",
                       "line 2: rating '6' is outside 1 to 5"),
    "rating 0": ("ratings.dat", 7, "1::2::0::978300760",
                 "line 7: rating '0' is outside 1 to 5"),
    "nan rating": ("ratings.dat", 7, "1::2::nan::978300760",
                   "line 7: rating 'nan' is outside 1 to 5"),
    "bad timestamp": ("ratings.dat", 6, "1::2::3::yesterday",
                      "line 6: timestamp 'yesterday' is not a whole number"),
    "unknown user": ("ratings.dat", 8, "99999::2::3::978300760",
                     "line 8: user id '99999' is not in users.dat"),
    "unknown movie": ("ratings.dat", 9, "1::99999::3::978300760",
                      "line 9: movie id '99999' is not in movies.dat"),
    "NUL byte in movies": ("movies.dat", 2, "2::Bad\x00Title (1999)::Drama",
                           "line 2: contains a NUL byte"),
    "duplicate movie": ("movies.dat", 3, "1::Copy (1999)::Drama",
                        "line 3: movie id '1' already defined on line 1"),
    "bad gender": ("users.dat", 4, "4::X::25::3::55455", "line 4: gender 'X'"),
    "bad occupation": ("users.dat", 2, "2::M::25::42::55455",
                       "line 2: occupation code 42 is not between 0 and 20"),
    "bad age group": ("users.dat", 2, "2::M::33::4::55455",
                      "line 2: age '33' is not one of MovieLens 1M's age groups"),
    "users wrong separator": ("users.dat", 5, "5|M|25|3|55455",
                              "line 5: expected 5 fields separated by '::'"),
}


def _corrupt(folder, name, line, content):
  path = os.path.join(folder, name)
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  lines[line - 1] = content.encode("iso-8859-1")
  with open(path, "wb") as f:
    f.write(b"\n".join(lines))
  return path


@pytest.mark.parametrize("case", sorted(_CORRUPTIONS))
def test_malformed_line_names_file_and_line(case, synthetic_1m, tmp_path):
  folder = str(tmp_path / "release")
  shutil.copytree(synthetic_1m.folder, folder)
  name, line, content, expected = _CORRUPTIONS[case]
  path = _corrupt(folder, name, line, content)
  with pytest.raises(parsing.MovieLensDataError) as error:
    parsing.read_release(folder, ML_1M, lines_per_shard=1000)
  assert str(error.value).startswith(f"{path}, line {line}:")
  assert expected in str(error.value)


def test_error_line_numbers_count_across_shards(synthetic_1m, tmp_path):
  folder = str(tmp_path / "release")
  shutil.copytree(synthetic_1m.folder, folder)
  path = _corrupt(folder, "ratings.dat", 4321, "1::2::9::978300760")
  with pytest.raises(parsing.MovieLensDataError, match=f"{path}, line 4321: rating"):
    parsing.read_release(folder, ML_1M, lines_per_shard=1000)


def test_a_time_range_keeps_its_ratings_and_still_checks_every_line(synthetic_1m, tmp_path):
  """What a span's Beam step parses: the ratings in its time range, with the rows the
  whole parse gives them; a line outside the range still fails on its format."""
  users = parsing.read_users(synthetic_1m.folder, ML_1M)
  movies = parsing.read_movies(synthetic_1m.folder, ML_1M)
  (shard,) = parsing.plan_ratings_shards(
      os.path.join(synthetic_1m.folder, "ratings.dat"), 10**9)
  data = parsing.read_shard_bytes(shard)
  whole = parsing.parse_ratings(shard, data, ML_1M, users, movies)
  keys = parsing.parse_ratings(shard, data, ML_1M, users, movies, keys_only=True)
  assert keys.batch is None
  np.testing.assert_array_equal(keys.timestamps, whole.timestamps)
  start, end = np.percentile(whole.timestamps, [25, 50]).astype(int)
  inside = parsing.parse_ratings(shard, data, ML_1M, users, movies, time_range=(start, end))
  expected = whole.within(start, end)
  assert 0 < inside.batch.num_rows == expected.batch.num_rows < whole.batch.num_rows
  assert inside.batch.equals(expected.batch)
  assert parsing.parse_ratings(shard, data, ML_1M, users, movies,
                               time_range=(0, int(whole.timestamps.min()))) is None
  # The first line, a rating before the range, made unreadable.
  lines = data.split(b"\n")
  bad = b"\n".join([b"1::2::five::978300760"] + lines[1:])
  with pytest.raises(parsing.MovieLensDataError, match="line 1: rating 'five'"):
    parsing.parse_ratings(shard, bad, ML_1M, users, movies,
                          time_range=(int(whole.timestamps.max()) + 1, 2**62))


def test_100k_malformed_lines(synthetic_100k, tmp_path):
  folder = str(tmp_path / "release")
  shutil.copytree(synthetic_100k.folder, folder)
  path = _corrupt(folder, "u.item", 3, "3|Title (1990)|01-Jan-1990||url|0|1|2" +
                  "|0" * 16)
  with pytest.raises(parsing.MovieLensDataError,
                     match=f"{path}, line 3: genre flags .* must be 0 or 1"):
    parsing.read_release(folder, ML_100K)
  shutil.copy(os.path.join(synthetic_100k.folder, "u.item"), path)
  path = _corrupt(folder, "u.user", 2, "2|40|M|astronaut|55455")
  with pytest.raises(parsing.MovieLensDataError,
                     match=f"{path}, line 2: occupation 'astronaut'"):
    parsing.read_release(folder, ML_100K)


@pytest.mark.parametrize("name", ["ratings.dat", "users.dat", "movies.dat"])
def test_missing_or_empty_file(name, synthetic_1m, tmp_path):
  folder = str(tmp_path / "release")
  shutil.copytree(synthetic_1m.folder, folder)
  path = os.path.join(folder, name)
  open(path, "wb").close()
  with pytest.raises(parsing.MovieLensDataError, match=f"^{path}: file is empty$"):
    parsing.read_release(folder, ML_1M)
  os.remove(path)
  with pytest.raises(parsing.MovieLensDataError, match=f"^{path}: file not found$"):
    parsing.read_release(folder, ML_1M)


def test_temporal_cutoffs_by_hand():
  # User a: 20 ratings at times 0..19 (two share time 18: movies "x" < "y").
  times = list(range(18)) + [18, 18]
  movies = [f"m{t:02d}" for t in range(18)] + ["y", "x"]
  users = ["a"] * 20 + ["b"] * 9  # b: too few ratings for a tenth of them
  times += list(range(9))
  movies += [f"n{t}" for t in range(9)]
  users, movies, times = np.array(users, object), np.array(movies, object), np.array(times)
  cutoffs = parsing.TemporalCutoffs.of(users, movies, times,
                                       {"train": 8, "eval": 1, "test": 1})
  split = cutoffs.assign(users, movies, times)
  named = {(u, m): s for u, m, s in zip(users, movies, split)}
  # a: test = the latest two, (18, "x") and (18, "y"); eval = times 16 and 17.
  assert {k for k, s in named.items() if s == 2} == {("a", "x"), ("a", "y")}
  assert {k for k, s in named.items() if s == 1} == {("a", "m16"), ("a", "m17")}
  assert all(s == 0 for (u, _), s in named.items() if u == "b")
  # The order of the input does not matter.
  shuffled = np.random.default_rng(0).permutation(len(users))
  again = parsing.TemporalCutoffs.of(users[shuffled], movies[shuffled], times[shuffled],
                                     {"train": 8, "eval": 1, "test": 1})
  np.testing.assert_array_equal(again.assign(users, movies, times), split)


@pytest.mark.slow  # a Beam pipeline
def test_temporal_split_puts_each_users_latest_ratings_last(synthetic_1m, tmp_path):
  """MovieLensExampleGen under LocalDagRunner with the temporal split."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfx.orchestration import metadata  # pylint: disable=g-import-not-at-top
  from tfx.orchestration import pipeline as tfx_pipeline  # pylint: disable=g-import-not-at-top
  from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # pylint: disable=g-import-not-at-top

  from components.movielens_example_gen.component import MovieLensExampleGen  # pylint: disable=g-import-not-at-top
  example_gen = MovieLensExampleGen(dataset="1m", data_dir=synthetic_1m.folder,
                                    split="temporal")
  store = str(tmp_path / "metadata.sqlite")
  LocalDagRunner().run(tfx_pipeline.Pipeline(
      pipeline_name="temporal", pipeline_root=str(tmp_path / "root"),
      components=[example_gen], enable_cache=False,
      metadata_connection_config=metadata.sqlite_metadata_connection_config(store),
      beam_pipeline_args=configs.default_beam_args()))
  with metadata.Metadata(metadata.sqlite_metadata_connection_config(store)) as m:
    [examples] = m.store.get_artifacts_by_type("Examples")
  assert examples.custom_properties["split_method"].string_value == "temporal"
  spec = {key: tf.io.FixedLenFeature([], dtype) for key, dtype in (
      (features.USER_ID, tf.string), (features.MOVIE_ID, tf.string),
      (features.TIMESTAMP, tf.int64))}
  times = {}  # split -> user -> [(time, movie)]
  for split in features.SPLIT_NAMES:
    files = tf.io.gfile.glob(f"{examples.uri}/Split-{split}/*.gz")
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(10_000).map(
        lambda x: tf.io.parse_example(x, spec)):
      for user, movie, time in zip(*(batch[k].numpy() for k in spec)):
        times.setdefault(split, {}).setdefault(user, []).append((int(time), movie))
  assert sum(len(v) for s in times.values() for v in s.values()) == synthetic_1m.num_ratings
  for user, train in times["train"].items():
    latest_train = max(train)
    for later in ("eval", "test"):
      assert all(rating > latest_train for rating in times[later].get(user, [])), user
    if times["eval"].get(user) and times["test"].get(user):
      assert max(times["eval"][user]) < min(times["test"][user])
    count = len(train) + len(times["eval"].get(user, [])) + len(times["test"].get(user, []))
    assert len(times["test"].get(user, [])) == count // 10
