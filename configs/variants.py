"""Config variants as data: each config file has `VARIANTS = {name: function(config)}` and ends its
`get_config(arg)` with `apply(config, arg, VARIANTS, __file__)`.

`arg` is the text after the colon of `--config=configs/gan.py:cifar10,fid50k`: comma-separated names, applied
left to right (later ones win where they set the same field). An unknown name is a `VariantError` that lists
the valid ones, which the entry point prints as one line.
"""

import os
from typing import Callable, Dict, Optional

import ml_collections


class VariantError(ValueError):
  """An unknown variant name in --config=FILE:VARIANTS."""


def names(arg: Optional[str]):
  return [name.strip() for name in (arg or "").split(",") if name.strip()]


def apply(config: ml_collections.ConfigDict, arg: Optional[str],
          variants: Dict[str, Callable[[ml_collections.ConfigDict], None]], file: str) -> ml_collections.ConfigDict:
  """Applies the comma-separated `arg` variants of `file` to `config` (in place); returns it."""
  where = f"configs/{os.path.basename(file)}"
  for name in names(arg):
    if name not in variants:
      raise VariantError(f"unknown variant {name!r} of {where}: use one of {', '.join(variants)} (comma-separated)"
                         if variants else f"{where} has no variants, got {name!r}")
  for name in names(arg):
    variants[name](config)
  return config
