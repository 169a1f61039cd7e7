"""Fuzzing of the MovieLens parsers (both layouts, ISO-8859-1 and UTF-8) with hypothesis.

Releases are built from valid rows, written in one of the ways people save them
(CRLF, a UTF-8 byte-order mark, blank lines, no final newline, each file or each
line in either encoding), then possibly damaged. The properties:

- harmless variations parse to exactly the rows an oracle computes from the
  generated fields (no silent wrong row);
- a damaged line (wrong separator, a field too many or too few, a NUL byte, a
  1 MB field, a non-numeric or out-of-range value, a duplicate or unknown id)
  raises MovieLensDataError naming that file and line;
- a file cut mid-line parses to a prefix of the true rows or names the cut line;
- any bytes at all either parse or raise MovieLensDataError naming the file
  (and the line, when a line is at fault), in bounded time.

`HYPOTHESIS_PROFILE=fuzz` (what `make fuzz` sets) runs `FUZZ_EXAMPLES` examples
per test (default 5,000) instead of the suite's FUZZ_CI_EXAMPLES (default 150).
"""
import contextlib
import dataclasses
import os
import re
import signal
import tempfile
from typing import Dict, List, Optional, Tuple

import hypothesis
import pytest
from hypothesis import strategies as st

from components.movielens_example_gen import parsing
from models import features

hypothesis.settings.register_profile(
    "ci", max_examples=int(os.environ.get("FUZZ_CI_EXAMPLES", "150")), deadline=None,
    database=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])
hypothesis.settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5000")), deadline=None,
    database=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A parse of these few-row releases takes milliseconds; anything near this is a hang.
_TIME_BOUND_S = 20
_HUGE = 1 << 20  # a 1 MB field
_SEPARATORS = ("::", "|", "\t", ",", ";", " ", ":")
_GENRES_1M = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
              "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
              "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
# The earliest and latest rating times in the real releases (100K's, 1M's).
_TIMES = (874_724_710, 1_046_454_590)


class _Hang(Exception):
  pass


@contextlib.contextmanager
def _time_bound(seconds: int):
  """Fails the example when the parse takes longer than `seconds` (a hang)."""
  def expire(*_):
    raise _Hang(f"parsing took over {seconds} s")
  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# Releases as the fields each line holds.


@dataclasses.dataclass
class Release:
  """A release as lists of fields per line, in file order, for one layout."""
  layout: parsing.Layout
  users: List[List[str]]
  movies: List[List[str]]
  ratings: List[List[str]]

  def rows(self, name: str) -> List[List[str]]:
    return {self.layout.users_file: self.users, self.layout.movies_file: self.movies,
            self.layout.ratings_file: self.ratings}[name]

  def separator(self, name: str) -> str:
    layout = self.layout
    return {layout.users_file: layout.users_separator,
            layout.movies_file: layout.movies_separator,
            layout.ratings_file: layout.ratings_separator}[name]


@dataclasses.dataclass
class Style:
  """How the files are written: harmless choices that must not change the rows."""
  newline: str = "\n"
  encodings: Tuple[str, ...] = ("iso-8859-1",)  # per line, cycled
  bom: bool = False  # a UTF-8 byte-order mark (only with UTF-8 everywhere)
  final_newline: bool = True
  blank_after: Tuple[int, ...] = ()  # a blank line after these rows
  trailing_blank_lines: int = 0
  trailing_spaces: bool = False


def _is_utf8(data: bytes) -> bool:
  try:
    data.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


