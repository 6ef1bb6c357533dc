"""Layers run one way: experiments -> configs -> tlgan.trainers -> the tlgan library. The library never
imports a trainer, and no tlgan module imports `configs`, `experiments` or `benchmarks`, not even inside a
function (checked on the source), and each imports with those packages made unimportable (checked by doing it)."""

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

TLGAN = os.path.join(REPO, "tlgan")
OUTSIDE = ("configs", "experiments", "benchmarks", "tests")


def _modules():
  for root, _, files in os.walk(TLGAN):
    for name in sorted(files):
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].replace(os.sep, ".")
        yield rel[:-len(".__init__")] if rel.endswith(".__init__") else rel, os.path.join(root, name)


def _imported_names(path):
  """Every module an import statement in the file names, at any depth (function-level imports too)."""
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _is_library(module):
  return not module.startswith("tlgan.trainers")


@pytest.mark.parametrize("module,path", list(_modules()), ids=[m for m, _ in _modules()])
def test_source_imports_run_one_way(module, path):
  for name in _imported_names(path):
    assert name.split(".")[0] not in OUTSIDE, f"{module} imports {name}: tlgan must not need {name.split('.')[0]}"
    if _is_library(module):
      assert not name.startswith("tlgan.trainers"), f"library module {module} imports the trainer {name}"


_BLOCKER = """
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def __init__(self, prefixes): self.prefixes = prefixes
  def find_spec(self, name, path=None, target=None):
    if any(name == p or name.startswith(p + ".") for p in self.prefixes):
      raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block(sys.argv[1].split(",")))
for module in sys.argv[2].split(","):
  importlib.import_module(module)
print("imported", len(sys.argv[2].split(",")))
"""


@pytest.mark.parametrize("layer", ["library", "trainers"])
def test_each_module_imports_without_the_layers_above(layer):
  modules = [m for m, _ in _modules() if _is_library(m) == (layer == "library")]
  blocked = list(OUTSIDE) + (["tlgan.trainers"] if layer == "library" else [])
  result = subprocess.run([sys.executable, "-c", _BLOCKER, ",".join(blocked), ",".join(modules)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"imported {len(modules)}" in result.stdout
