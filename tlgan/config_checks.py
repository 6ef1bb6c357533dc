"""Config values checked against the tables of what exists, before anything is built or read.

Each trainer declares `CHOICES = {dotted field: allowed values}` next to its code and calls
`check_choices(config, CHOICES)` first thing; a value outside its table is one `ConfigError` naming the field,
the value and every allowed one. The tables are the modules' own (losses.LOSSES, layers.IMPLS, ...), so a new
loss or stem is allowed everywhere the moment it exists.
"""

from typing import Any, Iterable, Mapping

from tlgan.errors import ConfigError


def get(config, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def check_choices(config, table: Mapping[str, Iterable]) -> None:
  """Every field in `table` holds one of its allowed values (or, for a list/tuple field, only allowed ones)."""
  for dotted, allowed in table.items():
    allowed = list(allowed)
    value = get(config, dotted)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
      if v not in allowed:
        what = f"{dotted} holds {v!r}, which" if isinstance(value, (list, tuple)) else f"{dotted}={v!r}"
        raise ConfigError(f"{what} is not one of {', '.join(map(str, allowed))}: set --config.{dotted}")