def render(release: Release, name: str, style: Style) -> Tuple[bytes, List[int]]:
  """A file's bytes, and the line number of each row."""
  separator = release.separator(name)
  out, numbers, number = [], [], 0
  for i, fields in enumerate(release.rows(name)):
    line = separator.join(fields) + (" " if style.trailing_spaces else "")
    try:
      out.append(line.encode(style.encodings[i % len(style.encodings)]))
    except UnicodeEncodeError:  # a damaged value outside ISO-8859-1 ("\u0663")
      out.append(line.encode("utf-8"))
    number += 1
    numbers.append(number)
    if i in style.blank_after:
      out.append(b"  " if style.trailing_spaces else b"")
      number += 1
  out.extend([b""] * style.trailing_blank_lines)
  data = style.newline.encode().join(out)
  if style.final_newline:
    data += style.newline.encode()
  if style.bom:
    data = b"\xef\xbb\xbf" + data
  return data, numbers


def _ascii_digits(low: int, high: int):
  return st.integers(low, high).map(str)


# Text fields: printable ISO-8859-1 (what GroupLens writes), no separator, no line
# break. Titles neither start nor end with ':' ("1:::A::B" is ambiguous in 1M).
_TEXT = st.text(st.characters(codec="latin-1", categories=("L", "N", "P", "S", "Zs"),
                              exclude_characters="|:\t\r\n\x85\xa0"),
                min_size=1, max_size=12)
_TITLE = st.builds(lambda a, colon, b, year: f"{a}{': ' + b if colon else ''} ({year})",
                   _TEXT, st.booleans(), _TEXT, st.integers(1919, 2000))
_ZIP = st.text(alphabet="0123456789ABCDEFGHJKLMNPRSTVXYZ-", min_size=1, max_size=10)


# The layouts of separated text files; 20M's and 25M's CSV is read by Python's csv
# module and tested in test_csv_releases.py.
_FUZZED_LAYOUTS = ("100k", "1m")


@st.composite
def releases(draw, layout_name: Optional[str] = None) -> Release:
  """A small valid release of either fuzzed layout."""
  layout = parsing.LAYOUTS[layout_name or draw(st.sampled_from(_FUZZED_LAYOUTS))]
  user_ids = draw(st.lists(_ascii_digits(1, 10**6), min_size=1, max_size=6, unique=True))
  movie_ids = draw(st.lists(_ascii_digits(1, 10**6), min_size=1, max_size=6, unique=True))
  users, movies = [], []
  for user_id in user_ids:
    gender = draw(st.sampled_from("MF"))
    zip_code = draw(_ZIP)
    if layout.name == "1m":
      age = draw(st.sampled_from(features.AGE_BUCKETS))
      users.append([user_id, gender, str(age), str(draw(st.integers(0, 20))), zip_code])
    else:
      occupation = draw(st.sampled_from(sorted(parsing._OCCUPATIONS_100K)))  # pylint: disable=protected-access
      users.append([user_id, str(draw(st.integers(1, 149))), gender, occupation,
                    zip_code])
  for movie_id in movie_ids:
    title = draw(_TITLE)
    if layout.name == "1m":
      genres = draw(st.lists(st.sampled_from(_GENRES_1M), min_size=1, max_size=4,
                             unique=True))
      movies.append([movie_id, title, "|".join(genres)])
    else:
      flags = draw(st.lists(st.sampled_from("01"), min_size=19, max_size=19))
      movies.append([movie_id, title, "01-Jan-1995", "",
                     f"http://us.imdb.com/M/title-exact?{movie_id}"] + flags)
  ratings = [[draw(st.sampled_from(user_ids)), draw(st.sampled_from(movie_ids)),
              str(draw(st.integers(1, 5))), str(draw(st.integers(*_TIMES)))]
             for _ in range(draw(st.integers(1, 12)))]
  return Release(layout, users, movies, ratings)


