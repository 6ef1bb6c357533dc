"""Stop requests: how every phase of a run reacts to SIGTERM, SIGINT (Ctrl-C) and SIGHUP.

The first signal only records a request. The training loop reads it after each step (it saves a checkpoint
there and returns with status 'preempted'); long work outside the step (evaluation, sample generation, feature
extraction, reading data, compiling) calls `check(what)` between its units of work, which raises `Stopped`, so
a run stops within seconds in any phase, keeping every checkpoint already written. The entry point turns
`Stopped` and a preempted loop into exit status 3: "stopped, more to do, run the same command to continue".

A second signal exits at once, with one line on stderr and status 128 + the signal's number (130 for
Ctrl-C), without a traceback and without saving: what was saved before stays (checkpoints are written to a
temporary folder and renamed when complete). SIGHUP is handled like SIGTERM (a closed terminal or SSH session
stops the run cleanly), unless it is ignored (`nohup`), which is left as it is.

The command-line tools install the handlers for the whole process (`install()`); `loop.run` installs them for
its duration (`handlers()`) when code calls a trainer directly. Only the main thread can.

A multi-process run stops where all its processes agree: a signal often reaches one host only (a preemption
notice), and a process that left alone would leave the others waiting in a collective. There `check` never
raises; the training loop puts every process's request into each step (a max over all devices, read one step
later, so it costs no wait) and all processes save the same step and exit 3. A request outside the training
loop waits for the next step, or for the end of the run. `jax.distributed.initialize` installs JAX's own
SIGTERM notifier (its preemption sync point) over these handlers; `reclaim()` puts them back, and the loop
honours the sync point too, for notices that reach JAX some other way.
"""

import contextlib
import os
import signal
import sys
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_STOPPED = 3  # the documented status of a run stopped cleanly: rerun the same command to continue

_requested: Optional[str] = None
_depth = 0


class Stopped(Exception):
  """A stop was requested (by `signal_name`) while `what` was running; nothing half-done was kept."""

  def __init__(self, signal_name: str, what: str):
    super().__init__(f"{signal_name} received while {what}")
    self.signal_name, self.what = signal_name, what


def requested() -> Optional[str]:
  """The name of the signal that asked this process to stop ('SIGTERM', ...), or None."""
  return _requested


def requested_number() -> int:
  """The requesting signal's number, 0 without a request: this process's vote in a multi-process run."""
  return 0 if _requested is None else int(signal.Signals[_requested])


def check(what: str) -> None:
  """Raises `Stopped` when a stop was requested; `what` names the work being abandoned ('evaluating'). In a
  multi-process run it never raises: the processes stop together, where the training loop's vote says."""
  if _requested is None:
    return
  import jax
  if jax.process_count() > 1:
    return
  raise Stopped(_requested, what)


def _handle(signum, frame) -> None:
  global _requested
  name = signal.Signals(signum).name
  try:
    sys.stderr.flush()  # what the run printed before comes first
  except Exception:  # a signal that lands inside a write to stderr: the order is all that is lost
    pass
  if _requested is not None:  # the second signal: at once, no traceback, nothing more written
    os.write(sys.stderr.fileno(), (f"\nerror: second stop signal ({name} after {_requested}): exiting at once "
                                   "without saving; checkpoints already written are kept\n").encode())
    os._exit(128 + signum)
  _requested = name
  os.write(sys.stderr.fileno(), (f"\n{name} received: stopping at the next safe point (a checkpoint is saved "
                                 "when training); send it again to exit at once\n").encode())


def _install() -> dict:
  """Installs `_handle` for every stop signal (not SIGHUP when it is ignored: `nohup` asked the run to outlive
  its terminal); returns the handlers it replaced."""
  global _requested
  _requested = None
  previous = {}
  for sig in SIGNALS:
    current = signal.getsignal(sig)
    if sig == signal.SIGHUP and current == signal.SIG_IGN:
      continue
    previous[sig] = signal.signal(sig, _handle)
  return previous


def reclaim() -> None:
  """Puts this module's handlers back where something else replaced them below Python (the C++ SIGTERM
  notifier `jax.distributed.initialize` installs: Python still reports its own handler, but no longer runs
  it)."""
  if threading.current_thread() is threading.main_thread():
    for sig in SIGNALS:
      if signal.getsignal(sig) is _handle:
        signal.signal(sig, _handle)


def install() -> None:
  """Installs the stop handlers for the rest of the process: the command-line tools, so that a signal while
  flags are parsed or the interpreter shuts down is handled too. Does nothing outside the main thread."""
  global _depth
  if threading.current_thread() is threading.main_thread() and _depth == 0:
    _install()
    _depth = 1  # for good: no block below installs or restores again


@contextlib.contextmanager
def handlers():
  """Installs the stop handlers for the duration of the block when nothing did before (code that calls a
  trainer itself); the previous handlers come back after it. Handlers installed before (`install()`) are
  put back in force (`reclaim`): research code may have called `jax.distributed.initialize` after them."""
  global _depth, _requested
  if threading.current_thread() is not threading.main_thread():  # e.g. a notebook worker: no handlers
    yield
    return
  previous = {}
  if _depth == 0:
    previous = _install()
  else:  # installed before, perhaps before jax.distributed.initialize put its notifier over them
    reclaim()
  _depth += 1
  try:
    yield
  finally:
    _depth -= 1
    if _depth == 0:  # outside every block a request means nothing: the next block starts without it
      for sig, handler in previous.items():
        signal.signal(sig, handler)
      _requested = None


def run_child(cmd) -> int:
  """Runs `cmd` (e.g. another `experiments.main`) to its end and returns its exit status, passing each stop
  signal this process receives on to it, once: the child saves and exits 3 (or, at a second signal, exits at
  once). The child has its own session, so a Ctrl-C in the terminal reaches it through this process only (the
  terminal would otherwise deliver it to both, and the child would take it for the second, exit-at-once one).
  Outside the main thread (no handlers can be installed there) it just waits."""
  import subprocess
  proc = subprocess.Popen(cmd, start_new_session=True)
  if threading.current_thread() is not threading.main_thread():
    return proc.wait()
  forward = lambda signum, frame: proc.send_signal(signum)
  previous = {sig: signal.signal(sig, forward) for sig in SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
  try:
    # Waits in short slices, not one blocking waitpid: the kernel may deliver the signal to another thread
    # (JAX's, a test's), and then the main thread's waitpid is never interrupted, so Python would not run the
    # forwarding handler until the child ended, which without the signal is never (seen: a hung test).
    while True:
      try:
        return proc.wait(timeout=0.1)
      except subprocess.TimeoutExpired:
        pass
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
