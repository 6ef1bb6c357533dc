"""The policy for resuming a workdir with a changed config.

A checkpoint records the config of the run that wrote it. When a run resumes from it, every field that
shapes the trajectory (seed, batch size, loss, model, optimiser, data: everything a trainer does not list as
free) must be unchanged, because the README promises that a resumed run ends exactly where an uninterrupted
one would: a difference is refused with one line naming the fields, unless `--allow_config_change` is given,
which continues with the new values and logs each difference. The free fields change what is logged,
evaluated or kept, not the parameters, and may change on any rerun (a trainer's `FREE_FIELDS`, e.g.
`num_steps` of a GAN with constant learning rates, logging and checkpoint intervals, evaluation settings,
where data is read from). A field that exists on one side only (added or removed by a tlgan update) is free
too. Every difference is logged.
"""

import json
import logging
from typing import Any, Dict, List, Sequence, Tuple

from tlgan.errors import CheckpointMismatchError


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'model': {'width': 8}} -> {'model.width': 8}, values as JSON has them (tuples become lists)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
  return flat


def is_free(field: str, free: Sequence[str]) -> bool:
  """Whether `field` is one of `free` or lies under one of its sections ('eval' covers 'eval.every')."""
  return any(field == f or field.startswith(f + ".") for f in free)


def differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
  """(field, saved value, current value) of every field that differs or exists on one side only."""
  missing = "(absent)"
  return [(k, saved.get(k, missing), current.get(k, missing)) for k in sorted(set(saved) | set(current))
          if saved.get(k, missing) != current.get(k, missing)]


def check_resume(saved: Dict[str, Any], current: Dict[str, Any], free: Sequence[str], *, allow: bool,
                 where: str) -> None:
  """Logs how `current` (flattened) differs from the `saved` config of the checkpoint in `where`; raises
  `CheckpointMismatchError` when a field outside `free` differs and `allow` is False."""
  diffs = differences(saved, current)
  # A field on one side only was added or removed by a tlgan update (its default keeps the old behaviour).
  bound = [d for d in diffs if not is_free(d[0], free) and d[0] in saved and d[0] in current]
  bound_fields = {d[0] for d in bound}
  for field, old, new in diffs:
    logging.info("config change on resume: %s = %r (was %r)%s", field, new, old,
                 " [changes the trajectory]" if field in bound_fields else "")
  if bound and not allow:
    shown = ", ".join(f"{field}={old!r} (now {new!r})" for field, old, new in bound[:3])
    more = f" and {len(bound) - 3} more" if len(bound) > 3 else ""
    raise CheckpointMismatchError(
        f"{where} was trained with {shown}{more}: resuming with other values changes the run's trajectory; "
        "rerun with the old values, use another --workdir, or pass --allow_config_change to continue with the "
        "new ones")
  if bound:
    logging.warning("resuming %s with %d changed field(s) that alter the trajectory (--allow_config_change): %s",
                    where, len(bound), ", ".join(d[0] for d in bound))