@st.composite
def styles(draw, release: Release) -> Style:
  """Harmless ways of writing the release."""
  encoding = draw(st.sampled_from(["iso-8859-1", "utf-8", "mixed"]))
  if encoding == "mixed":  # e.g. two files concatenated, one re-saved as UTF-8
    encodings = tuple(draw(st.lists(st.sampled_from(["iso-8859-1", "utf-8"]),
                                    min_size=2, max_size=4)))
  else:
    encodings = (encoding,)
  longest = max(len(release.users), len(release.movies), len(release.ratings))
  return Style(
      newline=draw(st.sampled_from(["\n", "\r\n"])),
      encodings=encodings,
      bom=encoding == "utf-8" and draw(st.booleans()),
      final_newline=draw(st.booleans()),
      blank_after=tuple(draw(st.sets(st.integers(0, longest - 1), max_size=2))),
      trailing_blank_lines=draw(st.integers(0, 3)),
      trailing_spaces=draw(st.booleans()))


def _latin1_readable(release: Release, style: Style) -> bool:
  """False when an ISO-8859-1 line would also be valid UTF-8 ("Ã©"): then no
  reader can tell which was meant, and real titles never look like that."""
  if "iso-8859-1" not in style.encodings:
    return True
  for fields in release.users + release.movies:
    line = "".join(fields)
    try:
      encoded = line.encode("iso-8859-1")
    except UnicodeEncodeError:  # a damaged value ("\u0663"), which render() writes as UTF-8
      continue
    if not line.isascii() and _is_utf8(encoded):
      return False
  return True


# The oracle: what the parser must return for a release, from its fields alone.


def _age_bucket(age: int) -> int:
  return max(b for b in features.AGE_BUCKETS if b <= age)


def expected_rows(release: Release) -> List[Dict[str, object]]:
  users = {u[0]: u for u in release.users}
  movies = {m[0]: m for m in release.movies}
  rows = []
  for user_id, movie_id, rating, timestamp in release.ratings:
    user, movie = users[user_id], movies[movie_id]
    row = {features.USER_ID: user_id, features.MOVIE_ID: movie_id,
           features.MOVIE_TITLE: movie[1]}
    if release.layout.name == "1m":
      _, gender, age, code, zip_code = user
      occupation = parsing._OCCUPATIONS_1M[int(code)]  # pylint: disable=protected-access
      label = ("student" if occupation in ("K-12 student", "college/grad student")
               else occupation)
      bucket = int(age)
      genres = ["Children" if g == "Children's" else g for g in movie[2].split("|")]
    else:
      _, age, gender, occupation, zip_code = user
      label = parsing._OCCUPATIONS_100K[occupation]  # pylint: disable=protected-access
      bucket = _age_bucket(int(age))
      genres = [g for g, flag in zip(parsing._GENRE_FLAGS_100K, movie[5:])  # pylint: disable=protected-access
                if flag == "1"]
      row[features.RAW_USER_AGE] = float(age)
    row.update({
        features.MOVIE_GENRES: genres, features.USER_GENDER: int(gender == "M"),
        features.AGE_BUCKET: bucket, features.OCCUPATION_LABEL: label,
        features.OCCUPATION_TEXT: occupation, features.ZIP_CODE: zip_code,
        features.TIMESTAMP: int(timestamp), features.USER_RATING: float(rating),
        features.LABEL: int(float(rating) >= features.LIKE_MIN_RATING)})
    rows.append(row)
  return rows


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else value


def parsed_rows(table) -> List[Dict[str, object]]:
  """The parser's table as rows of plain values, bytes as text."""
  return [{k: ([_text(g) for g in v] if k == features.MOVIE_GENRES else _text(v[0]))
           for k, v in row.items()} for row in table.to_pylist()]


# Writing and reading a release.


def _write(folder: str, release: Release, style: Style,
           replace: Optional[Dict[str, bytes]] = None) -> Dict[str, List[int]]:
  """Writes the three files; returns each file's row line numbers."""
  numbers = {}
  for name in release.layout.files:
    data, numbers[name] = render(release, name, style)
    if replace and name in replace:
      data = replace[name]
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  return numbers


def _read(folder: str, release: Release, lines_per_shard: int):
  with _time_bound(_TIME_BOUND_S):
    return parsing.read_release(folder, release.layout, lines_per_shard=lines_per_shard)


