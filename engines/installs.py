"""Pinned engine distributions, installed into the project's `.tools/` on first use.

Each install is checked against the checksums pinned in `engines/pins/`, written to a
temporary folder and renamed into place when complete, and marked with a stamp of
its pins: a later call with the same pins does nothing, so it needs no network, and
an interrupted install is started again rather than used half-done.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from typing import Dict, List

from common import errors
from common import progress

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pins")
# Where engines are installed and their clusters keep state; RECSYS_TOOLS_DIR moves it.
TOOLS_DIR = os.environ.get("RECSYS_TOOLS_DIR") or os.path.join(PROJECT_DIR, ".tools")
# Pinned so that `mvn` without a project resolves the same plugin everywhere.
_MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
_STAMP = ".installed"


class InstallError(errors.RecsysError):
  """A pinned engine could not be installed: a tool missing, a download refused or a
  checksum that does not match."""


def require_command(name: str, install_hint: str) -> str:
  """The path of the command `name`, or an InstallError saying what to install."""
  path = shutil.which(name)
  if path is None:
    raise InstallError(f"`{name}` not found on PATH: {install_hint}")
  return path


def require_java() -> str:
  """The `java` command: Flink and Beam's job server are JVM programs."""
  return require_command("java", "install a Java 17 runtime (Debian: apt-get install "
                         "openjdk-17-jre-headless) and run the command again")


def _pins_digest(*paths: str) -> str:
  digest = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def _installed(target: str, digest: str) -> bool:
  try:
    with open(os.path.join(target, _STAMP)) as f:
      return f.read().strip() == digest
  except OSError:
    return False


def _run(command: List[str], what: str) -> None:
  result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
  if result.returncode:
    tail = "\n".join(result.stdout.strip().splitlines()[-15:])
    raise InstallError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
                       f"{tail}")


def _replace(staging: str, target: str, digest: str) -> None:
  with open(os.path.join(staging, _STAMP), "w") as f:
    f.write(digest + "\n")
  shutil.rmtree(target, ignore_errors=True)
  os.replace(staging, target)


def _uv() -> str:
  """uv as `make` installs it (.tools/uv), else one on PATH."""
  bundled = os.path.join(PROJECT_DIR, ".tools", "uv", "bin", "uv")
  if os.access(bundled, os.X_OK):
    return bundled
  return require_command("uv", "run `make env` first, which installs uv into .tools/uv")


def python_distribution(requirements: str, target: str, what: str) -> str:
  """Installs the packages pinned with hashes in `requirements` into `target`, without
  their dependencies and outside the project's environment; returns `target`."""
  digest = _pins_digest(requirements)
  if _installed(target, digest):
    return target
  progress.report("install", f"{what} from PyPI into {target} (first use)")
  staging = f"{target}.partial"
  shutil.rmtree(staging, ignore_errors=True)
  _run([_uv(), "pip", "install", "--quiet", "--python", sys.executable, "--target", staging,
        "--no-deps", "--require-hashes", "-r", requirements], f"installing {what}")
  _replace(staging, target, digest)
  return target


def read_checksums(path: str) -> Dict[str, str]:
  """`sha256sum` output: file name -> hex digest."""
  checksums = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        digest, name = line.split()
        checksums[name.lstrip("*")] = digest
  return checksums


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify_checksums(folder: str, checksums: Dict[str, str]) -> None:
  """InstallError naming the first jar in `folder` that is missing, unexpected or
  different from its pinned checksum."""
  present = {name for name in os.listdir(folder) if name.endswith(".jar")}
  for name in sorted(set(checksums) - present):
    raise InstallError(f"{name} is pinned but Maven did not deliver it to {folder}")
  for name in sorted(present - set(checksums)):
    raise InstallError(f"{os.path.join(folder, name)} is not pinned: update "
                       "engines/pins after checking where it comes from")
  for name in sorted(present):
    actual = _sha256(os.path.join(folder, name))
    if actual != checksums[name]:
      raise InstallError(f"{os.path.join(folder, name)}: sha256 {actual} differs from "
                         f"the pinned {checksums[name]}")


def maven_jars(pom: str, checksums_file: str, target: str, what: str) -> str:
  """The jars `pom` depends on (runtime scope, transitively), copied by Maven into
  `target` and checked against `checksums_file`; returns `target`."""
  digest = _pins_digest(pom, checksums_file)
  if _installed(target, digest):
    return target
  mvn = require_command("mvn", "install Maven (Debian: apt-get install maven)")
  progress.report("install", f"{what} from Maven Central into {target} (first use)")
  staging = f"{target}.partial"
  shutil.rmtree(staging, ignore_errors=True)
  # --strict-checksums: Maven refuses a jar whose repository checksum differs.
  _run([mvn, "--batch-mode", "--quiet", "--strict-checksums", "--file", pom,
        f"{_MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime"], f"fetching {what}")
  verify_checksums(staging, read_checksums(checksums_file))
  _replace(staging, target, digest)
  return target


def java_library(sources: str, classpath: List[str], jar: str, what: str) -> str:
  """The Java sources under `sources` compiled against the jars of `classpath` into
  `jar`, alone in its folder, with the other files there (such as META-INF/services) as
  its resources; compiled again only when a source or the class path changes. Returns
  `jar`."""
  files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(sources)
                 for name in names)
  digest = hashlib.sha256((_pins_digest(*files) + "\n".join(
      os.path.basename(entry) for entry in classpath)).encode()).hexdigest()
  target = os.path.dirname(jar)
  if _installed(target, digest):
    return jar
  javac = require_command("javac", "install a Java 17 JDK (Debian: apt-get install "
                          "openjdk-17-jdk-headless)")
  progress.report("install", f"{what}: compiling {sources} into {jar}")
  staging = f"{target}.partial"
  shutil.rmtree(staging, ignore_errors=True)
  classes = os.path.join(staging, "classes")
  java_files = [path for path in files if path.endswith(".java")]
  _run([javac, "--release", "17", "-nowarn", "-cp", os.pathsep.join(classpath),
        "-d", classes, *java_files], f"compiling {what}")
  with zipfile.ZipFile(os.path.join(staging, os.path.basename(jar)), "w") as archive:
    for folder, _, names in os.walk(classes):
      for name in names:
        path = os.path.join(folder, name)
        archive.write(path, os.path.relpath(path, classes))
    for path in files:
      if not path.endswith(".java"):
        archive.write(path, os.path.relpath(path, sources))
  shutil.rmtree(classes)
  _replace(staging, target, digest)
  return jar
