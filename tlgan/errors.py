"""Errors that are the user's to fix: the entry point prints them as one line and exits non-zero."""


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
