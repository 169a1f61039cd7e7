"""Reads MovieLens 1M (`*.dat`), 100K (`u.*`), 20M and 25M (`*.csv`) files into
Arrow record batches.

Files are read through tf.io.gfile, so a release may lie in a bucket (gs://...).

The features are those of tensorflow-datasets' MovieLens builder, computed the
way its parsers compute them (`tensorflow_datasets/structured/movielens_parsing.py`:
ISO-8859-1 text, "Children's" read as "Children", 1M occupation codes and 100K
occupation names mapped to one label set, 100K ages put in 1M's buckets; 20M's and
25M's movies.csv read as CSV, quoted titles and all);
`tests/test_parsing.py` checks row-for-row equality with those parsers on the real
files. We do not call TFDS's ratings parsers themselves: they read the whole file in
one generator (no sharding across Beam workers), keep ratings as unchecked strings,
and fail on a bad line with a bare KeyError or ValueError. This module validates
every field, names the file and line of the first bad one, and parses ratings a
shard at a time with NumPy and Arrow.
"""
import csv
import dataclasses
import io
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from common import errors
from models import features


class MovieLensDataError(errors.RecsysError, ValueError):
  """A MovieLens input is missing or malformed. The message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one MovieLens release keeps its ratings, users and movies."""
  name: str
  ratings_file: str
  users_file: Optional[str]  # None: no users table (20M, 25M)
  movies_file: str
  ratings_separator: str
  users_separator: str
  movies_separator: str
  ratings_header: Optional[str] = None  # the ratings file's first line, if it has one

  @property
  def files(self) -> Tuple[str, ...]:
    return tuple(f for f in (self.ratings_file, self.users_file, self.movies_file) if f)

  @property
  def lowest_rating(self) -> float:
    return features.LOWEST_RATING[self.name]


_CSV_RATINGS_HEADER = "userId,movieId,rating,timestamp"
_CSV_MOVIES_HEADER = ["movieId", "title", "genres"]

LAYOUTS = {
    "1m": Layout("1m", "ratings.dat", "users.dat", "movies.dat", "::", "::", "::"),
    "100k": Layout("100k", "u.data", "u.user", "u.item", "\t", "|", "|"),
    "20m": Layout("20m", "ratings.csv", None, "movies.csv", ",", "", ",",
                  _CSV_RATINGS_HEADER),
    "25m": Layout("25m", "ratings.csv", None, "movies.csv", ",", "", ",",
                  _CSV_RATINGS_HEADER),
}

