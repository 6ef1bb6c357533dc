"""Shared test helpers: quiet TF, tiny data, and running the CLI as a user would."""

import hashlib
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torchvision (0.29.1) segfaults when it is imported after TensorFlow (2.21) in one process, while the other
# order works: the test oracles import torch and torchvision first, whenever they are installed.
try:
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:
  pass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_hash(path: str) -> str:
  """A hash of every file name and content under `path` (to prove a workdir was not touched)."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def run_cli(*args, env=None, timeout=300):
  """Runs `python -m experiments.main ARGS` in the repo; returns the CompletedProcess."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def smoke_config():
  from configs import gan
  return gan.get_config("smoke")


def override(config, **overrides):
  """Sets dotted fields: override(config, **{"model.width": 8}). Returns the config."""
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return config
