"""Finding MovieLens: extracted folders, zips checked by TFDS, and no network."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import zipfile

import pytest
from tensorflow_datasets.core.download import checksums

from components.movielens_example_gen import parsing
from components.movielens_example_gen import sources
from tests.conftest import REPO


def _zip_release(release_folder: str, zip_path: str, inner: str) -> None:
  """Zips a release the way GroupLens does: files under `ml-<name>/`."""
  with zipfile.ZipFile(zip_path, "w") as archive:
    for name in sorted(os.listdir(release_folder)):
      archive.write(os.path.join(release_folder, name), f"{inner}/{name}")


def test_extracted_folder_directly_or_in_subfolder(synthetic_100k, tmp_path):
  source = sources.resolve("100k", synthetic_100k.folder)
  assert source.kind == "folder" and source.folder == synthetic_100k.folder
  nested = tmp_path / "downloads" / "ml-100k"
  shutil.copytree(synthetic_100k.folder, nested)
  assert sources.resolve("100k", str(tmp_path / "downloads")).folder == str(nested)


def test_missing_incomplete_or_unrelated_folder(synthetic_1m, tmp_path):
  with pytest.raises(parsing.MovieLensDataError, match="data folder not found"):
    sources.resolve("1m", str(tmp_path / "nowhere"))
  with pytest.raises(parsing.MovieLensDataError,
                     match="holds neither ml-1m.zip nor the extracted"):
    sources.resolve("1m", str(tmp_path))
  partial = tmp_path / "partial"
  shutil.copytree(synthetic_1m.folder, partial)
  os.remove(partial / "users.dat")
  with pytest.raises(parsing.MovieLensDataError, match="incomplete: users.dat not found"):
    sources.resolve("1m", str(partial))


def test_official_zip_is_extracted_through_tfds(synthetic_100k, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  zip_path = manual / "ml-100k.zip"
  _zip_release(synthetic_100k.folder, str(zip_path), "ml-100k")
  # Stand-in for the official archive: TFDS is told its checksum, as it knows the real one.
  url = sources.tfds_config("100k").download_url
  expected = {url: checksums.compute_url_info(zip_path)}
  source = sources.resolve("100k", str(manual), str(tmp_path / "dl"), url_infos=expected)
  assert source.kind == "zip"
  assert source.folder.startswith(str(tmp_path / "dl"))
  table = parsing.read_release(source.folder, parsing.LAYOUTS["100k"])
  assert table.num_rows == synthetic_100k.num_ratings


@pytest.mark.parametrize("content", ["repacked", "corrupt"])
def test_zip_with_wrong_checksum_is_refused(content, synthetic_1m, tmp_path):
  zip_path = tmp_path / "ml-1m.zip"
  if content == "repacked":  # a valid zip, but not the official bytes
    _zip_release(synthetic_1m.folder, str(zip_path), "ml-1m")
  else:
    zip_path.write_bytes(b"PK\x03\x04" + os.urandom(5000))
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources.resolve("1m", str(tmp_path), str(tmp_path / "dl"))
  assert str(error.value).startswith(f"{zip_path}: not the official MovieLens 1M archive")
  assert not list((tmp_path / "dl").rglob("ratings.dat"))  # nothing was extracted


def test_unreachable_download_host_fails_fast_with_advice():
  started = time.monotonic()
  with pytest.raises(parsing.MovieLensDataError) as error:
    sources._check_reachable("files.movielens.invalid", "1m")  # pylint: disable=protected-access
  assert time.monotonic() - started < 10
  assert "make run DATA_DIR=" in str(error.value)
  assert "--data-dir" in str(error.value)


def _grouplens_reachable() -> bool:
  try:
    socket.create_connection(("files.grouplens.org", 443), timeout=3).close()
    return True
  except OSError:
    return False


@pytest.mark.skipif(_grouplens_reachable(), reason=(
    "this machine can reach files.grouplens.org, so the offline failure of the "
    "default download cannot be observed here"))
def test_default_download_offline_fails_within_seconds(tmp_path):
  started = time.monotonic()
  with pytest.raises(parsing.MovieLensDataError, match="make run DATA_DIR="):
    sources.resolve("1m", None, str(tmp_path / "dl"))
  assert time.monotonic() - started < 10


def test_the_download_host_is_the_one_tfds_downloads_from():
  for dataset in ("100k", "1m"):
    url = sources.tfds_config(dataset).download_url
    assert urllib.parse.urlparse(url).hostname == sources.DOWNLOAD_HOST


# `recsys run` in a fresh process; prints which heavy modules it had loaded when it ended.
_RUN_AND_REPORT_IMPORTS = """
import sys
from components.movielens_example_gen import sources
from tests.conftest import REPO
from pipeline import cli
sources.DOWNLOAD_HOST = sys.argv.pop(1)
code = cli.main(sys.argv[1:])
print("loaded:", [m for m in ("tensorflow", "tfx", "apache_beam") if m in sys.modules])
sys.exit(code)
"""


@pytest.mark.parametrize("data", ["missing folder", "offline download"])
def test_missing_data_is_refused_before_tensorflow_loads(data, tmp_path):
  # An unreachable host stands for a machine without network (.invalid never resolves).
  args = (["--data-dir", str(tmp_path / "missing")] if data == "missing folder" else [])
  result = subprocess.run(
      [sys.executable, "-c", _RUN_AND_REPORT_IMPORTS, "files.movielens.invalid", "run",
       "--dataset", "100k", "--output-dir", str(tmp_path / "run"), *args],
      capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
      timeout=120)
  assert result.returncode == 1, result.stderr
  assert result.stdout.strip() == "loaded: []"
  [error] = result.stderr.strip().splitlines()
  if data == "missing folder":
    assert error == f"error: {tmp_path / 'missing'}: data folder not found"
  else:
    assert error.startswith("error: Cannot download MovieLens 100K: files.movielens.invalid "
                            "is unreachable") and "--data-dir" in error
  assert not (tmp_path / "run").exists()  # nothing was created
