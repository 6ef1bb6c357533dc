"""Fixtures and process set-up for every test (quiet TF, torch before TensorFlow); helpers: tests/helpers.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as experiments/main.py: no Keras import (2 s per process)

# One JAX compilation cache for the whole test session, shared by the pytest workers and every process a test
# starts (the CLI tests compile the same steps dozens of times: 8 s each on 2 cores, 0.3 s from the cache). It is
# keyed by the program, JAX's version and XLA_FLAGS, so a cached executable is the one a compile would give; a
# fresh folder per session (removed at its end) keeps machines and sessions apart. Every compile is kept, even the
# 0.1-0.4 s ones of small eager operations, which each CLI process would otherwise repeat (2.4 s per run).
import tempfile  # noqa: E402

_CACHE = os.path.join(tempfile.gettempdir(), f"tlgan-test-jax-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# torchvision (0.29.1) segfaults when it is imported after TensorFlow (2.21) in one process, while the other
# order works: the test oracles import torch and torchvision first, whenever they are installed.
try:
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:
  pass

# The test processes themselves compile with LLVM at optimisation level 0: their programs are tiny and run a few
# times, so compiling is most of their cost (35% less CPU for the compile-bound tests on 2 cores). The processes
# the tests start (the CLI, workers) get the caller's XLA_FLAGS unchanged and compile as a user's run does. XLA
# reads XLA_FLAGS once, at its first compile: one trivial program is compiled here under the extended value, which
# is then put back. JAX keys its cache by the XLA_FLAGS variable as it is at each compile, so these executables go
# to their own folder. A level already named in XLA_FLAGS (e.g. 3, XLA's default) is left as it is.
from tests.helpers import compile_fast_env  # noqa: E402

_IN_PROCESS_CACHE = _CACHE + "-in-process"
_given = os.environ.get("XLA_FLAGS")
os.environ["XLA_FLAGS"] = compile_fast_env()["XLA_FLAGS"]  # (a level already named stays)
import jax  # noqa: E402

if os.environ["JAX_COMPILATION_CACHE_DIR"] == _CACHE:
  jax.config.update("jax_compilation_cache_dir", _IN_PROCESS_CACHE)
jax.jit(lambda x: x + 1)(0)
if _given is None:
  del os.environ["XLA_FLAGS"]
else:
  os.environ["XLA_FLAGS"] = _given

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  if "PYTEST_XDIST_WORKER" not in os.environ and os.environ["JAX_COMPILATION_CACHE_DIR"] == _CACHE:
    import shutil
    shutil.rmtree(_CACHE, ignore_errors=True)
    shutil.rmtree(_IN_PROCESS_CACHE, ignore_errors=True)


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
