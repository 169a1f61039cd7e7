"""MovieLens read from object storage: TensorFlow's in-memory ram:// file system
stands in for a bucket (gs://...), as the run's workers would read one.

ram:// is visible only inside this process, so the executor runs Beam in memory here.
"""
import os
import uuid

import pytest
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components.movielens_example_gen import parsing
from components.movielens_example_gen import sources
from models import features
from testing.examples import ingest


@pytest.fixture
def bucket():
  """A fresh, empty ram:// folder, removed afterwards."""
  root = f"ram://movielens-{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(root)
  yield root
  tf.io.gfile.rmtree(root)


def _copy_release(local_folder: str, uri: str) -> str:
  """Copies a local release folder's files into `uri`; returns `uri`."""
  tf.io.gfile.makedirs(uri)
  for name in os.listdir(local_folder):
    tf.io.gfile.copy(os.path.join(local_folder, name), f"{uri}/{name}")
  return uri


def _rewrite(uri: str, data: bytes) -> None:
  """Replaces a file's content: ram:// appends to a file it opens for writing."""
  tf.io.gfile.remove(uri)
  with tf.io.gfile.GFile(uri, "wb") as f:
    f.write(data)


@pytest.mark.parametrize("layout_name", ["1m", "100k"])
def test_a_release_in_storage_parses_as_its_local_copy(layout_name, request, bucket):
  release = request.getfixturevalue(f"synthetic_{layout_name}")
  layout = parsing.LAYOUTS[layout_name]
  remote = _copy_release(release.folder, f"{bucket}/ml-{layout_name}")

  local_table = parsing.read_release(release.folder, layout, lines_per_shard=700)
  remote_table = parsing.read_release(remote, layout, lines_per_shard=700)
  assert remote_table.num_rows == release.num_ratings
  assert remote_table.equals(local_table)

  local_users = parsing.read_users(release.folder, layout)
  remote_users = parsing.read_users(remote, layout)
  assert remote_users.ids.equals(local_users.ids)
  assert remote_users.columns.keys() == local_users.columns.keys()
  assert all(remote_users.columns[k].equals(v) for k, v in local_users.columns.items())
  local_movies = parsing.read_movies(release.folder, layout)
  remote_movies = parsing.read_movies(remote, layout)
  for name in ("ids", "titles", "genres"):
    assert getattr(remote_movies, name).equals(getattr(local_movies, name)), name

  # Shards are byte ranges (seek + read) of the file in storage, as workers read them.
  local_shards = parsing.plan_ratings_shards(
      os.path.join(release.folder, layout.ratings_file), 700)
  remote_shards = parsing.plan_ratings_shards(f"{remote}/{layout.ratings_file}", 700)
  assert len(remote_shards) == len(local_shards) > 1
  for mine, theirs in zip(remote_shards, local_shards):
    assert mine.path == f"{remote}/{layout.ratings_file}"
    assert (mine.start, mine.end, mine.first_line, mine.num_lines) == (
        theirs.start, theirs.end, theirs.first_line, theirs.num_lines)
    assert parsing.read_shard_bytes(mine) == parsing.read_shard_bytes(theirs)


def test_resolve_finds_the_extracted_files_in_storage(synthetic_100k, bucket):
  direct = _copy_release(synthetic_100k.folder, f"{bucket}/data")
  source = sources.resolve("100k", direct)
  assert (source.kind, source.folder) == ("folder", direct)  # no abspath of a URI
  nested = _copy_release(synthetic_100k.folder, f"{bucket}/downloads/ml-100k")
  source = sources.resolve("100k", f"{bucket}/downloads")
  assert (source.kind, source.folder) == ("folder", nested)
  assert source.description == f"extracted files in {nested}"


def test_missing_and_empty_files_in_storage_are_named(synthetic_1m, bucket):
  remote = _copy_release(synthetic_1m.folder, f"{bucket}/ml-1m")
  _rewrite(f"{remote}/movies.dat", b"")
  with pytest.raises(parsing.MovieLensDataError) as error:
    parsing.read_release(remote, parsing.LAYOUTS["1m"])
  assert str(error.value) == f"{remote}/movies.dat: file is empty"
  tf.io.gfile.remove(f"{remote}/users.dat")
  with pytest.raises(parsing.MovieLensDataError) as error:
    parsing.read_release(remote, parsing.LAYOUTS["1m"])
  assert str(error.value) == f"{remote}/users.dat: file not found"
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources.resolve("1m", remote)
  assert str(error.value) == (
      f"{remote}: MovieLens 1M folder is incomplete: users.dat not found")


