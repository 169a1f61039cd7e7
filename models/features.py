"""The one place for feature names, the label and the MovieLens data sets' facts.

Raw feature names are those of tensorflow-datasets' `movielens/*-ratings` builder,
so a row read here and a row from `tfds.load("movielens/1m-ratings")` mean the same.
Where TFDS stores a class index (genres, occupation label) we store the class
name, and TFDS's bool `user_gender` becomes an int (1 = male), as tf.Example has
no bool.
"""

# Raw features of every example ExampleGen writes.
USER_ID = "user_id"
MOVIE_ID = "movie_id"
MOVIE_TITLE = "movie_title"
MOVIE_GENRES = "movie_genres"  # several values per example
USER_GENDER = "user_gender"  # 1 = male, 0 = female, as TFDS's bool
AGE_BUCKET = "bucketized_user_age"  # lowest age of the bucket: 1, 18, 25, 35, 45, 50, 56
OCCUPATION_LABEL = "user_occupation_label"  # harmonised across 100K and 1M
OCCUPATION_TEXT = "user_occupation_text"  # as written in the data set
ZIP_CODE = "user_zip_code"  # a string: "55455", "T8H1N", "98107-2117"
TIMESTAMP = "timestamp"  # seconds since the epoch
USER_RATING = "user_rating"  # 1 to 5 stars; 20M and 25M: 0.5 to 5 in half stars
RAW_USER_AGE = "raw_user_age"  # MovieLens 100K only
# What only the releases with a users table (100K, 1M) know of a user; 20M and 25M
# give ids, ratings, times, titles and genres.
DEMOGRAPHIC_FEATURES = (USER_GENDER, AGE_BUCKET, OCCUPATION_LABEL, OCCUPATION_TEXT,
                        ZIP_CODE, RAW_USER_AGE)
# The user's latest earlier ratings, most recent first (MovieLensExampleGen's
# histories.py says which ratings a history may hold): their movies, and how many
# seconds before this rating each was made.
HISTORY_MOVIE_IDS = "history_movie_ids"
HISTORY_AGE_SECONDS = "history_age_seconds"
HISTORY_LENGTH = 50  # the most earlier ratings an example carries
HISTORY_PADDING = -1  # a transformed history's places without a movie

# The label: a rating of 4 or 5 is a like.
LABEL = "like"
LIKE_MIN_RATING = 4

# Types and allowed values of every feature: pipeline/schema/schema.pbtxt.

# 1995-01-01 UTC: no MovieLens rating is older (100K's start in 1997, 1M's in 2000).
EARLIEST_RATING_TIME = 788_918_400

# Age buckets, as MovieLens 1M defines them and TFDS applies to 100K's exact ages.
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)

# The data sets this project ingests, by the name users give on the command line.
DATASETS = {
    "1m": "movielens/1m-ratings",
    "100k": "movielens/100k-ratings",
    "20m": "movielens/20m-ratings",
    "25m": "movielens/25m-ratings",
}
DEFAULT_DATASET = "1m"
# Ratings in each release (sizes the Beam runner before the data is read).
DATASET_RATINGS = {"1m": 1_000_209, "100k": 100_000, "20m": 20_000_263, "25m": 25_000_095}
# The releases with user demographics (a users table).
WITH_DEMOGRAPHICS = ("1m", "100k")
def in_release(feature: str, dataset: str) -> bool:
  """Whether the examples of `dataset` have the raw `feature`."""
  return dataset in WITH_DEMOGRAPHICS or feature not in DEMOGRAPHIC_FEATURES


# The lowest rating of each release: 20M and 25M rate in half stars from 0.5.
LOWEST_RATING = {"1m": 1.0, "100k": 1.0, "20m": 0.5, "25m": 0.5}
HIGHEST_RATING = 5.0

# Output splits of ExampleGen and their share of the hash buckets (80/10/10).
SPLITS = (("train", 8), ("eval", 1), ("test", 1))
SPLIT_NAMES = tuple(name for name, _ in SPLITS)
# How ratings are assigned to the splits: by a hash of each (user, movie) pair, or
# by time, each user's latest ratings going to test and the ones before to eval.
SPLIT_METHODS = ("random", "temporal")

