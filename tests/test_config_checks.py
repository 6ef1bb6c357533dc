"""Configs are checked up front, from the trainers' tables: every field with a fixed set of values refuses a
value outside it with one ConfigError naming the field, before anything is built; and a bug inside model
initialisation surfaces as the bug it is, not as a config mistake."""

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