# MovieLens 1M's occupation codes (its README), as TFDS lists them.
_OCCUPATIONS_1M = (
    "other/not specified", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care",
    "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
_STUDENT_OCCUPATIONS_1M = ("K-12 student", "college/grad student")

# MovieLens 100K's occupation names mapped to TFDS's shared labels.
_OCCUPATIONS_100K = {
    "administrator": "clerical/admin", "artist": "artist",
    "doctor": "doctor/health care", "educator": "academic/educator",
    "engineer": "technician/engineer", "entertainment": "entertainment",
    "executive": "executive/managerial", "healthcare": "doctor/health care",
    "homemaker": "homemaker", "lawyer": "lawyer", "librarian": "librarian",
    "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer",
    "retired": "retired", "salesman": "sales/marketing",
    "scientist": "scientist", "student": "student",
    "technician": "technician/engineer", "writer": "writer",
}

# MovieLens 100K's genre flag columns of u.item, in order.
_GENRE_FLAGS_100K = (
    "Unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_U_ITEM_FIELDS = 5 + len(_GENRE_FLAGS_100K)


# Only ASCII whitespace is trimmed from a line's ends: ISO-8859-1 text can end in
# characters Python counts as whitespace (0x85, 0xA0), and they are data.
_BLANK = " \t\r\n\f\v"
_UTF8_BOM = "\ufeff"
# Numbers as MovieLens writes them: ASCII digits. Python's int() and float() also
# take "3_0", " 3" and other scripts' digits ("\u0663"), which are not data here.
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?")
_SHOWN_CHARS = 60  # of a bad value in an error message (a field may be megabytes)


def _shown(value: str) -> str:
  """A value for an error message: quoted, and cut if long."""
  if len(value) <= _SHOWN_CHARS:
    return repr(value)
  return f"{value[:_SHOWN_CHARS]!r}... ({len(value):,} characters)"


def _fail(path: str, line: Optional[int], message: str) -> MovieLensDataError:
  where = f"{path}, line {line}" if line is not None else path
  return MovieLensDataError(f"{where}: {message}")


def no_rows_error(path: str, what: str) -> MovieLensDataError:
  """The error for a file that holds only blank lines."""
  return _fail(path, None, f"no {what} found (the file holds only blank lines)")


def is_uri(path: str) -> bool:
  """Whether `path` names object storage (gs://bucket/...) rather than a local path."""
  return "://" in path


def _tensorflow():
  """TensorFlow, imported on first use: the command line checks a local data folder
  (`sources.check_available`) before it pays for importing TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _reason(error, path: str) -> str:
  """A file system error's message, without the path TensorFlow's local file system
  puts first (our messages name the path themselves)."""
  return error.message.removeprefix(f"{path}; ") or type(error).__name__


def is_file(path: str) -> bool:
  """Whether `path` is a file. A URI is asked through tf.io.gfile; a local path
  through os.path, which `sources.check_available` can call without TensorFlow."""
  if not is_uri(path):
    return os.path.isfile(path)
  tf = _tensorflow()
  try:
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
  except tf.errors.OpError as e:  # e.g. a scheme no file system is registered for
    raise _fail(path, None, f"cannot read ({_reason(e, path)})") from None


def is_dir(path: str) -> bool:
  """Whether `path` is a folder; like `is_file`, without TensorFlow for a local path."""
  if not is_uri(path):
    return os.path.isdir(path)
  tf = _tensorflow()
  try:
    return tf.io.gfile.isdir(path)
  except tf.errors.OpError as e:
    raise _fail(path, None, f"cannot read ({_reason(e, path)})") from None


def read_bytes(path: str) -> bytes:
  """Returns a file's bytes; a missing, unreadable or empty file is a MovieLensDataError.

  Local files too are read through tf.io.gfile, so that the tests of local files
  cover the one read path a bucket's files take on the run's workers.
  """
  tf = _tensorflow()
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except tf.errors.NotFoundError:
    raise _fail(path, None, "file not found") from None
  except tf.errors.OpError as e:
    raise _fail(path, None, f"cannot read the file ({_reason(e, path)})") from None
  if not data.strip():
    raise _fail(path, None, "file is empty")
  return data


def decode_text(data: bytes) -> str:
  """Decodes MovieLens text.

  The releases are ISO-8859-1 (ml-1m's movies.dat has 'é' as the byte 0xE9), which
  is what TFDS decodes. A copy someone re-saved as UTF-8 is valid UTF-8 and is
  decoded as such (a byte-order mark at the start is dropped), so "Amélie" is read
  right from either. A file that is neither (lines of both, e.g. two files pasted
  together) is decoded line by line: UTF-8 where a line is valid UTF-8, else
  ISO-8859-1. An ISO-8859-1 line is valid UTF-8 only if it has sequences like
  "Ã©", which no title has.
  """
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    text = "\n".join(_decode_line(line) for line in data.split(b"\n"))
  return text[1:] if text.startswith(_UTF8_BOM) else text


def _decode_line(line: bytes) -> str:
  try:
    return line.decode("utf-8")
  except UnicodeDecodeError:
    return line.decode("iso-8859-1")


def _nul_error(path: str, number: int) -> MovieLensDataError:
  return _fail(path, number, "contains a NUL byte; the file is corrupt")


def _table_lines(path: str, separator: str, num_fields: int
                 ) -> List[Tuple[int, List[str]]]:
  """Splits a small table file into (line number, fields), checking each line."""
  text = decode_text(read_bytes(path))
  rows = []
  for number, line in enumerate(text.split("\n"), start=1):
    line = line.strip(_BLANK)
    if not line:
      continue
    if "\x00" in line:
      raise _nul_error(path, number)
    fields = line.split(separator)
    if len(fields) != num_fields:
      raise _fail(path, number, f"expected {num_fields} fields separated by "
                  f"{separator!r}, found {len(fields)}: {line[:80]!r}")
    rows.append((number, fields))
  if not rows:
    raise no_rows_error(path, "rows")
  return rows


def _check_unique_id(path: str, number: int, item_id: str, seen: Dict[str, int],
                     what: str) -> None:
  if not item_id:
    raise _fail(path, number, f"empty {what} id")
  if item_id in seen:
    raise _fail(path, number, f"{what} id {_shown(item_id)} already defined on line "
                f"{seen[item_id]}")
  seen[item_id] = number


def _parse_int(path: str, number: int, value: str, field: str) -> int:
  if not _WHOLE_NUMBER.fullmatch(value):
    raise _fail(path, number, f"{field} {_shown(value)} is not a whole number")
  if len(value) > 18:  # int() refuses 4,300 digits and more
    raise _fail(path, number, f"{field} {_shown(value)} is far too large")
  return int(value)


def _gender(path: str, number: int, value: str) -> int:
  if value not in ("M", "F"):
    raise _fail(path, number, f"gender {_shown(value)} is neither 'M' nor 'F'")
  return int(value == "M")


@dataclasses.dataclass
class MovieTable:
  """Movie id -> title and genres, as Arrow arrays indexed by row."""
  ids: pa.Array
  titles: pa.Array
  genres: pa.ListArray
  index: pd.Index

  @classmethod
  def from_rows(cls, ids, titles, genres) -> "MovieTable":
    return cls(pa.array(ids, pa.string()), pa.array(titles, pa.string()),
               pa.array(genres, pa.list_(pa.string())), pd.Index(ids))


@dataclasses.dataclass
class UserTable:
  """User id -> demographic features, as Arrow arrays indexed by row."""
  ids: pa.Array
  columns: Dict[str, pa.Array]
  index: pd.Index


def _csv_movie_lines(path: str) -> List[Tuple[int, List[str]]]:
  """20M's and 25M's movies.csv as (line number, [id, title, genres]), header checked.

  Titles with a comma are quoted ("American President, The (1995)"), so the file
  is read as CSV, not split. A row's number is the line it ends on.
  """
  text = decode_text(read_bytes(path))
  if "\x00" in text:
    raise _nul_error(path, text.count("\n", 0, text.index("\x00")) + 1)
  reader = csv.reader(io.StringIO(text, newline=""), strict=True)
  rows, header_seen = [], False
  try:
    for fields in reader:
      if not "".join(fields).strip(_BLANK):
        continue
      if not header_seen:
        if fields != _CSV_MOVIES_HEADER:
          raise _fail(path, reader.line_num, "expected the header "
                      f"{','.join(_CSV_MOVIES_HEADER)!r}, found {_shown(','.join(fields))}")
        header_seen = True
        continue
      if len(fields) != len(_CSV_MOVIES_HEADER):
        raise _fail(path, reader.line_num, f"expected 3 comma-separated fields (movieId, "
                    f"title, genres; a title with a comma in quotes), found {len(fields)}: "
                    f"{_shown(','.join(fields))}")
      rows.append((reader.line_num, fields))
  except csv.Error as e:
    raise _fail(path, reader.line_num, f"not valid CSV ({e})") from None
  if not rows:
    raise _fail(path, None, "no movies found after the header line")
  return rows


def _genre_names(path: str, number: int, genre_text: str) -> List[str]:
  """'Action|Comedy' -> ['Action', 'Comedy'], as TFDS names them."""
  names = genre_text.split("|")
  if not all(names):
    raise _fail(path, number, f"genres {_shown(genre_text)}: a genre name is "
                "empty (expected names separated by '|', e.g. 'Action|Comedy')")
  return ["Children" if g == "Children's" else g for g in names]


def read_movies(folder: str, layout: Layout) -> MovieTable:
  path = os.path.join(folder, layout.movies_file)
  ids, titles, genres, seen = [], [], [], {}
  if layout.movies_file.endswith(".csv"):
    for number, (movie_id, title, genre_text) in _csv_movie_lines(path):
      _check_unique_id(path, number, movie_id, seen, "movie")
      ids.append(movie_id)
      titles.append(title)
      genres.append(_genre_names(path, number, genre_text))
  elif layout.name == "1m":
    for number, (movie_id, title, genre_text) in _table_lines(path, "::", 3):
      _check_unique_id(path, number, movie_id, seen, "movie")
      ids.append(movie_id)
      titles.append(title)
      genres.append(_genre_names(path, number, genre_text))
  else:
    for number, fields in _table_lines(path, "|", _U_ITEM_FIELDS):
      _check_unique_id(path, number, fields[0], seen, "movie")
      flags = fields[5:]
      if any(flag not in ("0", "1") for flag in flags):
        raise _fail(path, number, "genre flags (fields 6 to 24) must be 0 or 1, "
                    f"found {_shown('|'.join(flags))}")
      ids.append(fields[0])
      titles.append(fields[1])
      genres.append([g for g, flag in zip(_GENRE_FLAGS_100K, flags) if flag == "1"])
  return MovieTable.from_rows(ids, titles, genres)


def _age_bucket(age: int) -> int:
  bucket = features.AGE_BUCKETS[0]
  for threshold in features.AGE_BUCKETS[1:]:
    if age < threshold:
      break
    bucket = threshold
  return bucket


def read_users(folder: str, layout: Layout) -> Optional[UserTable]:
  """The users table; None for a release without one (20M, 25M), whose users are
  known by the ids in the ratings alone."""
  if layout.users_file is None:
    return None
  path = os.path.join(folder, layout.users_file)
  ids, seen = [], {}
  cols: Dict[str, list] = {
      features.USER_GENDER: [], features.AGE_BUCKET: [],
      features.OCCUPATION_LABEL: [], features.OCCUPATION_TEXT: [],
      features.ZIP_CODE: []}
  if layout.name == "100k":
    cols[features.RAW_USER_AGE] = []
  for number, fields in _table_lines(path, layout.users_separator, 5):
    if layout.name == "1m":
      user_id, gender, age_text, occupation_code, zip_code = fields
      age_bucket = _parse_int(path, number, age_text, "age")
      if age_bucket not in features.AGE_BUCKETS:
        raise _fail(path, number, f"age {_shown(age_text)} is not one of MovieLens 1M's "
                    f"age groups {features.AGE_BUCKETS}")
      code = _parse_int(path, number, occupation_code, "occupation")
      if not 0 <= code < len(_OCCUPATIONS_1M):
        raise _fail(path, number, f"occupation code {code} is not between 0 and "
                    f"{len(_OCCUPATIONS_1M) - 1}")
      occupation_text = _OCCUPATIONS_1M[code]
      occupation_label = ("student" if occupation_text in _STUDENT_OCCUPATIONS_1M
                          else occupation_text)
    else:
      user_id, age_text, gender, occupation_text, zip_code = fields
      raw_age = _parse_int(path, number, age_text, "age")
      if not 0 < raw_age < 150:
        raise _fail(path, number, f"age {raw_age} is not a plausible age")
      age_bucket = _age_bucket(raw_age)
      if occupation_text not in _OCCUPATIONS_100K:
        raise _fail(path, number, f"occupation {_shown(occupation_text)} is not one of "
                    "MovieLens 100K's (u.occupation)")
      occupation_label = _OCCUPATIONS_100K[occupation_text]
      cols[features.RAW_USER_AGE].append(float(raw_age))
    _check_unique_id(path, number, user_id, seen, "user")
    ids.append(user_id)
    cols[features.USER_GENDER].append(_gender(path, number, gender))
    cols[features.AGE_BUCKET].append(age_bucket)
    cols[features.OCCUPATION_LABEL].append(occupation_label)
    cols[features.OCCUPATION_TEXT].append(occupation_text)
    cols[features.ZIP_CODE].append(zip_code)
  types = {features.USER_GENDER: pa.int64(), features.AGE_BUCKET: pa.int64(),
           features.RAW_USER_AGE: pa.float32()}
  columns = {name: pa.array(values, types.get(name, pa.string()))
             for name, values in cols.items()}
  return UserTable(pa.array(ids, pa.string()), columns, pd.Index(ids))


@dataclasses.dataclass(frozen=True)
class RatingsShard:
  """A run of whole lines of the ratings file: bytes [start, end), first line number."""
  path: str
  start: int
  end: int
  first_line: int
  num_lines: int


def plan_ratings_shards(path: str, lines_per_shard: int,
                        header: Optional[str] = None) -> List[RatingsShard]:
  """Cuts the ratings file into shards of whole lines, for parallel parsing.

  With `header`, the file's first line must be it, and the shards start after it.
  """
  data = read_bytes(path)
  newline_ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
  if not len(newline_ends) or newline_ends[-1] != len(data):
    newline_ends = np.append(newline_ends, len(data))  # no newline at the end
  skipped, body_start = 0, 0
  if header is not None:
    body_start = int(newline_ends[0])
    first_line = decode_text(data[:body_start]).strip(_BLANK)
    if first_line != header:
      raise _fail(path, 1, f"expected the header {header!r}, found {_shown(first_line)}")
    skipped, newline_ends = 1, newline_ends[1:]
    if not len(newline_ends):
      raise _fail(path, None, "no ratings found after the header line")
  shards = []
  for first in range(0, len(newline_ends), lines_per_shard):
    last = min(first + lines_per_shard, len(newline_ends))
    start = int(newline_ends[first - 1]) if first else body_start
    shards.append(RatingsShard(path, start, int(newline_ends[last - 1]),
                               skipped + first + 1, last - first))
  return shards


def read_shard_bytes(shard: RatingsShard) -> bytes:
  with _tensorflow().io.gfile.GFile(shard.path, "rb") as f:
    f.seek(shard.start)
    return f.read(shard.end - shard.start)


def _numbers(path: str, line_numbers: np.ndarray, values: Sequence[str],
             dtype, field: str) -> np.ndarray:
  """Converts a column of strings to numbers; on failure names the first bad line.

  Values must be ASCII digits (with a sign, and for floats a decimal point), as
  MovieLens writes them. Floats may also be "nan" or "inf": the caller's range
  check names those.
  """
  whole = dtype == np.int64
  kind = "whole number" if whole else "number"
  try:
    numbers = np.array(values, dtype=dtype)
    if not set("".join(values)) - set("-0123456789" if whole else "-.0123456789"):
      return numbers  # converted, and only digits, signs and points: as written
  except (ValueError, OverflowError):
    numbers = None
  for number, value in zip(line_numbers, values):
    try:
      converted = np.array([value], dtype=dtype)[0]
    except (ValueError, OverflowError):
      converted = None
    as_written = (_WHOLE_NUMBER if whole else _NUMBER).fullmatch(value)
    if converted is None or not (as_written or (not whole and not np.isfinite(converted))):
      raise _fail(path, int(number), f"{field} {_shown(value)} is not a {kind}")
  return numbers


def _lookup(path: str, line_numbers: np.ndarray, ids: Sequence[str],
            index: pd.Index, what: str, table_file: str) -> np.ndarray:
  positions = index.get_indexer(ids)
  unknown = np.flatnonzero(positions < 0)
  if len(unknown):
    i = unknown[0]
    raise _fail(path, int(line_numbers[i]), f"{what} id {_shown(ids[i])} is not in "
                f"{table_file} ({len(unknown)} rating(s) of this shard have "
                f"unknown {what}s)")
  return positions


def _check_whole_numbers(path: str, line_numbers: np.ndarray, values: np.ndarray,
                         field: str) -> None:
  """Ids that no table lists (20M's and 25M's users) must be as MovieLens writes them."""
  valid = pc.match_substring_regex(pa.array(values, pa.string()), "^[0-9]+$")
  bad = np.flatnonzero(~valid.to_numpy(zero_copy_only=False))
  if len(bad):
    raise _fail(path, int(line_numbers[bad[0]]),
                f"{field} {_shown(values[bad[0]])} is not a whole number")


def _as_lists(values: pa.Array) -> pa.ListArray:
  """Wraps a flat array as one-value lists, the form tf.Example encoding takes."""
  if pa.types.is_string(values.type):
    values = values.cast(pa.binary())  # the encoder takes bytes, not str
  offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32))
  return pa.ListArray.from_arrays(offsets, values)


def _in_time_range(timestamps: np.ndarray, time_range: Tuple[int, int]) -> np.ndarray:
  """start <= timestamp < end, the one meaning of a span's or `until`'s time range."""
  return (timestamps >= time_range[0]) & (timestamps < time_range[1])


@dataclasses.dataclass
class ParsedRatings:
  """A shard's examples as an Arrow batch, plus the ids and times splits are keyed on."""
  batch: Optional[pa.RecordBatch]  # None when only the keys are kept
  user_ids: np.ndarray
  movie_ids: np.ndarray
  timestamps: np.ndarray

  def within(self, start: int, end: int) -> Optional["ParsedRatings"]:
    """The ratings with start <= timestamp < end, or None if there are none."""
    keep = _in_time_range(self.timestamps, (start, end))
    if not keep.any():
      return None
    batch = None if self.batch is None else self.batch.filter(pa.array(keep))
    return ParsedRatings(batch, self.user_ids[keep], self.movie_ids[keep],
                         self.timestamps[keep])


def _split_lines(path: str, first_line: int, text: str, separator: str
                 ) -> Tuple[np.ndarray, List[np.ndarray]]:
  """The non-blank lines' numbers and their 4 fields (as object arrays of str).

  Arrow splits every line at once in C++; a Python loop over lines was most of
  the cost of a 1M-line pass. A line is trimmed of the blanks str.strip() takes
  and split as str.split(separator) splits it.
  """
  lines = pa.array(text.split("\n"), pa.string())
  trimmed = pc.utf8_trim(lines, characters=_BLANK)
  nonblank = pc.greater(pc.binary_length(trimmed), 0)
  line_numbers = first_line + np.flatnonzero(nonblank.to_numpy(zero_copy_only=False))
  trimmed = trimmed.filter(nonblank)
  fields = pc.split_pattern(trimmed, pattern=separator)
  lengths = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
  bad = np.flatnonzero(lengths != 4)
  if len(bad):
    i = bad[0]
    raise _fail(path, int(line_numbers[i]), "expected 4 fields (user id, movie "
                f"id, rating, timestamp) separated by {separator!r}, "
                f"found {lengths[i]}: {trimmed[int(i)].as_py()[:80]!r}")
  table = pc.list_flatten(fields).to_numpy(zero_copy_only=False).reshape(-1, 4)
  return line_numbers, [np.ascontiguousarray(table[:, column]) for column in range(4)]


def parse_ratings(shard: RatingsShard, data: bytes, layout: Layout,
                  users: Optional[UserTable], movies: MovieTable, keys_only: bool = False,
                  time_range: Optional[Tuple[int, int]] = None
                  ) -> Optional[ParsedRatings]:
  """Parses one shard of ratings and joins it with the user and movie tables.

  With `keys_only`, the ids and times alone (no Arrow batch). With `time_range`
  (start, end), only the ratings with start <= timestamp < end are kept; every
  line is still checked up to its timestamp. Returns None for a shard of blank
  lines only, or with no rating in `time_range`.
  """
  path = shard.path
  text = decode_text(data)
  if "\x00" in text:
    raise _nul_error(path, shard.first_line + text.count("\n", 0, text.index("\x00")))
  line_numbers, columns = _split_lines(path, shard.first_line, text,
                                       layout.ratings_separator)
  if not len(line_numbers):
    return None
  user_ids, movie_ids, rating_text, timestamp_text = columns
  ratings = _numbers(path, line_numbers, rating_text, np.float64, "rating")
  lowest = layout.lowest_rating
  out_of_range = np.flatnonzero(~((ratings >= lowest) & (ratings <= features.HIGHEST_RATING)))
  if len(out_of_range):
    i = out_of_range[0]
    raise _fail(path, int(line_numbers[i]), f"rating {_shown(rating_text[i])} is outside "
                f"{lowest:g} to {features.HIGHEST_RATING:g}")
  timestamps = _numbers(path, line_numbers, timestamp_text, np.int64, "timestamp")
  negative = np.flatnonzero(timestamps < 0)
  if len(negative):
    raise _fail(path, int(line_numbers[negative[0]]), "timestamp "
                f"{_shown(timestamp_text[negative[0]])} is negative")
  # A timestamp cut short (a file cut mid-line) reads as a time in the 1970s.
  too_early = np.flatnonzero(timestamps < features.EARLIEST_RATING_TIME)
  if len(too_early):
    i = too_early[0]
    day = np.datetime64(int(timestamps[i]), "s").astype("datetime64[D]")
    earliest = np.datetime64(features.EARLIEST_RATING_TIME, "s").astype("datetime64[D]")
    raise _fail(path, int(line_numbers[i]), f"timestamp {_shown(timestamp_text[i])} "
                f"({day}) is before {earliest}, older than any MovieLens rating: is "
                "the line cut short?")
  if time_range is not None:
    keep = _in_time_range(timestamps, time_range)
    if not keep.any():
      return None
    line_numbers, user_ids, movie_ids, ratings, timestamps = (
        values[keep] for values in (line_numbers, user_ids, movie_ids, ratings, timestamps))
  if users is None:
    _check_whole_numbers(path, line_numbers, user_ids, "user id")
  else:
    user_rows = pa.array(_lookup(path, line_numbers, user_ids, users.index, "user",
                                 layout.users_file))
  movie_rows = pa.array(_lookup(path, line_numbers, movie_ids, movies.index,
                                "movie", layout.movies_file))
  if keys_only:
    return ParsedRatings(None, user_ids, movie_ids, timestamps)

  columns = {
      features.USER_ID: (pa.array(user_ids, pa.string()) if users is None
                         else users.ids.take(user_rows)),
      features.MOVIE_ID: movies.ids.take(movie_rows),
      features.MOVIE_TITLE: movies.titles.take(movie_rows),
  }
  for name, values in (users.columns.items() if users is not None else ()):
    columns[name] = values.take(user_rows)
  columns[features.TIMESTAMP] = pa.array(timestamps)
  columns[features.USER_RATING] = pa.array(ratings.astype(np.float32))
  columns[features.LABEL] = pa.array(
      (ratings >= features.LIKE_MIN_RATING).astype(np.int64))
  arrays = {name: _as_lists(values) for name, values in columns.items()}
  arrays[features.MOVIE_GENRES] = movies.genres.take(movie_rows).cast(
      pa.list_(pa.binary()))
  batch = pa.RecordBatch.from_arrays(list(arrays.values()), list(arrays.keys()))
  return ParsedRatings(batch, user_ids, movie_ids, timestamps)


def read_rating_keys(shards: Sequence[RatingsShard], layout: Layout,
                     users: Optional[UserTable],
                     movies: MovieTable) -> ParsedRatings:
  """Every rating's user, movie and time, from one pass over the ratings in this
  process: the temporal split and the spans are cut from them before Beam runs.

  The same parser as the Beam step's, so a malformed line fails here with the same
  message.
  """
  keys = [parse_ratings(shard, read_shard_bytes(shard), layout, users, movies,
                        keys_only=True) for shard in shards]
  keys = [k for k in keys if k is not None]
  if not keys:
    raise no_rows_error(shards[0].path, "ratings")
  return ParsedRatings(None, *(np.concatenate([getattr(k, name) for k in keys])
                               for name in ("user_ids", "movie_ids", "timestamps")))


def stable_hash(user_ids: np.ndarray, movie_ids: np.ndarray, seed: int,
                salt: str) -> np.ndarray:
  """A 64-bit hash of each (user, movie) rating, the same on every machine and run."""
  keys = np.array([f"{u}\x1f{m}" for u, m in zip(user_ids, movie_ids)], dtype=object)
  hash_key = f"{salt}{seed}".encode()[:16].ljust(16, b"\0").decode("latin-1")
  return pd.util.hash_array(keys, hash_key=hash_key, categorize=False)


def assign_splits(user_ids: np.ndarray, movie_ids: np.ndarray, seed: int,
                  hash_buckets: Sequence[int]) -> np.ndarray:
  """Index of the split each rating falls in, by hashing its (user, movie) pair.

  Keyed on the rating's identity rather than its serialized bytes, so adding a
  feature to the examples never moves a rating to another split.
  """
  bucket = stable_hash(user_ids, movie_ids, seed, "split") % np.uint64(sum(hash_buckets))
  return np.searchsorted(np.cumsum(hash_buckets), bucket.astype(np.int64),
                         side="right")


@dataclasses.dataclass(frozen=True)
class TemporalCutoffs:
  """Per user, the first rating of their eval and of their test split.

  A rating is keyed by (timestamp, movie id): later is larger, and a tie in time
  goes by the movie id, so the split never depends on the order of the file.
  """
  users: np.ndarray  # object (ids), sorted
  eval_from: List[Tuple[int, str]]  # per user: the first eval key, (inf, "") if none
  test_from: List[Tuple[int, str]]  # likewise for test

  @classmethod
  def of(cls, user_ids: np.ndarray, movie_ids: np.ndarray, timestamps: np.ndarray,
         shares: Dict[str, int]) -> "TemporalCutoffs":
    """With `shares` {"train": 8, "eval": 1, "test": 1}: each user's latest tenth of
    ratings (rounded down) go to test, the tenth before them to eval, the rest to
    train."""
    total = sum(shares.values())
    order = np.lexsort((movie_ids.astype(str), timestamps, user_ids.astype(str)))
    users, starts, counts = np.unique(user_ids[order].astype(str), return_index=True,
                                      return_counts=True)
    never = (np.iinfo(np.int64).max, "")

    def key(row):
      return int(timestamps[order[row]]), str(movie_ids[order[row]])

    eval_from, test_from = [], []
    for start, count in zip(starts, counts):
      num_test = count * shares["test"] // total
      num_eval = count * shares["eval"] // total
      test_from.append(key(start + count - num_test) if num_test else never)
      eval_from.append(key(start + count - num_test - num_eval) if num_eval else
                       test_from[-1])
    return cls(users.astype(object), eval_from, test_from)

  def assign(self, user_ids: np.ndarray, movie_ids: np.ndarray,
             timestamps: np.ndarray) -> np.ndarray:
    """Split index of each rating: 0 train, 1 eval, 2 test."""
    rows = np.searchsorted(self.users.astype(str), user_ids.astype(str))
    split = np.zeros(len(user_ids), np.int64)
    for i, (row, movie, time) in enumerate(zip(rows, movie_ids, timestamps)):
      rating = (int(time), str(movie))
      if rating >= self.test_from[row]:
        split[i] = 2
      elif rating >= self.eval_from[row]:
        split[i] = 1
    return split


def find_folder(folder: str, layout: Layout) -> Optional[str]:
  """The folder holding the layout's files: `folder` itself or its `ml-<name>/`."""
  for candidate in (folder, os.path.join(folder, f"ml-{layout.name}")):
    if all(is_file(os.path.join(candidate, f)) for f in layout.files):
      return candidate
  return None


def read_release(folder: str, layout: Layout,
                 lines_per_shard: int = 100_000) -> pa.Table:
  """Parses a whole release in this process, e.g. to inspect it in a notebook."""
  users, movies = read_users(folder, layout), read_movies(folder, layout)
  path = os.path.join(folder, layout.ratings_file)
  batches = [parse_ratings(shard, read_shard_bytes(shard), layout, users, movies)
             for shard in plan_ratings_shards(path, lines_per_shard, layout.ratings_header)]
  batches = [b.batch for b in batches if b is not None]
  if not batches:
    raise no_rows_error(path, "ratings")
  return pa.Table.from_batches(batches)
