"""scripts/private_study_parallel.sh passes a stop signal on to every process it started, starts no new one,
writes the table from what finished, and exits with the processes' status (3: run the same command to go on).
The study processes are stand-ins (PYTHON points at a small script) that record the signals they receive."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import as_a_terminal_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAND_IN = textwrap.dedent("""\
    #!{python}
    # stands in for `python -m experiments.main ...`; `python -` (the script's table step) runs the real Python
    import os, signal, sys, time
    if sys.argv[1:2] == ["-"]:
        os.execv({python!r}, [{python!r}] + sys.argv[1:])
    workdir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir="))
    name = os.path.basename(workdir)
    received = []
    def on_signal(number, frame):
        received.append(signal.Signals(number).name)
        with open(os.path.join({log!r}, name + ".signals"), "a") as f:
            f.write(signal.Signals(number).name + "\\n")
        if len(received) == 1:
            sys.exit(3)  # the first signal: saved, more to do
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    if name == "seed0":  # the public pretraining the script waits for
        os.makedirs(os.path.join(workdir, "pretrain"), exist_ok=True)
        open(os.path.join(workdir, "pretrain", "summary.json"), "w").write("{{}}")
    open(os.path.join({log!r}, name + ".started"), "w").write(str(os.getpid()))
    while True:
        time.sleep(0.05)
    """)


@pytest.fixture
def start(tmp_path):
  """start(seeds) -> (the script's process, the stand-ins' log folder); whatever is left is killed after."""
  started = []
  yield lambda seeds="0 1": started.append(_start(tmp_path, seeds)) or started[-1]
  for proc, log in started:
    if proc.poll() is None:
      proc.kill()
    for path in log.glob("*.started"):
      try:
        os.kill(int(path.read_text()), signal.SIGKILL)
      except (OSError, ValueError):
        pass


def _start(tmp_path, seeds):
  log = tmp_path / "log"
  log.mkdir()
  stand_in = tmp_path / "python"
  stand_in.write_text(STAND_IN.format(python=sys.executable, log=str(log)))
  stand_in.chmod(0o755)
  env = {**os.environ, "PYTHON": str(stand_in), "SEEDS": seeds, "PYTHONPATH": ROOT}
  proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "private_study_parallel.sh"), str(tmp_path / "w")],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=as_a_terminal_child)  # bash can't trap a signal it was started ignoring
  return proc, log


def _wait_for(paths, proc, timeout=60):
  deadline = time.time() + timeout
  while not all(p.exists() for p in paths):
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline, f"not started: {[p.name for p in paths if not p.exists()]}"
    time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_reaches_every_process(tmp_path, start, sig):
  proc, log = start()
  names = ("fashion", "seed0", "seed1")
  _wait_for([log / f"{n}.started" for n in names], proc)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=60)
  for n in names:
    assert (log / f"{n}.signals").read_text().split() == [sig.name], n
  assert proc.returncode == 3, err
  assert f"{sig.name[3:]} received: passed on to 3 process(es)" in err
  assert (tmp_path / "w" / "results.md").exists()  # the table of what finished (here: nothing yet)
  assert not [f for f in os.listdir(tmp_path / "w") if f.startswith(".") or f.endswith(".tmp")]


def test_a_stop_before_the_pretraining_starts_no_other_seed(tmp_path, start):
  """Stopped while seed 5 (the first) pretrains: seeds 1 and 2 are never started."""
  proc, log = start("5 1 2")  # seed5's stand-in never writes the pretraining summary
  _wait_for([log / "fashion.started", log / "seed5.started"], proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 3, err
  assert sorted(p.name for p in log.iterdir()) == ["fashion.signals", "fashion.started", "seed5.signals",
                                                   "seed5.started"]
