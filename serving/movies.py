"""Movie titles and genres for showing recommendations, read from a run's examples."""
import glob
import os
from typing import Dict, Tuple

import tensorflow as tf

from models import features

Catalog = Dict[str, Tuple[str, str]]  # movie id -> (title, "Genre|Genre")


def load_catalog(examples_uri: str, split: str = "train") -> Catalog:
  """Every movie of a split of ExampleGen's output, with its title and genres."""
  files = glob.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
  spec = {features.MOVIE_ID: tf.io.FixedLenFeature([], tf.string),
          features.MOVIE_TITLE: tf.io.FixedLenFeature([], tf.string),
          features.MOVIE_GENRES: tf.io.VarLenFeature(tf.string)}
  catalog: Catalog = {}
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65_536)
  for batch in dataset.map(lambda x: tf.io.parse_example(x, spec)):
    genres = tf.sparse.to_dense(batch[features.MOVIE_GENRES], default_value=b"").numpy()
    for movie, title, movie_genres in zip(batch[features.MOVIE_ID].numpy(),
                                          batch[features.MOVIE_TITLE].numpy(), genres):
      key = movie.decode()
      if key not in catalog:
        catalog[key] = (title.decode("utf-8", "replace"),
                        "|".join(g.decode() for g in movie_genres if g))
  return catalog