def test_a_bad_line_in_storage_names_the_uri_and_line(synthetic_1m, bucket):
  remote = _copy_release(synthetic_1m.folder, f"{bucket}/ml-1m")
  with tf.io.gfile.GFile(f"{remote}/ratings.dat", "rb") as f:
    lines = f.read().split(b"\n")
  lines[2499] = b"1::2::9::978300760"
  _rewrite(f"{remote}/ratings.dat", b"\n".join(lines))
  with pytest.raises(parsing.MovieLensDataError) as error:
    parsing.read_release(remote, parsing.LAYOUTS["1m"], lines_per_shard=1000)
  assert str(error.value).startswith(
      f"{remote}/ratings.dat, line 2500: rating '9' is outside 1 to 5")


def test_folders_in_storage_without_the_release_are_named(bucket):
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources.resolve("1m", f"{bucket}/nowhere")
  assert str(error.value) == f"{bucket}/nowhere: data folder not found"
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources.resolve("1m", bucket)
  assert str(error.value).startswith(
      f"{bucket}: holds neither ml-1m.zip nor the extracted MovieLens 1M files")
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources.resolve("1m", "nosuchfs://bucket/ml-1m")
  assert str(error.value).startswith(
      "nosuchfs://bucket/ml-1m: cannot read (File system scheme 'nosuchfs' not "
      "implemented")
  # The command line's early check leaves storage to the run, as before.
  assert sources.check_available("1m", f"{bucket}/nowhere") is None


@pytest.mark.parametrize("data_dir", ["folder", "zip"])
def test_a_zip_in_storage_is_refused_with_what_to_do(data_dir, bucket, tmp_path):
  zip_uri = f"{bucket}/ml-100k.zip"
  with tf.io.gfile.GFile(zip_uri, "wb") as f:
    f.write(b"PK\x03\x04" + os.urandom(1000))
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources.resolve("100k", bucket if data_dir == "folder" else zip_uri,
                    str(tmp_path / "dl"))
  assert str(error.value) == (
      f"{zip_uri}: a zip in object storage is not extracted (TFDS checks and extracts "
      "archives on local disk only); unzip it and copy its ml-100k/ folder (u.data, "
      f"u.user, u.item) into {bucket}")
  assert not (tmp_path / "dl").exists()  # nothing was copied or extracted


def test_a_local_folder_in_place_of_a_file_still_says_so(synthetic_1m, tmp_path):
  # Local files are read through tf.io.gfile too; its errors read as before.
  folder = tmp_path / "release"
  _copy_release(synthetic_1m.folder, str(folder))
  os.remove(folder / "movies.dat")
  (folder / "movies.dat").mkdir()
  with pytest.raises(parsing.MovieLensDataError) as error:
    parsing.read_movies(str(folder), parsing.LAYOUTS["1m"])
  assert str(error.value) == f"{folder / 'movies.dat'}: cannot read the file (Is a directory)"


def _records(examples: standard_artifacts.Examples):
  """Every output file's examples in order, by (split, file name).

  Parsed: the order of features in the serialized bytes varies between runs.
  """
  records = {}
  for split in features.SPLIT_NAMES:
    split_uri = artifact_utils.get_split_uri([examples], split)
    for path in sorted(tf.io.gfile.glob(f"{split_uri}/*.gz")):
      records[split, os.path.basename(path)] = [
          tf.train.Example.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
  return records


@pytest.mark.slow  # two Beam pipelines
def test_the_executor_writes_the_same_examples_from_storage(synthetic_100k, bucket,
                                                            tmp_path):
  remote = _copy_release(synthetic_100k.folder, f"{bucket}/ml-100k")
  from_disk = ingest(synthetic_100k.folder, str(tmp_path / "from-disk"))
  from_storage = ingest(remote, str(tmp_path / "from-storage"))
  assert from_storage.get_string_custom_property("source") == (
      f"extracted files in {remote}")
  counts = from_storage.get_string_custom_property("split_counts")
  assert counts == from_disk.get_string_custom_property("split_counts")
  records = _records(from_storage)
  assert sum(len(r) for r in records.values()) == synthetic_100k.num_ratings
  assert {split for split, _ in records} == set(features.SPLIT_NAMES)
  assert records == _records(from_disk)