_WHERE = re.compile(r"^(?P<path>.+?)(?:, line (?P<line>\d+))?: (?P<message>.+)$", re.S)


def _assert_clear_error(error: parsing.MovieLensDataError, folder: str,
                        files) -> Tuple[str, Optional[int]]:
  """The error names one of the files (and a line, unless the file is at fault as a
  whole) and is short enough to read; returns (file name, line)."""
  text = str(error)
  match = _WHERE.match(text)
  assert match, text[:300]
  path = match["path"]
  assert os.path.dirname(path) == folder and os.path.basename(path) in files, text[:300]
  assert "\n" not in text and len(text) < 1000, text[:300]
  line = int(match["line"]) if match["line"] else None
  if line is None:
    assert re.fullmatch(r"file is empty|no \w+ found \(the file holds only blank "
                        r"lines\)", match["message"]), text
  return os.path.basename(path), line


# Harmless variations: exactly the oracle's rows.


@hypothesis.given(data=st.data())
def test_harmless_variations_parse_to_exactly_the_rows_written(data):
  release = data.draw(releases())
  style = data.draw(styles(release))
  hypothesis.assume(_latin1_readable(release, style))
  lines_per_shard = data.draw(st.integers(1, 20))
  with tempfile.TemporaryDirectory() as folder:
    _write(folder, release, style)
    table = _read(folder, release, lines_per_shard)
  assert parsed_rows(table) == expected_rows(release)


# Damaged lines: an error naming the file and the line.


def _numeric_fields(layout: parsing.Layout) -> Dict[str, Dict[int, Tuple[str, ...]]]:
  """Per file, the fields that must be numbers, with values that are never valid."""
  bad_numbers = ("", "x", "1e3", "3_0", "\u0663", "0x3", "--3", "1 2", "+-1", "3.0.0")
  if layout.name == "1m":
    users = {2: bad_numbers + ("33", "-18", "0", "57", "99"),  # age group
             3: bad_numbers + ("21", "-1", "42")}  # occupation code
    movies = {}
  else:
    users = {1: bad_numbers + ("0", "-5", "150", "1000")}  # age
    movies = {i: ("", "2", "x", "00", "-1", "1.0") for i in range(5, 24)}  # genre flags
  ratings = {2: bad_numbers + ("0", "6", "-1", "10", "0.5", "5.5", "nan", "inf", "-inf"),
             3: bad_numbers + ("-1", "-978300760", "9" * 40)}
  return {layout.users_file: users, layout.movies_file: movies,
          layout.ratings_file: ratings}


