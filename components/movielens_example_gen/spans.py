"""Time spans of the ratings, in TFX's span convention.

A pipeline that keeps training meets its data a span at a time: a week's or a
month's new ratings. TFX numbers them (the Examples artifact's `span` property)
and its resolvers pick windows of them (`rolling_range`). MovieLens is one file
with a timestamp per rating, so the spans are cut by time:

- a span is `length` days or calendar months (UTC) long;
- span 0 starts at the first rating's day (or month), so appending later ratings
  to the file never renumbers the spans that came before;
- `until` (a day, inclusive) ends the data a run may see, as if the file had
  been read at the end of that day.
"""
import dataclasses
import datetime
from typing import Dict, List, Optional

import numpy as np

_SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class SpanLength:
  """How long each span is: `days` days or `months` calendar months, not both."""
  days: int = 0
  months: int = 0

  def __post_init__(self):
    if self.days < 0 or self.months < 0 or (self.days and self.months):
      raise ValueError(f"a span is a positive number of days or of months, not both: "
                       f"got days={self.days}, months={self.months}")

  @property
  def enabled(self) -> bool:
    return bool(self.days or self.months)

  def __str__(self) -> str:
    if self.days:
      return f"{self.days} day{'s' * (self.days > 1)}"
    return f"{self.months} month{'s' * (self.months > 1)}"

  def units(self, timestamps: np.ndarray) -> np.ndarray:
    """Days (or months) since 1970-01-01 of each timestamp (seconds, UTC)."""
    if self.days:
      return np.asarray(timestamps, np.int64) // _SECONDS_PER_DAY
    return np.asarray(timestamps, np.int64).astype("datetime64[s]").astype(
        "datetime64[M]").astype(np.int64)

  def start_of_unit(self, unit: int) -> int:
    """The first second (UTC) of a day (or month) since 1970."""
    if self.days:
      return unit * _SECONDS_PER_DAY
    return int(np.datetime64(unit, "M").astype("datetime64[s]").astype(np.int64))


@dataclasses.dataclass(frozen=True)
class Span:
  """Span `number`: the ratings with start <= timestamp < end (seconds, UTC)."""
  number: int
  start: int
  end: int

  @property
  def first_day(self) -> str:
    return _day(self.start)

  @property
  def last_day(self) -> str:
    return _day(self.end - 1)

  def describe(self) -> str:
    return f"span {self.number} ({self.first_day} to {self.last_day})"


@dataclasses.dataclass(frozen=True)
class SpanCutter:
  """Cuts timestamps into spans of `length`, numbered from `origin` (span 0's start)."""
  length: SpanLength
  origin_unit: int  # the day (or month) since 1970 in which span 0 starts

  @classmethod
  def starting_at(cls, length: SpanLength, first_timestamp: int) -> "SpanCutter":
    """Span 0 starts on the day (or month) of `first_timestamp`."""
    return cls(length, int(length.units(np.array([first_timestamp]))[0]))

  @property
  def _step(self) -> int:
    return self.length.days or self.length.months

  def numbers(self, timestamps: np.ndarray) -> np.ndarray:
    """The span number of each timestamp."""
    return (self.length.units(timestamps) - self.origin_unit) // self._step

  def span(self, number: int) -> Span:
    first = self.origin_unit + number * self._step
    return Span(number, self.length.start_of_unit(first),
                self.length.start_of_unit(first + self._step))

  def counts(self, timestamps: np.ndarray) -> Dict[int, int]:
    """Ratings per span, every span from 0 to the last one included (0 for an empty one)."""
    numbers = self.numbers(timestamps)
    if not len(numbers):
      return {}
    counts = np.bincount(numbers, minlength=int(numbers.max()) + 1)
    return {number: int(count) for number, count in enumerate(counts)}


class EmptySpanError(ValueError):
  """The span asked for holds no ratings."""


@dataclasses.dataclass(frozen=True)
class SpanPlan:
  """The spans a release holds up to a day: which have ratings, and how many."""
  cutter: SpanCutter
  counts: Dict[int, int]  # ratings per span, empty spans included

  @classmethod
  def of(cls, timestamps: np.ndarray, length: SpanLength,
         until: Optional[int] = None) -> "SpanPlan":
    """Spans of `length` from the first rating on; ratings from `until` on left out."""
    timestamps = np.asarray(timestamps)
    cutter = SpanCutter.starting_at(length, int(timestamps.min()))
    seen = timestamps if until is None else timestamps[timestamps < until]
    return cls(cutter, cutter.counts(seen))

  @property
  def with_ratings(self) -> List[int]:
    return [number for number, count in self.counts.items() if count]

  def choose(self, requested: int = -1) -> Span:
    """Span `requested`, or with -1 the last one with ratings; EmptySpanError if it
    has none, naming the spans that do."""
    with_ratings = self.with_ratings
    if not with_ratings:
      raise EmptySpanError("no ratings up to the --until day")
    number = with_ratings[-1] if requested < 0 else requested
    span = self.cutter.span(number)
    if not self.counts.get(number):
      raise EmptySpanError(
          f"{span.describe()} holds no ratings; spans of {self.cutter.length} with "
          f"ratings: {with_ratings[0]} to {with_ratings[-1]}, "
          f"{len(self.counts) - len(with_ratings)} of them empty")
    return span


def end_of_day(day: Optional[str]) -> Optional[int]:
  """The first second after `day` ("YYYY-MM-DD", UTC), or None for no day.

  A clear ValueError names a malformed day.
  """
  if not day:
    return None
  try:
    parsed = datetime.date.fromisoformat(day)
  except ValueError:
    raise ValueError(f"until must be a day as YYYY-MM-DD, got {day!r}") from None
  midnight = datetime.datetime(parsed.year, parsed.month, parsed.day,
                               tzinfo=datetime.timezone.utc)
  return int(midnight.timestamp()) + _SECONDS_PER_DAY


def _day(timestamp: int) -> str:
  return str(np.datetime64(int(timestamp), "s").astype("datetime64[D]"))
