"""A TFX ExampleGen that ingests MovieLens through tensorflow-datasets' sources.

The component is in `component.py`. This package imports nothing itself, so
`sources` and `parsing` load without TFX or TensorFlow: the command line checks
the data before it pays for those imports.
"""
