"""Errors that are the user's to fix: the entry point prints them as one line and exits non-zero."""


def first_line(error, limit: int = 300) -> str:
  """The first line of an error (or any text), at most `limit` characters: library errors (Orbax, TensorStore,
  gzip) span dozens of lines, and a log line or an `error:` line keeps one."""
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else "")[:limit]


class UserError(Exception):
  """A problem with the input (config, data, workdir, files); the message names it and the fix."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


class CheckpointMismatchError(UserError):
  """The workdir holds a checkpoint of another experiment or with other shapes."""


class NonFiniteError(UserError):
  """Training diverged: a loss or gradient norm became NaN or Inf."""


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (a full disk, a read-only folder); the complete ones are kept."""