# --- Transformed features (tf.Transform's output), read by both models. ---

# Categorical fields: each becomes a vocabulary index computed on the train split,
# with out-of-vocabulary buckets so ids never seen in training still score.
USER_FIELDS = (USER_ID, USER_GENDER, AGE_BUCKET, OCCUPATION_LABEL, ZIP_CODE)
MOVIE_FIELDS = (MOVIE_ID,)
MOVIE_DECADE = "movie_decade"  # derived: release year from the title, by decade
VOCAB_FEATURES = USER_FIELDS + MOVIE_FIELDS
NUM_OOV_BUCKETS = 1
# Fields whose values come from a short list MovieLens fixes (its gender, age and
# occupation codes, genres, and decades), and a bound far above their length:
# their vocabularies may be counted in a sketch of that many values, which is exact
# while the field has fewer (models/preprocessing.py).
SMALL_VOCAB_FIELDS = (USER_GENDER, AGE_BUCKET, OCCUPATION_LABEL, MOVIE_DECADE, MOVIE_GENRES)
SMALL_VOCAB_MAX_VALUES = 1000
MAX_GENRES = 10  # most genres a MovieLens movie has (25M's; 1M's: 6); ids padded to this
GENRE_PADDING = -1


def available(fields, present) -> tuple:
  """`fields` that a release has, in their order: those in `present` (e.g. the
  vocabulary sizes Transform computed). MovieLens 20M and 25M lack the user
  demographics, and the models leave them out."""
  return tuple(f for f in fields if f in present)


def transformed_name(key: str) -> str:
  """Name of a feature after tf.Transform."""
  return f"{key}_xf"


# Train-split statistics of each user and each movie, derived from the id alone
# (constants in the Transform graph, so serving needs no new raw input). Only the
# `best` presets read them (`use_id_statistics`).
USER_LIKE_RATE = "user_like_rate"  # likes / ratings, smoothed toward the global rate
MOVIE_LIKE_RATE = "movie_like_rate"
USER_RATING_COUNT = "user_rating_count"  # log(1 + ratings in the train split)
MOVIE_RATING_COUNT = "movie_rating_count"
# (statistic's id field, like rate, rating count)
ID_STATISTICS = ((USER_ID, USER_LIKE_RATE, USER_RATING_COUNT),
                 (MOVIE_ID, MOVIE_LIKE_RATE, MOVIE_RATING_COUNT))
# Pseudo-ratings at the global like rate added to every user's and movie's own:
# an id with few ratings gets a rate near the global one, an unseen id exactly it.
LIKE_RATE_PRIOR_COUNT = 10.0

# DeepFM's fields: one embedding each, genres mean-pooled.
DEEPFM_FIELDS = USER_FIELDS + MOVIE_FIELDS + (MOVIE_DECADE, MOVIE_GENRES)
# Raw features each model needs at serving time.
CF_RAW_FEATURES = (USER_ID, MOVIE_ID)
DEEPFM_RAW_FEATURES = USER_FIELDS + (MOVIE_ID, MOVIE_TITLE, MOVIE_GENRES)
RETRIEVAL_RAW_FEATURES = DEEPFM_RAW_FEATURES
# What a model that encodes the user's history needs besides (models/sequence.py).
HISTORY_RAW_FEATURES = (HISTORY_MOVIE_IDS, HISTORY_AGE_SECONDS)

# Model inputs of the user's history (models/sequence.py): the Trainers read them
# only for a model that encodes it, and serving looks them up by user.
HISTORY_INPUTS = (transformed_name(HISTORY_MOVIE_IDS), transformed_name(HISTORY_AGE_SECONDS))

# Model inputs (transformed features) that describe the user, and the movie: what
# serving looks up from the ids alone (export/recommend.py).
USER_SIDE_INPUTS = tuple(transformed_name(f) for f in USER_FIELDS + (
    USER_LIKE_RATE, USER_RATING_COUNT))
MOVIE_SIDE_INPUTS = tuple(transformed_name(f) for f in MOVIE_FIELDS + (
    MOVIE_DECADE, MOVIE_GENRES, MOVIE_LIKE_RATE, MOVIE_RATING_COUNT))
