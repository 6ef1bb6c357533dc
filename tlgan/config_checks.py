"""Config values checked against tables, before anything is built or read.

Each trainer declares, next to its code, `CHOICES = {dotted field: allowed values}` and `NUMBERS = {dotted
field: Number rule}` and checks both first thing; a value outside its table is one `ConfigError` naming the
field, the value and what would do. The choice tables are the modules' own (losses.LOSSES, layers.IMPLS, ...),
so a new loss or stem is allowed everywhere the moment it exists; the number tables cover every numeric field
(tests/test_config_checks.py finds the numeric fields of each config and fails on one without a rule).
"""

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional

from tlgan.errors import ConfigError


def get(config, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def check_choices(config, table: Mapping[str, Iterable], prefix: str = "") -> None:
  """Every field in `table` holds one of its allowed values (or, for a list/tuple field, only allowed ones).
  `prefix`: where `config` sits in the whole config (e.g. 'pretrain.'), for the message."""
  for dotted, allowed in table.items():
    allowed = list(allowed)
    value = get(config, dotted)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
      if v not in allowed:
        name = prefix + dotted
        what = f"{name} holds {v!r}, which" if isinstance(value, (list, tuple)) else f"{name}={v!r}"
        raise ConfigError(f"{what} is not one of {', '.join(map(str, allowed))}: set --config.{name}")


# ---------------------------------------------------------------------------------------------------------
# Numbers: every numeric field of a config has a rule in its trainer's NUMBERS table, and a test checks that
# no numeric field is missing from it, so a new field cannot be forgotten.

@dataclasses.dataclass(frozen=True)
class Number:
  """A numeric field's meaning: its kind (int: a whole number; float: any real) and its range."""
  kind: type = int
  low: Optional[float] = None  # inclusive, unless low_open
  high: Optional[float] = None  # inclusive, unless high_open
  low_open: bool = False
  high_open: bool = False

  def describe(self) -> str:
    what = "a whole number" if self.kind is int else "a number"
    if self.low == 0 and self.low_open and self.high is None:
      return "positive" if self.kind is float else "a positive whole number"
    if self.low is not None and self.high is None:
      return f"{what} >{'' if self.low_open else '='} {self.low:g}"
    if self.low is None and self.high is not None:
      return f"{what} <{'' if self.high_open else '='} {self.high:g}"
    if self.low is not None:
      return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}")
    return what

  def accepts(self, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.kind is int and not isinstance(value, int):
      return False
    if not math.isfinite(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


POSITIVE_INT = Number(int, 0, low_open=True)
NON_NEGATIVE_INT = Number(int, 0)
POSITIVE = Number(float, 0, low_open=True)
NON_NEGATIVE = Number(float, 0)
FRACTION = Number(float, 0, 1, high_open=True)  # [0, 1): decays, momenta, label smoothing


def check_numbers(config, table: Mapping[str, Number], prefix: str = "") -> None:
  """Every field in `table` (each element, for a tuple field) is a finite number its rule accepts."""
  for dotted, rule in table.items():
    value = get(config, dotted)
    for v in (value if isinstance(value, (list, tuple)) else [value]):
      if not rule.accepts(v):
        shown = f"{v!r} in {value!r}" if isinstance(value, (list, tuple)) else repr(v)
        raise ConfigError(f"{prefix}{dotted} must be {rule.describe()}, got {shown}: set --config.{prefix}{dotted}")


def numeric_fields(config, prefix: str = ""):
  """The dotted names of every numeric (int or float, not bool) field of `config`, tuples of numbers too."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from numeric_fields(value, name + ".")
    elif isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
      yield name
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name