@st.composite
def damaged_releases(draw):
  """A release with one line damaged: (release, style, file, row index, replacement
  line bytes or None when the damage is in the fields)."""
  release = draw(releases())
  style = draw(styles(release))
  layout = release.layout
  name = draw(st.sampled_from(layout.files))
  rows = release.rows(name)
  index = draw(st.integers(0, len(rows) - 1))
  fields = rows[index]
  separator = release.separator(name)
  kind = draw(st.sampled_from(["separator", "fields", "nul", "huge", "bad_value",
                               "duplicate_id", "unknown_id", "categorical"]))
  if kind == "separator":
    wrong = draw(st.sampled_from([s for s in _SEPARATORS if s != separator
                                  and not (separator == "::" and s == ":")]))
    count = draw(st.integers(1, len(fields) - 1))
    line = separator.join(fields).replace(separator, wrong, count)
    rows[index] = [line]  # one field: written as is
  elif kind == "fields":
    if draw(st.booleans()) and len(fields) > 1:
      del fields[draw(st.integers(0, len(fields) - 1))]
    else:
      fields.insert(draw(st.integers(0, len(fields))), draw(_ZIP))
  elif kind == "nul":
    line = separator.join(fields)
    at = draw(st.integers(0, len(line)))
    rows[index] = [line[:at] + "\x00" + line[at:]]
  elif kind == "huge":
    numeric = _numeric_fields(layout)[name]
    hypothesis.assume(numeric)  # 1M movies: id, title and genres are all text
    fields[draw(st.sampled_from(sorted(numeric)))] = "7" * _HUGE
  elif kind == "bad_value":
    numeric = _numeric_fields(layout)[name]
    if not numeric:  # 1M movies: no numeric field; an empty genre list instead
      fields[2] = ""
    else:
      position = draw(st.sampled_from(sorted(numeric)))
      fields[position] = draw(st.sampled_from(numeric[position]))
  elif kind == "duplicate_id":
    hypothesis.assume(len(rows) > 1 and name != layout.ratings_file)
    index = draw(st.integers(1, len(rows) - 1))
    rows[index][0] = rows[draw(st.integers(0, index - 1))][0]
  elif kind == "unknown_id":
    if name != layout.ratings_file:
      hypothesis.assume(False)
    fields[draw(st.integers(0, 1))] = draw(st.sampled_from(["0", "x", "", "1" * 40]))
  else:  # a value outside the categories MovieLens defines
    if name == layout.ratings_file:
      hypothesis.assume(False)
    if name == layout.users_file:
      position = 1 if layout.name == "1m" else 2
      fields[position] = draw(st.sampled_from(["m", "X", "", "MF", "Male", "0"]))
    elif layout.name == "100k":
      fields[5 + draw(st.integers(0, 18))] = draw(st.sampled_from(["", "2", "yes"]))
    else:
      fields[2] = draw(st.sampled_from(["", "Drama|", "|Drama", "Drama||Comedy"]))
    if name == layout.users_file and layout.name == "100k" and draw(st.booleans()):
      fields[2], fields[3] = "M", draw(st.sampled_from(["astronaut", "Student", ""]))
  return release, style, name, index, kind


@hypothesis.given(damaged=damaged_releases(), lines_per_shard=st.integers(1, 20))
# An age group in Arabic-Indic digits (int() reads it as 3) in an ISO-8859-1
# release, where that line can only be written as UTF-8.
@hypothesis.example(damaged=(Release(parsing.LAYOUTS["1m"],
                                     users=[["1", "M", "\u0663", "0", "0"]],
                                     movies=[["1", "0 (1919)", "Action"]],
                                     ratings=[["1", "1", "1", "874724710"]]),
                             Style(), "users.dat", 0, "bad_value"),
                    lines_per_shard=1)
def test_a_damaged_line_is_an_error_naming_file_and_line(damaged, lines_per_shard):
  release, style, name, index, kind = damaged
  hypothesis.assume(_latin1_readable(release, style))
  with tempfile.TemporaryDirectory() as folder:
    numbers = _write(folder, release, style)
    with pytest.raises(parsing.MovieLensDataError) as error:
      _read(folder, release, lines_per_shard)
    where = _assert_clear_error(error.value, folder, release.layout.files)
  assert where == (name, numbers[name][index]), (kind, str(error.value)[:300])


# Renamed ids, huge text: still exact, or an error at the first rating that refers
# to an id no longer defined.


