"""Synthetic MovieLens releases in the 1M (`*.dat`), 100K (`u.*`) and 20M/25M
(`*.csv`) layouts.

For tests and benchmarks: GroupLens forbids redistributing the real files. Likes
come from a planted latent-factor model (user and movie factors plus biases and a
per-genre taste), so a model that learns anything scores clearly above AUC 0.5.
Real users.dat/movies.dat (or u.user/u.item) can be reused with `tables_from`.
"""
import csv
import dataclasses
import os
from typing import Optional

import numpy as np

from components.movielens_example_gen import parsing
from models import features

# MovieLens 1M's first and last rating times.
TIMESTAMP_RANGE = (956_703_932, 1_046_454_590)
# Each release's first and last rating times (1M's for 1M and 100K, as before).
TIMESTAMP_RANGES = {"1m": TIMESTAMP_RANGE, "100k": TIMESTAMP_RANGE,
                    "20m": (789_652_009, 1_427_784_002), "25m": (789_652_009, 1_574_327_703)}
# Ratings scored and written at a time: a 25M-rating release in one piece would
# hold several gigabytes of factor products and text at once.
_CHUNK = 1 << 20
_OCCUPATIONS_100K = ("administrator", "artist", "doctor", "educator", "engineer",
                     "entertainment", "executive", "healthcare", "homemaker",
                     "lawyer", "librarian", "marketing", "none", "other",
                     "programmer", "retired", "salesman", "scientist", "student",
                     "technician", "writer")
_GENRES_1M = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
              "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
              "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_TITLE_WORDS = ("Amélie", "Night", "River", "Café", "Return", "Stars", "Garden",
                "Señor", "City", "Dream", "Winter", "Über", "Road", "Love")


@dataclasses.dataclass
class SyntheticRelease:
  """What was written, for tests to check against."""
  folder: str
  num_users: int
  num_movies: int
  num_ratings: int
  num_likes: int


def _movie_rows(rng, num_movies: int):
  """(id, title, genres) rows; titles carry a year and some non-ASCII letters."""
  rows = []
  for movie_id in range(1, num_movies + 1):
    words = rng.choice(len(_TITLE_WORDS), size=rng.integers(1, 4), replace=False)
    title = " ".join(_TITLE_WORDS[w] for w in words)
    year = int(rng.integers(1919, 2001))
    genres = sorted(rng.choice(len(_GENRES_1M), size=rng.integers(1, 4), replace=False))
    rows.append((str(movie_id), f"{title} ({year})", [_GENRES_1M[g] for g in genres]))
  return rows


def _user_rows(rng, num_users: int):
  """(id, gender, age, occupation index, zip) rows."""
  zips = ("55455", "94043", "T8H1N", "02139", "98107-2117", "10003", "60657")
  return [(str(u), "M" if rng.random() < 0.7 else "F",
           int(rng.choice(features.AGE_BUCKETS[1:])) + int(rng.integers(0, 5)),
           int(rng.integers(0, 21)), zips[int(rng.integers(0, len(zips)))])
          for u in range(1, num_users + 1)]


def _genre_matrix(movie_genres) -> np.ndarray:
  """Movies x genres, each row summing to 1 over the movie's known genres."""
  index = {g: i for i, g in enumerate(_GENRES_1M)}
  index["Children"] = index["Children's"]  # TFDS's name for it
  matrix = np.zeros((len(movie_genres), len(_GENRES_1M)))
  for m, genres in enumerate(movie_genres):
    known = [index[g] for g in genres if g in index]
    if known:
      matrix[m, known] = 1 / len(known)
  return matrix


