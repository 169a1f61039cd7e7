"""Finds a MovieLens release: downloaded by TFDS, an official zip, or a folder.

Downloads and zips go through tensorflow-datasets' DownloadManager, so the archive
is the one TFDS's `movielens` builder uses and its registered checksum is checked.
A folder may also be a URI (gs://bucket/ml-1m, any tf.io.gfile file system), which
the run's workers read directly.
"""
import dataclasses
import os
import socket
import urllib.parse
from typing import Dict, Optional, Tuple

from components.movielens_example_gen import parsing
from models import features


@dataclasses.dataclass(frozen=True)
class Source:
  """An extracted MovieLens folder and how it was obtained, for the artifact."""
  folder: str
  kind: str  # "download", "zip" or "folder"
  description: str


def tfds_config(dataset: str):
  """TFDS's builder config for `dataset` ("1m", "100k", "20m" or "25m")."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = features.DATASETS[dataset].split("/", 1)[1]
  return tfds.builder_cls("movielens").builder_configs[name]


def default_download_dir() -> str:
  data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  return os.path.join(data_dir, "downloads")


# Where TFDS downloads MovieLens from (tests check it against TFDS's own URLs).
DOWNLOAD_HOST = "files.grouplens.org"


def _check_reachable(host: str, dataset: str, timeout_s: float = 5.0) -> None:
  """Fails within seconds, with what to do instead, when the download host is unreachable."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
    return  # only the proxy can tell
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
  except OSError as e:
    raise parsing.MovieLensDataError(
        f"Cannot download MovieLens {dataset.upper()}: {host} is unreachable ({e}). "
        f"Point the run at local files instead: a folder holding the official "
        f"ml-{dataset}.zip or its extracted files, e.g. "
        f"`make run DATA_DIR=/path/to/folder` or "
        f"`recsys run --dataset {dataset} --data-dir /path/to/folder`.") from None


def _tfds_download(dataset: str, download_dir: str, manual_dir: Optional[str],
                   url_infos: Optional[Dict[str, object]]) -> str:
  """Downloads (or takes from `manual_dir`) the release zip through TFDS and extracts it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top
  url = tfds_config(dataset).download_url
  if manual_dir is None:
    _check_reachable(urllib.parse.urlparse(url).hostname, dataset)
  manager = tfds.download.DownloadManager(
      download_dir=download_dir, manual_dir=manual_dir, url_infos=url_infos,
      force_checksums_validation=True)
  try:
    extracted = manager.download_and_extract(url)
  except download_manager.NonMatchingChecksumError as e:
    zip_path = os.path.join(manual_dir or download_dir, f"ml-{dataset}.zip")
    raise parsing.MovieLensDataError(
        f"{zip_path}: not the official MovieLens {dataset.upper()} archive (its "
        f"size or SHA-256 checksum differs from the one TFDS registers; the file "
        f"may be truncated or corrupt). Download it again, or point --data-dir at "
        f"the extracted folder.\n{e}") from None
  except Exception as e:  # zipfile and network errors arrive as many types
    raise parsing.MovieLensDataError(
        f"Could not obtain MovieLens {dataset.upper()} through TFDS: {e}") from None
  return os.path.join(os.fspath(extracted), f"ml-{dataset}")


def resolve(dataset: str, data_dir: Optional[str], download_dir: Optional[str] = None,
            url_infos: Optional[Dict[str, object]] = None) -> Source:
  """Returns the extracted folder of `dataset`.

  Args:
    dataset: a key of `features.DATASETS` ("1m", "100k", "20m", "25m").
    data_dir: None to download through TFDS; else a folder holding the official
      `ml-<dataset>.zip` (checked against TFDS's checksum), or the extracted files
      (directly or in an `ml-<dataset>/` subfolder). A URI (gs://...) must hold
      the extracted files.
    download_dir: where TFDS keeps downloads and extractions.
    url_infos: expected checksums by URL, overriding TFDS's registered ones (tests).
  """
  _check_dataset(dataset)
  download_dir = download_dir or default_download_dir()
  if data_dir is None:
    folder = _tfds_download(dataset, download_dir, None, url_infos)
    return Source(folder, "download", f"downloaded through TFDS into {download_dir}")
  kind, path = _find_release(dataset, data_dir)
  if kind == "folder":
    return Source(path, "folder", f"extracted files in {path}")
  if parsing.is_uri(path):
    # Not copied here to be extracted: an extraction on this machine's disk would be
    # out of reach of a distributed run's workers.
    raise parsing.MovieLensDataError(
        f"{path}: a zip in object storage is not extracted (TFDS checks and extracts "
        f"archives on local disk only); unzip it and copy its ml-{dataset}/ folder "
        f"({', '.join(parsing.LAYOUTS[dataset].files)}) into {os.path.dirname(path)}")
  folder = _tfds_download(dataset, download_dir, os.path.dirname(path), url_infos)
  return Source(folder, "zip", f"{path}, checksum verified by TFDS")


def check_available(dataset: str, data_dir: Optional[str]) -> None:
  """MovieLensDataError now, rather than minutes into a run, when `resolve` would fail
  for want of data: an unreachable download host, or a folder without the release.

  Needs neither TensorFlow nor TFX, so the command line calls it before importing them.
  """
  _check_dataset(dataset)
  if data_dir is None:
    _check_reachable(DOWNLOAD_HOST, dataset)
  elif not parsing.is_uri(data_dir):  # a bucket is read by the run's workers, not here
    _find_release(dataset, data_dir)


def _check_dataset(dataset: str) -> None:
  if dataset not in features.DATASETS:
    raise parsing.MovieLensDataError(
        f"Unknown dataset {dataset!r}: choose one of {sorted(features.DATASETS)}")


def _find_release(dataset: str, data_dir: str) -> Tuple[str, str]:
  """("folder", the extracted folder) or ("zip", the official zip) under `data_dir`."""
  layout = parsing.LAYOUTS[dataset]
  if not parsing.is_uri(data_dir):
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if parsing.is_file(data_dir) and data_dir.endswith(".zip"):
    data_dir = os.path.dirname(data_dir)
  if not parsing.is_dir(data_dir):
    raise parsing.MovieLensDataError(f"{data_dir}: data folder not found")
  folder = parsing.find_folder(data_dir, layout)
  if folder:
    return "folder", folder
  zip_path = os.path.join(data_dir, f"ml-{dataset}.zip")
  if parsing.is_file(zip_path):
    return "zip", zip_path
  present = [f for f in layout.files if parsing.is_file(os.path.join(data_dir, f))]
  if present:
    missing = [f for f in layout.files if f not in present]
    raise parsing.MovieLensDataError(
        f"{data_dir}: MovieLens {dataset.upper()} folder is incomplete: "
        f"{', '.join(missing)} not found")
  raise parsing.MovieLensDataError(
      f"{data_dir}: holds neither ml-{dataset}.zip nor the extracted MovieLens "
      f"{dataset.upper()} files ({', '.join(layout.files)})")
