"""What every tlgan command-line tool does with problems and stop signals (experiments.main's exit statuses):
a `UserError` is one `error:` line and status 2; SIGTERM, SIGINT or SIGHUP stop the work at its next safe
point (`tlgan.stopping`) with one `stopped:` line and status 3; a second signal exits at once (128 + N)."""

import sys
from typing import Callable

from tlgan import stopping


def guarded(work: Callable[[], int], verbose: bool = False) -> int:
  """`work()`'s exit status, or 2 / 3 after printing its `UserError` / `Stopped` as one line."""
  from tlgan.errors import UserError
  try:
    return work()
  except UserError as e:
    if verbose:
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2
  except stopping.Stopped as e:
    print(f"stopped: {e}; files already written are kept: run the same command to continue", file=sys.stderr)
    return stopping.EXIT_STOPPED


def run(main: Callable, flags_parser=None) -> None:
  """absl's app.run(main) with the stop handlers installed for the rest of the process."""
  from absl import app
  stopping.install()
  if flags_parser is None:
    app.run(main)
  else:
    app.run(main, flags_parser=flags_parser)
