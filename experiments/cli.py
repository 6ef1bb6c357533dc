"""What every tlgan command-line tool does with problems and stop signals (experiments.main's exit statuses):
a `UserError`, or a file that cannot be written (a full disk, a read-only folder), is one `error:` line and
status 2; SIGTERM, SIGINT or SIGHUP stop the work at its next safe point (`tlgan.stopping`) with one
`stopped:` line and status 3; a second signal exits at once (128 + N)."""

import errno
import os
import sys
import threading
import warnings
from typing import Callable

from tlgan import stopping


FILESYSTEM_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def guarded(work: Callable[[], int], verbose: bool = False) -> int:
  """`work()`'s exit status, or 2 / 3 after printing its `UserError` / `Stopped` as one line."""
  from tlgan.errors import CheckpointWriteError, UserError
  try:
    return work()
  except CheckpointWriteError as e:
    _last_line(f"error: {e}")
    _exit_now(2)
  except UserError as e:
    if verbose:
      raise
    _last_line(f"error: {e}")
    return 2
  except OSError as e:  # a full disk or a read-only folder while writing the other outputs
    if verbose or e.errno not in FILESYSTEM_FAULTS:
      raise
    what = f"cannot write {e.filename}" if e.filename else "writing the run's files failed"
    _last_line(f"error: {what} ({e.strerror}): free space or make the folder writable, then run the same command "
               "(checkpoints already written are kept)")
    _exit_now(2)
  except stopping.Stopped as e:
    _last_line(f"stopped: {e}; files already written are kept: run the same command to continue")
    return stopping.EXIT_STOPPED


def _last_line(text: str) -> None:
  """Prints the run's final line and silences warnings for the rest of the process: what the interpreter's
  shutdown collects (e.g. a coroutine that a library's abandoned asynchronous read never awaited, after a damaged
  checkpoint) must not print a warning below the one line."""
  print(text, file=sys.stderr)
  warnings.simplefilter("ignore")


def _thread_failed(args) -> None:
  """A library's background thread that dies (TensorBoard's writer on a full disk) is one log line, not a
  traceback among the run's output; the main thread reports what failed."""
  import logging
  if args.exc_type is SystemExit:
    return
  from tlgan.errors import first_line
  logging.error("background thread %s failed: %s: %s", getattr(args.thread, "name", "?"), args.exc_type.__name__,
                first_line(args.exc_value, 200))


def _exit_now(status: int) -> None:
  """Exits without waiting for other threads: after a failed write, Orbax's writer threads wait minutes for
  signals that never come, and the interpreter would wait for them."""
  import logging
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  logging.shutdown()
  os._exit(status)


def run(main: Callable, flags_parser=None) -> None:
  """absl's app.run(main) with the stop handlers installed for the rest of the process."""
  from absl import app
  stopping.install()
  threading.excepthook = _thread_failed
  if flags_parser is None:
    app.run(main)
  else:
    app.run(main, flags_parser=flags_parser)
