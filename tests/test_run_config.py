"""The changed-config policy's pieces (tlgan.run_config); the CLI cases are in test_reliability."""

import pytest

from tlgan import run_config
from tlgan.errors import CheckpointMismatchError

SAVED = {"seed": 0, "batch_size": 8, "num_steps": 100, "eval": {"every": 10, "split": "test"},
         "model": {"stages": ("a", "b")}}


def current(**changes):
  flat = run_config.flatten(SAVED)
  flat.update(changes)
  return flat


def test_flatten_gives_dotted_json_values():
  assert run_config.flatten(SAVED) == {"seed": 0, "batch_size": 8, "num_steps": 100, "eval.every": 10,
                                        "eval.split": "test", "model.stages": ["a", "b"]}


@pytest.mark.parametrize("field, free", [("eval.every", True), ("eval", True), ("evaluation", False),
                                         ("num_steps", True), ("num_steps_x", False), ("seed", False)])
def test_free_fields_cover_their_sections_only(field, free):
  assert run_config.is_free(field, ("eval", "num_steps")) is free


def test_free_changes_pass_and_bound_ones_are_refused_unless_allowed():
  saved = run_config.flatten(SAVED)
  run_config.check_resume(saved, current(**{"num_steps": 200, "eval.every": 5}), ("num_steps", "eval"),
                          allow=False, where="w")
  with pytest.raises(CheckpointMismatchError, match=r"w was trained with batch_size=8 \(now 16\), seed=0 \(now 1\)"):
    run_config.check_resume(saved, current(seed=1, batch_size=16), ("num_steps",), allow=False, where="w")
  run_config.check_resume(saved, current(seed=1, batch_size=16), ("num_steps",), allow=True, where="w")


def test_a_field_added_or_removed_by_an_update_is_free():
  saved = run_config.flatten(SAVED)
  run_config.check_resume(saved, current(new_field=3), (), allow=False, where="w")
  del saved["seed"]
  run_config.check_resume(saved, current(), (), allow=False, where="w")