def _ratings_per_user(rng, num_users: int, num_movies: int, num_ratings: int):
  """Heavy-tailed ratings counts per user, each in [min(20, ...), num_movies], summing exactly."""
  if num_ratings > num_users * num_movies:
    raise ValueError(f"{num_ratings} ratings do not fit {num_users} users x "
                     f"{num_movies} movies")
  low = min(20, num_ratings // num_users, num_movies)
  weights = rng.lognormal(0, 1, size=num_users)
  per_user = np.clip(np.round(weights / weights.sum() * num_ratings), low,
                     num_movies).astype(int)
  order, i = rng.permutation(num_users), 0
  while per_user.sum() != num_ratings:
    user, step = order[i % num_users], np.sign(num_ratings - per_user.sum())
    if low <= per_user[user] + step <= num_movies:
      per_user[user] += step
    i += 1
  return per_user


def _ratings(rng, num_users: int, movie_genres, num_ratings: int, latent_dim: int,
             rated_movies: Optional[int] = None, watch_affinity: float = 0.0,
             time_range=TIMESTAMP_RANGE):
  """Samples distinct (user, movie) pairs and rates them from a planted model.

  With `rated_movies`, only that many movies (chosen at random) get ratings, as in
  the real releases, where some catalogue movies have none. With `watch_affinity`,
  who watches what is planted too: a user picks movies by popularity times
  exp(watch_affinity * their taste for the movie), the same taste that rates it.
  """
  num_movies = len(movie_genres)
  popularity = rng.zipf(1.6, size=num_movies).astype(float)
  popularity = np.minimum(popularity, np.quantile(popularity, 0.99)) / popularity.sum()
  if rated_movies is not None and rated_movies < num_movies:
    popularity[rng.permutation(num_movies)[rated_movies:]] = 0
  popularity /= popularity.sum()
  per_user = _ratings_per_user(rng, num_users, int((popularity > 0).sum()), num_ratings)
  user_factors = rng.normal(0, 1, (num_users, latent_dim))
  movie_factors = rng.normal(0, 1, (num_movies, latent_dim))
  genre_taste = rng.normal(0, 1, (num_users, len(_GENRES_1M)))
  genre_matrix = _genre_matrix(movie_genres)
  user_bias, movie_bias = rng.normal(0, 0.5, num_users), rng.normal(0, 0.7, num_movies)

  def watch_bonus(user):
    if not watch_affinity:
      return 0.0
    return watch_affinity * (movie_factors @ user_factors[user] / np.sqrt(latent_dim)
                             + genre_matrix @ genre_taste[user])

  users = np.repeat(np.arange(num_users), per_user)
  # Weighted sampling without replacement (Efraimidis-Spirakis keys), a user at a time;
  # unrated movies get key -inf and so are never among a user's top k. Each user's k
  # are copied out: a slice would keep the whole catalogue's ranking alive, 62,000
  # indices for each of 25M's 162,000 users.
  with np.errstate(divide="ignore"):
    log_popularity = np.log(popularity)
  movies = np.concatenate([
      np.argpartition(log_popularity + watch_bonus(user)
                      - np.log(-np.log(rng.random(num_movies))),
                      num_movies - k)[num_movies - k:].copy()
      for user, k in enumerate(per_user)])
  noise = rng.normal(0, 0.8, len(users))
  score = np.empty(len(users))
  for start in range(0, len(users), _CHUNK):
    rows = slice(start, start + _CHUNK)
    u, m = users[rows], movies[rows]
    score[rows] = ((user_factors[u] * movie_factors[m]).sum(1) / np.sqrt(latent_dim)
                   + (genre_taste[u] * genre_matrix[m]).sum(1)
                   + user_bias[u] + movie_bias[m] + noise[rows])
  # Quantiles of real MovieLens ratings: 6% ones, 11% twos, 26% threes, 35% fours.
  ratings = 1 + np.searchsorted(np.quantile(score, [0.06, 0.17, 0.43, 0.78]), score)
  timestamps = rng.integers(*time_range, size=len(users))
  order = np.lexsort((timestamps, users))  # grouped by user, as the releases are
  return users[order], movies[order], ratings[order], timestamps[order]


def write_release(folder: str, layout: str = "1m", num_users: int = 200,
                  num_movies: int = 300, num_ratings: int = 10_000, seed: int = 0,
                  tables_from: Optional[str] = None,
                  latent_dim: int = 8,
                  rated_movies: Optional[int] = None,
                  watch_affinity: float = 0.0) -> SyntheticRelease:
  """Writes a MovieLens release in `layout` ("1m", "100k", "20m" or "25m") into `folder`.

  The CSV layouts (20M, 25M) have no users file and rate in half stars: some
  ratings are half a star lower than the planted model's, never across the like
  threshold.

  With `tables_from`, the users and movies files are read from that real release
  folder (same layout) instead of being invented; ratings are always synthetic.
  With `rated_movies`, only that many of the movies are rated (default: all).
  With `watch_affinity`, users watch movies to their taste (see `_ratings`).
  """
  rng = np.random.default_rng(seed)
  spec = parsing.LAYOUTS[layout]
  os.makedirs(folder, exist_ok=True)
  if tables_from:
    users = parsing.read_users(tables_from, spec)
    movie_table = parsing.read_movies(tables_from, spec)
    user_ids = (users.ids.to_pylist() if users is not None
                else [str(u) for u in range(1, num_users + 1)])
    movie_ids = movie_table.ids.to_pylist()
    movie_genres = movie_table.genres.to_pylist()
    for name in (spec.users_file, spec.movies_file):
      if name is None:
        continue
      with open(os.path.join(tables_from, name), "rb") as src, \
          open(os.path.join(folder, name), "wb") as dst:
        dst.write(src.read())
  else:
    movie_rows = _movie_rows(rng, num_movies)
    user_rows = _user_rows(rng, num_users)
    user_ids = [u[0] for u in user_rows]
    movie_ids = [m[0] for m in movie_rows]
    movie_genres = [m[2] for m in movie_rows]
    _write_tables(folder, spec, user_rows, movie_rows)
  users_idx, movies_idx, ratings, timestamps = _ratings(
      rng, len(user_ids), movie_genres, num_ratings, latent_dim, rated_movies,
      watch_affinity, TIMESTAMP_RANGES[layout])
  separator = spec.ratings_separator
  user_ids, movie_ids = np.array(user_ids), np.array(movie_ids)
  if spec.ratings_header:  # half stars, as "3.5" and "4.0"
    half = (rng.random(len(ratings)) < 0.3) & (ratings != features.LIKE_MIN_RATING)
    ratings = ratings - 0.5 * half
  with open(os.path.join(folder, spec.ratings_file), "w", encoding="ascii") as f:
    if spec.ratings_header:
      f.write(spec.ratings_header + "\n")
    for start in range(0, len(ratings), _CHUNK):
      rows = slice(start, start + _CHUNK)
      lines = (np.char.add(np.char.add(user_ids[users_idx[rows]], separator),
                           np.char.add(movie_ids[movies_idx[rows]], separator))
               .astype(object) + ratings[rows].astype(str).astype(object) + separator
               + timestamps[rows].astype(str).astype(object))
      f.write("\n".join(lines) + "\n")
  return SyntheticRelease(folder, len(user_ids), len(movie_ids), len(ratings),
                          int((ratings >= features.LIKE_MIN_RATING).sum()))


def _write_csv_movies(path: str, movie_rows) -> None:
  """movies.csv as GroupLens writes 20M's and 25M's: UTF-8, a header, titles with a
  comma quoted ("Night, The (1995)"), some movies without genres."""
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["movieId", "title", "genres"])
    for m, title, genres in movie_rows:
      if int(m) % 7 == 0:
        title = title.replace(" (", ", The (", 1)
      names = ([g.replace("Children's", "Children") for g in genres]
               if int(m) % 50 else ["(no genres listed)"])
      writer.writerow([m, title, "|".join(names)])


