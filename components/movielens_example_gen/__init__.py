"""A TFX ExampleGen that ingests MovieLens through tensorflow-datasets' sources."""
from components.movielens_example_gen.component import MovieLensExampleGen
from components.movielens_example_gen.parsing import MovieLensDataError
