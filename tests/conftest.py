"""Fixtures and process set-up for every test (quiet TF, torch before TensorFlow); helpers: tests/helpers.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torchvision (0.29.1) segfaults when it is imported after TensorFlow (2.21) in one process, while the other
# order works: the test oracles import torch and torchvision first, whenever they are installed.
try:
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:
  pass

import pytest



@pytest.fixture(autouse=True)
def _no_leftover_processes():
  """A test that fails while a training process it started still runs must not leave it running (it would
  hold a core, or a workdir, for the rest of the suite)."""
  yield
  from tests.helpers import kill_leftovers
  kill_leftovers()


@pytest.fixture
def smoke_config():
  from configs import gan
  return gan.get_config("smoke")
