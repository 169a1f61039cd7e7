"""Fingerprints of this project's code and files, for TFX's cache keys.

TFX reuses a component's earlier outputs when its inputs and parameters have not
changed. It hashes a Trainer's or Transform's `module_file` into that key, but
not a `run_fn` or `preprocessing_fn` named by import path, not the code of a
custom component, and not the content of ImportSchemaGen's schema file, only its
path. So after an upgrade or an edit, a rerun would quietly reuse what the old
code made. Each component whose code lives in this repository gets, among its
parameters, the fingerprint of the project modules its entry point imports,
followed transitively through the source: an edit reruns the components that
import the edited module and whatever depends on their outputs, nothing else.

The fingerprint is of each module's syntax tree without docstrings, so an edited
comment, docstring or line wrap reruns nothing.
"""
import ast
import hashlib
import os
from typing import Iterable, Iterator, List, Optional, Set, Tuple

_DIGITS = 16  # of the SHA-256's hex digest: collisions stay out of reach

# This project's top-level packages (setup.py installs these); imports of anything
# else (TensorFlow, TFX, the standard library) are not followed.
PROJECT_PACKAGES = ("common", "components", "engines", "evaluation", "export", "models",
                    "pipeline", "serving", "testing", "trainer")

# The folder holding them: the repository, or site-packages where it is installed.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_ours(module: str) -> bool:
  return module.split(".")[0] in PROJECT_PACKAGES


def _locate(module: str, root: str) -> Optional[Tuple[str, bool]]:
  """(path of `module`'s source under `root`, whether it is a package), or None.

  Found in the file system, without importing anything: `from models.training
  import fit` must not load TensorFlow to be fingerprinted.
  """
  base = os.path.join(root, *module.split("."))
  if os.path.isfile(os.path.join(base, "__init__.py")):
    return os.path.join(base, "__init__.py"), True
  if "." in module and os.path.isfile(base + ".py"):
    return base + ".py", False
  return None


def _parse(module: str, root: str) -> Tuple[ast.AST, bool]:
  found = _locate(module, root) if _is_ours(module) else None
  if found is None:
    raise ValueError(f"no Python source for module {module!r} in {root}")
  path, is_package = found
  with open(path, "rb") as f:
    return ast.parse(f.read(), filename=path), is_package


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
  """Every module name an import statement in `tree` may load, at any depth.

  `from a import b` yields both `a.b` (b may be a module) and `a`; names that
  are not modules are dropped by the caller.
  """
  package = module if is_package else module.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from . import x, from ..a import b
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      yield base
      for alias in node.names:
        yield f"{base}.{alias.name}"


def _with_parents(module: str) -> Iterator[str]:
  """`a.b.c`, then `a.b` and `a`: importing a module runs its packages' __init__."""
  parts = module.split(".")
  for end in range(len(parts), 0, -1):
    yield ".".join(parts[:end])


def _without_docstrings(tree: ast.AST) -> ast.AST:
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
          and isinstance(body[0].value.value, str)):
        node.body = body[1:] or [ast.Pass()]
  return tree


def imported_modules(*entry_points: str, root: str = PROJECT_ROOT) -> List[str]:
  """`entry_points` and every project module they import, transitively, sorted.

  Follows import statements in the source, including those inside functions (a
  lazy import still runs when the component does), and the `__init__` of every
  package on the way.
  """
  for entry in entry_points:
    _parse(entry, root)  # an entry point that is not a module of ours is an error
  seen: Set[str] = set()
  pending = [name for entry in entry_points for name in _with_parents(entry)]
  while pending:
    module = pending.pop()
    if module in seen or not _is_ours(module):
      continue
    tree, is_package = _parse(module, root)
    seen.add(module)
    for name in _imported_names(tree, module, is_package):
      if _is_ours(name) and name not in seen and _locate(name, root) is not None:
        pending.extend(_with_parents(name))
  return sorted(seen)


def _digest(modules: Iterable[str], root: str) -> str:
  digest = hashlib.sha256()
  for module in modules:
    tree, _ = _parse(module, root)
    digest.update(module.encode() + b"\0")
    digest.update(ast.dump(_without_docstrings(tree)).encode() + b"\0")
  return digest.hexdigest()[:_DIGITS]


def of(*entry_points: str, root: str = PROJECT_ROOT) -> str:
  """Changes whenever the code of `entry_points` or of a project module they
  import (transitively) changes; comments and docstrings do not count.

  Modules are named relative to `root` (the folder holding this project's
  packages), so two checkouts of the same code in different folders get the
  same fingerprint.
  """
  return _digest(imported_modules(*entry_points, root=root), root)


def of_file(path: str) -> str:
  """Changes whenever the content of the file at `path` does."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:_DIGITS]