def _write_tables(folder: str, spec: parsing.Layout, user_rows, movie_rows) -> None:
  """Writes users and movies files as GroupLens does: ISO-8859-1, one row a line."""
  if spec.users_file is None:
    _write_csv_movies(os.path.join(folder, spec.movies_file), movie_rows)
    return
  if spec.name == "1m":
    users = [f"{u}::{g}::{min(a for a in features.AGE_BUCKETS if a >= age - 4)}::{o}::{z}"
             for u, g, age, o, z in user_rows]
    movies = [f"{m}::{title}::{'|'.join(genres)}" for m, title, genres in movie_rows]
  else:
    users = [f"{u}|{age}|{g}|{_OCCUPATIONS_100K[o]}|{z}" for u, g, age, o, z in user_rows]
    genre_flags = ("unknown",) + _GENRES_1M
    movies = [f"{m}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?{m}|"
              + "|".join("1" if g in genres else "0" for g in genre_flags)
              for m, title, genres in movie_rows]
  for name, lines in ((spec.users_file, users), (spec.movies_file, movies)):
    with open(os.path.join(folder, name), "w", encoding="iso-8859-1") as f:
      f.write("\n".join(lines) + "\n")


# The real releases' sizes, for benchmarks at their scale: users, movies in the
# movies file, ratings, and movies with at least one rating.
SHAPES = {
    "1m": {"num_users": 6_040, "num_movies": 3_883, "num_ratings": 1_000_209,
           "rated_movies": 3_706},
    "20m": {"num_users": 138_493, "num_movies": 27_278, "num_ratings": 20_000_263,
            "rated_movies": 26_744},
    "25m": {"num_users": 162_541, "num_movies": 62_423, "num_ratings": 25_000_095,
            "rated_movies": 59_047},
}


def main(argv=None) -> int:
  """`python -m testing.synthetic --shape 25m FOLDER`: a release of a real one's size."""
  import argparse  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("folder")
  parser.add_argument("--shape", choices=sorted(SHAPES), default="25m")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--latent-dim", type=int, default=16)
  args = parser.parse_args(argv)
  started = time.perf_counter()
  release = write_release(args.folder, args.shape, seed=args.seed, latent_dim=args.latent_dim,
                          **SHAPES[args.shape])
  print(f"{args.folder}: {release.num_ratings:,} ratings ({release.num_likes:,} likes) by "
        f"{release.num_users:,} users of {release.num_movies:,} movies, in the "
        f"{args.shape} layout, in {time.perf_counter() - started:.0f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
