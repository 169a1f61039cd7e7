"""What a run loads before its first stage."""
import ast

from common import code_fingerprint
from tests.conftest import REPO

# Compiles pipelines for Vertex AI: TFX's Google Cloud extensions are its business.
_MAY_IMPORT_TFX_V1 = {"pipeline/kubeflow_v2_runner.py"}


def _imports_tfx_v1(tree: ast.AST) -> bool:
  for node in ast.walk(tree):
    if isinstance(node, ast.Import) and any(
        alias.name == "tfx.v1" or alias.name.startswith("tfx.v1.") for alias in node.names):
      return True
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module == "tfx.v1" or node.module.startswith("tfx.v1.")
        or (node.module == "tfx" and any(alias.name == "v1" for alias in node.names))):
      return True
  return False


def test_only_the_vertex_compiler_imports_tfx_v1():
  """`tfx.v1` loads TFX's Google Cloud extensions, the Vertex AI client among them:
  about 8 s of every process's start on 2 cores (docs/performance.md). The
  pipeline takes TFX's classes from the modules tfx.v1 re-exports them from."""
  offenders = []
  for package in (*code_fingerprint.PROJECT_PACKAGES, "tests", "bench"):
    for path in sorted((REPO / package).rglob("*.py")):
      name = str(path.relative_to(REPO))
      if name not in _MAY_IMPORT_TFX_V1 and _imports_tfx_v1(ast.parse(path.read_text())):
        offenders.append(name)
  assert not offenders
  assert _imports_tfx_v1(ast.parse((REPO / "pipeline/kubeflow_v2_runner.py").read_text()))
