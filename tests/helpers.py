"""Helpers shared by the test modules (imported as `from tests.helpers import ...`; fixtures live in conftest).

Running the CLI as a user would, proving a folder untouched, tiny GAN configs on TFDS mock data, and starting,
killing and watching training processes."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Reference features of mock data go here, never into the user's cache.
CACHE_DIR = os.path.join(tempfile.gettempdir(), f"tlgan-test-cache-{os.getpid()}")


def tree_hash(path: str) -> str:
  """A hash of every file name, size, modification time and content under `path` (to prove a workdir was not
  touched). Files over 1 MiB (weights) are hashed by name, size and modification time in nanoseconds only, which
  any write changes: hashing their contents cost the bad-input table ~0.5 s per row."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      st = os.stat(full)
      h.update(f"{os.path.relpath(full, path)} {st.st_size} {st.st_mtime_ns}".encode())
      if st.st_size <= 2 ** 20:
        with open(full, "rb") as f:
          h.update(f.read())
  return h.hexdigest()


# LLVM at optimisation level 0: the pytest processes (conftest.py), and the processes a test starts whose programs
# are compiled and then run only a few steps (a smoke CLI run, a worker comparing device layouts): ~35% less CPU.
# Not for runs that must run long or whose numbers are compared with a default-compiled process.
COMPILE_LEVEL_0 = "--xla_backend_optimization_level=0"


def compile_fast_env(env=None) -> dict:
  """`env` (or nothing) with COMPILE_LEVEL_0 added to its XLA_FLAGS (or the caller's)."""
  env = dict(env or {})
  flags = env.get("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = flags if "xla_backend_optimization_level" in flags else f"{flags} {COMPILE_LEVEL_0}".strip()
  return env


def run_cli(*args, env=None, timeout=300, module="experiments.main"):
  """Runs `python -m MODULE ARGS` in the repo; returns the CompletedProcess."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def override(config, **overrides):
  """Sets dotted fields: override(config, **{"model.width": 8}). Returns the config."""
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def smoke_gan(num_steps=4, **overrides):
  """configs/gan.py:smoke on TFDS mock data only (even where the Debian files exist), caching nothing."""
  from configs import gan
  config = gan.get_config("smoke")
  config.num_steps = num_steps
  config.data.manual_dir = "/nonexistent"
  config.eval.cache_dir = CACHE_DIR
  return override(config, **overrides)


def train_gan(config, workdir):
  """The GAN trainer in this process, on 64 mock examples per split."""
  import tensorflow_datasets as tfds
  from tlgan.trainers import gan as gan_trainer
  with tfds.testing.mock_data(num_examples=64):
    return gan_trainer.train_and_evaluate(config, str(workdir))


# ------------------------------------------------------------------------------- training processes


def as_a_terminal_child():
  """A Popen `preexec_fn`: SIGINT and SIGHUP as a terminal's child has them (default action), even when these
  tests run under nohup or as a background job, which start every process with both ignored (and a shell
  started with a signal ignored can never trap it)."""
  for sig in (signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_DFL)


def start(workdir, args, env=None, log=None, terminal=False):
  """Starts `python -m experiments.main --workdir=WORKDIR ARGS`, its stderr appended to `log` (WORKDIR.log).
  `terminal`: SIGINT and SIGHUP as a shell's child has them, even when these tests run under nohup."""
  log = open(log or os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "a")
  proc = subprocess.Popen([sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log,
                          preexec_fn=as_a_terminal_child if terminal else None)
  STARTED.append(proc)
  return proc


STARTED = []  # every process `start` made: conftest kills those still running when their test ends


def kill_leftovers():
  while STARTED:
    proc = STARTED.pop()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def checkpoint_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f"the run ended (status {proc.returncode}) before the awaited moment"
    assert time.time() < deadline
    time.sleep(0.02)


def kill_then_finish(workdir, args, num_steps, seed=0, kills=1):
  """kill -9 (`kills` times: once by default, which is what CI can afford), each at a random moment after a new
  checkpoint, then let another process finish."""
  rng = random.Random(seed)
  for _ in range(kills):
    before = (checkpoint_steps(workdir) or [0])[-1]
    proc = start(workdir, args)
    wait_for(lambda: (checkpoint_steps(workdir) or [0])[-1] > before, proc)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.kill()
    proc.wait()
  assert checkpoint_steps(workdir)[-1] < num_steps  # the kills did land mid-run
  assert start(workdir, args).wait(timeout=300) == 0


# ------------------------------------------------------------------------------- the interrupted GAN run

# The run that the reliability tests interrupt, damage and compare with (real offline Fashion-MNIST, the
# smoke-sized model): 200-400 steps/s on 2 cores, so it lasts long enough (4-8 s) to be hit mid-way, with a
# checkpoint every ~0.5 s. The first 6,000 training images (2 epochs in 1,500 steps): decoding all 60,000 cost
# each of these ~30 processes 3 more CPU-seconds.
STEPS, EVERY = 1500, 125
GAN = ["--config=configs/gan.py:smoke", f"--config.num_steps={STEPS}", f"--config.checkpoint_every={EVERY}",
       "--config.log_every=125", "--config.sample_every=100000", "--config.eval.enabled=false",
       "--config.data.split=train[:6000]"]


def with_config(args, **fields):
  """`args` with `--config.FIELD=VALUE` for each of `fields`, replacing one the args had: with_config(GAN,
  num_steps=30)."""
  given = tuple(f"--config.{field}=" for field in fields)
  return [a for a in args if not a.startswith(given)] + [f"--config.{k}={v}" for k, v in fields.items()]


def reference_run(tmp_path_factory, args=GAN) -> str:
  """The uninterrupted run (a module fixture's body): its workdir."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  result = run_cli(f"--workdir={workdir}", *args)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def damage(workdir, step, how):
  """Truncates ('truncate') or deletes the largest data file of checkpoint `step`."""
  import glob
  files = sorted(glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "*"), recursive=True))
  files = [f for f in files if os.path.isfile(f)]
  victim = max(files, key=os.path.getsize)  # the array data
  if how == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  else:
    os.remove(victim)
