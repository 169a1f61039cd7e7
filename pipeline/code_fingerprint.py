"""Fingerprints of this project's code and files, for TFX's cache keys.

TFX reuses a component's earlier outputs when its inputs and parameters have not
changed. It hashes a Trainer's or Transform's `module_file` into that key, but
not a `run_fn` or `preprocessing_fn` named by import path, not the code of a
custom component, and not the content of ImportSchemaGen's schema file, only its
path. So after an upgrade or an edit, a rerun would quietly reuse what the old
code made: an old model, or a report that `recsys report` refuses as another
version's. Each component whose code or file lives in this repository gets the
fingerprint of it among its parameters instead: an edit reruns that component
and whatever depends on its outputs, nothing else.
"""
import hashlib
import importlib.util
import os
from typing import Iterator, Tuple

_DIGITS = 16  # of the SHA-256's hex digest: collisions stay out of reach


def _source_files(module: str) -> Iterator[Tuple[str, str]]:
  """(name relative to the module's root, path) of every .py file of `module`."""
  spec = importlib.util.find_spec(module)
  if spec is None or spec.origin is None:
    raise ValueError(f"no Python source for module {module!r}")
  if spec.submodule_search_locations:  # a package: every module in it
    for folder in spec.submodule_search_locations:
      for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
          if name.endswith(".py"):
            path = os.path.join(root, name)
            yield f"{module}/{os.path.relpath(path, folder)}", path
  else:
    yield module, spec.origin


def of(*modules: str) -> str:
  """Changes whenever the source of any of `modules` (packages: all their files) does.

  Files are named relative to their module, so two checkouts of the same code in
  different folders get the same fingerprint.
  """
  digest = hashlib.sha256()
  for module in sorted(set(modules)):
    for name, path in _source_files(module):
      digest.update(name.encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()[:_DIGITS]


def of_file(path: str) -> str:
  """Changes whenever the content of the file at `path` does."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:_DIGITS]
