"""tlgan.stopping in this process: a signal becomes a request that `check` turns into `Stopped`, handlers are
restored after the block, and an ignored SIGHUP (nohup) stays ignored. Real processes: tests/test_signals.py."""

import contextlib
import os
import signal
import sys
import threading
import time

import pytest

from tlgan import stopping


@contextlib.contextmanager
def as_in_a_terminal(sig):
  """SIGHUP and SIGINT as a terminal's process has them (default action, Python's KeyboardInterrupt), even when
  the suite runs under nohup or as a background job (which ignore them); put back after."""
  terminal = {signal.SIGHUP: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
  previous = signal.signal(sig, terminal[sig]) if sig in terminal else None
  try:
    yield
  finally:
    if previous is not None:
      signal.signal(sig, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_is_a_request_that_check_raises(sig):
  with as_in_a_terminal(sig):
    before = signal.getsignal(sig)
    with stopping.handlers():
      stopping.check("warming up")  # no request yet: nothing happens
      os.kill(os.getpid(), sig)
      assert stopping.requested() == sig.name
      with pytest.raises(stopping.Stopped, match=f"{sig.name} received while evaluating"):
        stopping.check("evaluating")
    assert signal.getsignal(sig) == before  # the block's handlers are gone


def test_a_request_ends_with_its_block():
  with stopping.handlers():
    os.kill(os.getpid(), signal.SIGTERM)
  assert stopping.requested() is None
  stopping.check("the next run's data")  # (code that calls trainers one after the other)
  with stopping.handlers():
    assert stopping.requested() is None
    stopping.check("training")


def test_nohup_keeps_sighup_ignored():
  previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
  try:
    with stopping.handlers():
      assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
      assert signal.getsignal(signal.SIGTERM) == stopping._handle
  finally:
    signal.signal(signal.SIGHUP, previous)


def test_a_block_puts_back_handlers_installed_before_it(monkeypatch):
  """Research code calls install(), then jax.distributed.initialize (whose C++ notifier hides SIGTERM from
  Python while Python still reports tlgan's handler), then a trainer: the trainer's block must re-install."""
  monkeypatch.setattr(stopping, "_depth", 1)  # as after install()
  monkeypatch.setattr(signal, "getsignal", lambda s: stopping._handle)  # what Python reports over the notifier
  installed = []
  monkeypatch.setattr(signal, "signal", lambda s, handler: installed.append((s, handler)))
  with stopping.handlers():
    pass
  assert sorted(installed) == sorted((s, stopping._handle) for s in stopping.SIGNALS)


CHILD = """\
import os, signal, sys, time
log = sys.argv[1]
def on_signal(number, frame):
    with open(log, "a") as f:
        f.write(signal.Signals(number).name + "\\n")
    sys.exit(3)  # saved, more to do
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
open(log + ".started", "w").write(str(os.getsid(0)))
deadline = time.time() + 30  # never forever: a signal that is not passed on fails the test, not hangs it
while time.time() < deadline:
    time.sleep(0.05)
sys.exit(4)
"""


@pytest.mark.parametrize("to_thread", [False, True], ids=["to-process", "to-other-thread"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_child_passes_a_stop_signal_on_once_and_returns_the_childs_status(tmp_path, sig, to_thread):
  """A study that runs `experiments.main` as a child (experiments/gan_transfer.py): a stop signal to it reaches
  the child once (which saves and exits 3), in the child's own session, and the handlers are restored after.
  Also when the kernel hands the signal to a thread other than the main one (JAX's threads, say), which does not
  interrupt the main thread's wait for the child."""
  log = tmp_path / "signals"

  def signal_once_started():
    deadline = time.time() + 60
    while not (tmp_path / "signals.started").exists() and time.time() < deadline:
      time.sleep(0.02)
    if to_thread:
      signal.pthread_kill(threading.get_ident(), sig)
    else:
      os.kill(os.getpid(), sig)

  with as_in_a_terminal(sig):
    before = signal.getsignal(sig)
    threading.Thread(target=signal_once_started, daemon=True).start()
    status = stopping.run_child([sys.executable, "-c", CHILD, str(log)])
    assert status == 3
    assert log.read_text().split() == [sig.name]
    assert int((tmp_path / "signals.started").read_text()) != os.getsid(0)  # its own session
    assert signal.getsignal(sig) == before