@st.composite
def edited_releases(draw):
  release = draw(releases())
  edit = draw(st.sampled_from(["rename_user", "rename_movie", "huge_title", "huge_zip"]))
  if edit.startswith("rename"):
    rows = release.users if edit == "rename_user" else release.movies
    row = draw(st.sampled_from(rows))
    taken = {r[0] for r in rows}
    new_id = draw(st.one_of(st.just("9" * _HUGE), _ZIP).filter(lambda i: i not in taken))
    row[0] = new_id
  elif edit == "huge_title":
    draw(st.sampled_from(release.movies))[1] = "Épée " * (_HUGE // 5)
  else:
    draw(st.sampled_from(release.users))[4] = "1" * _HUGE  # the zip code
  return release


@hypothesis.given(release=edited_releases(), lines_per_shard=st.integers(1, 20))
def test_renamed_ids_and_huge_text_fields(release, lines_per_shard):
  hypothesis.assume(_latin1_readable(release, Style()))
  users = {u[0] for u in release.users}
  movies = {m[0] for m in release.movies}
  dangling = [i for i, (u, m, _, _) in enumerate(release.ratings)
              if u not in users or m not in movies]
  with tempfile.TemporaryDirectory() as folder:
    numbers = _write(folder, release, Style())
    if dangling:
      with pytest.raises(parsing.MovieLensDataError) as error:
        _read(folder, release, lines_per_shard)
      where = _assert_clear_error(error.value, folder, release.layout.files)
      assert where == (release.layout.ratings_file,
                       numbers[release.layout.ratings_file][dangling[0]])
    else:
      assert parsed_rows(_read(folder, release, lines_per_shard)) == expected_rows(release)


# A file cut mid-line (an interrupted download or copy).


@hypothesis.given(data=st.data())
def test_ratings_cut_mid_line_give_a_prefix_of_the_rows_or_name_the_line(data):
  release = data.draw(releases())
  style = Style(final_newline=data.draw(st.booleans()),
                newline=data.draw(st.sampled_from(["\n", "\r\n"])))
  hypothesis.assume(_latin1_readable(release, style))
  name = release.layout.ratings_file
  full, _ = render(release, name, style)
  cut = data.draw(st.integers(1, len(full) - 1))
  data_cut = full[:cut]
  complete_lines = data_cut.count(b"\n")
  last_line = complete_lines + 1
  expected = expected_rows(release)
  with tempfile.TemporaryDirectory() as folder:
    _write(folder, release, style, replace={name: data_cut})
    try:
      table = _read(folder, release, data.draw(st.integers(1, 20)))
    except parsing.MovieLensDataError as error:
      assert _assert_clear_error(error, folder, release.layout.files) == (name, last_line)
      return
  rows = parsed_rows(table)
  assert rows == expected[:len(rows)]  # no row that differs from the file's
  assert len(rows) >= complete_lines


# Any bytes: parsed or a clear error, never another exception, never a hang.


_NASTY = st.sampled_from([b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\r", b"\r\n", b"\n",
                          b"::", b"|", b"\t", b"\xe9", b"\xc3\xa9", b"\x85", b"\xa0",
                          b"\xe2\x80\xa8", b"9" * 30, b"-", b".", b"nan", b" "])


@st.composite
def mangled_bytes(draw, data: bytes) -> bytes:
  """`data` with random insertions, deletions and overwrites."""
  data = bytearray(data)
  for _ in range(draw(st.integers(1, 6))):
    at = draw(st.integers(0, len(data)))
    action = draw(st.sampled_from(["insert", "delete", "overwrite", "truncate"]))
    chunk = draw(st.one_of(_NASTY, st.binary(min_size=1, max_size=8)))
    if action == "insert":
      data[at:at] = chunk
    elif action == "delete":
      del data[at:at + len(chunk)]
    elif action == "overwrite":
      data[at:at + len(chunk)] = chunk
    else:
      del data[at:]
  return bytes(data)


@hypothesis.given(data=st.data())
def test_mangled_or_random_bytes_parse_or_raise_a_clear_error(data):
  release = data.draw(releases())
  style = data.draw(styles(release))
  replace = {}
  for name in data.draw(st.sets(st.sampled_from(release.layout.files), min_size=1)):
    original, _ = render(release, name, style)
    replace[name] = data.draw(st.one_of(
        mangled_bytes(original), st.binary(max_size=300),
        st.binary(max_size=64).map(lambda b: b * 50)), label=name)
  with tempfile.TemporaryDirectory() as folder:
    _write(folder, release, style, replace=replace)
    try:
      _read(folder, release, data.draw(st.integers(1, 20)))
    except parsing.MovieLensDataError as error:
      _assert_clear_error(error, folder, release.layout.files)
