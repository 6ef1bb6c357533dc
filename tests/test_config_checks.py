"""Configs are checked up front, from the trainers' tables: every field with a fixed set of values refuses a
value outside it, and every numeric field of every config has a rule and refuses 0, -1 and a non-number where
its rule does, with one ConfigError naming the field, before anything is built; and a bug inside model
initialisation surfaces as the bug it is, not as a config mistake."""

import re

import pytest

from tlgan.errors import ConfigError, UserError


def _tables():
  from configs import gan, style, transfer
  from tlgan import config_checks
  from tlgan.trainers import classifier, gan as gan_trainer, style as style_trainer
  return [("gan", gan.get_config("smoke"), gan_trainer.CHOICES, gan_trainer.check_config),
          ("classifier", transfer.get_config("smoke"), classifier.CHOICES, classifier.check_config),
          ("style", style.get_config("smoke"), style_trainer.CHOICES,
           lambda c: config_checks.check_choices(c, style_trainer.CHOICES))]


CASES = [(name, field) for name, _, table, _ in _tables() for field in table]


@pytest.mark.parametrize("name,field", CASES, ids=[f"{n}:{f}" for n, f in CASES])
def test_every_field_of_every_table_refuses_a_value_outside_it(name, field):
  from tlgan import config_checks
  _, config, table, check = next(t for t in _tables() if t[0] == name)
  check(config)  # the variant's own values pass
  *parents, leaf = field.split(".")
  node = config
  for key in parents:
    node = node[key]
  good = node[leaf]
  with node.ignore_type():
    node[leaf] = ("layer1", "bogus") if isinstance(good, (tuple, list)) else "bogus"
  with pytest.raises(ConfigError, match=f"^{field}.*'bogus'.*is not one of") as e:
    check(config)
  assert all(str(v) in str(e.value) for v in table[field])  # the message lists every allowed value
  assert config_checks.get(config, field) != good


def test_model_init_bugs_are_not_disguised_as_config_errors(monkeypatch):
  from configs import gan
  from tlgan.models import dcgan
  from tlgan.trainers import gan as gan_trainer

  def broken(self, z, train=True):
    raise ValueError("a bug in the generator")
  monkeypatch.setattr(dcgan.Generator, "__call__", broken)
  with pytest.raises(ValueError, match="a bug in the generator") as e:
    gan_trainer.build_state(gan.get_config("smoke"), (28, 28, 1))
  assert not isinstance(e.value, UserError)


def _numeric_tables():
  """(name, config, numbers table, fields covered by a choice table, check) of every experiment's config."""
  from configs import gan, style, transfer, transfer_study
  from tlgan.trainers import classifier, gan as gan_trainer, style as style_trainer, transfer_study as study
  clf = {**{f"pretrain.{k}": v for k, v in classifier.NUMBERS.items()},
         **{f"finetune.{k}": v for k, v in classifier.NUMBERS.items()}, **study.NUMBERS}
  return [("gan", gan.get_config("smoke"), gan_trainer.NUMBERS, gan_trainer.CHOICES, gan_trainer.check_config),
          ("classifier", transfer.get_config("smoke"), classifier.NUMBERS, classifier.CHOICES,
           classifier.check_config),
          ("style", style.get_config("smoke"), style_trainer.NUMBERS, style_trainer.CHOICES, style_trainer.check_config),
          ("transfer_study", transfer_study.get_config("smoke"), clf,
           {f"{p}.model.channels": () for p in ("pretrain", "finetune")}, study.check_config)]


@pytest.mark.parametrize("name", ["gan", "classifier", "style", "transfer_study"])
def test_every_numeric_field_has_a_rule(name):
  from tlgan import config_checks
  _, config, numbers, choices, _ = next(t for t in _numeric_tables() if t[0] == name)
  missing = [f for f in config_checks.numeric_fields(config) if f not in numbers and f not in choices]
  assert not missing, f"numeric fields of {name}'s config without a rule in its NUMBERS table: {missing}"


NUMERIC_CASES = [(name, field, value) for name, _, numbers, _, _ in _numeric_tables() for field in numbers
                 for value in (0, -1, "abc")]


@pytest.mark.parametrize("name,field,value", NUMERIC_CASES, ids=[f"{n}:{f}={v}" for n, f, v in NUMERIC_CASES])
def test_every_numeric_field_at_zero_minus_one_and_a_non_number(name, field, value):
  from tlgan import config_checks
  _, config, numbers, _, check = next(t for t in _numeric_tables() if t[0] == name)
  rule = numbers[field]
  *parents, leaf = field.split(".")
  node = config
  for key in parents:
    node = node[key]
  with node.ignore_type():
    node[leaf] = (value,) if isinstance(node[leaf], (tuple, list)) else value
  if rule.accepts(value):
    try:
      check(config)
    except ConfigError as e:  # another field's cross-check may object; this field's own rule must not
      assert not str(e).startswith(f"{field} must be"), e
  else:
    with pytest.raises(ConfigError, match="^" + re.escape(f"{field} must be {rule.describe()}, got")):
      check(config)
  assert config_checks.get(config, field) in (value, (value,))
