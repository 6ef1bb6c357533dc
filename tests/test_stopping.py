"""tlgan.stopping in this process: a signal becomes a request that `check` turns into `Stopped`, handlers are
restored after the block, and an ignored SIGHUP (nohup) stays ignored. Real processes: tests/test_signals.py."""

import os
import signal

import pytest

from tlgan import stopping


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_is_a_request_that_check_raises(sig):
  if sig == signal.SIGHUP:  # as in a terminal, even when the suite runs under nohup
    ignored = signal.signal(sig, signal.SIG_DFL)
  before = signal.getsignal(sig)
  with stopping.handlers():
    stopping.check("warming up")  # no request yet: nothing happens
    os.kill(os.getpid(), sig)
    assert stopping.requested() == sig.name
    with pytest.raises(stopping.Stopped, match=f"{sig.name} received while evaluating"):
      stopping.check("evaluating")
  assert signal.getsignal(sig) == before  # the block's handlers are gone
  if sig == signal.SIGHUP:
    signal.signal(sig, ignored)


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
