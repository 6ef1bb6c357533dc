"""Parameter groups by path patterns: which parameters learn, at which rate, and which stay frozen.

A rule is (pattern, group): the pattern is a regular expression over a parameter's module path ('layer4_1',
'Conv_0', 'trunk', 'head_layer1_conv'), matching that module and everything inside it; the first rule that
matches names the group, otherwise the default group. One mechanism serves FreezeD (D's lowest blocks),
the projected discriminator (its pretrained trunk), linear probing (everything but the head) and
discriminative learning rates (the head vs the backbone).

    tx = param_groups.optimizer({"head": sgd(0.1), "backbone": sgd(0.01)}, [("fc", "head")], default="backbone")
    tx = param_groups.freeze(adam(2e-4), ["trunk"])
"""

import re
from typing import Dict, Iterable, Optional, Sequence, Tuple

import optax
from flax import traverse_util

Rules = Sequence[Tuple[str, str]]


def labels(params, rules: Rules, default: str):
  """The pytree of group names for `params` (same structure)."""
  compiled = [(re.compile(f"(?:{pattern})(?:/.*)?"), group) for pattern, group in rules]

  def group_of(path):
    name = "/".join(path)
    return next((group for pattern, group in compiled if pattern.fullmatch(name)), default)

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: group_of(path) for path in flat})


def optimizer(groups: Dict[str, Optional[optax.GradientTransformation]], rules: Rules,
              default: str) -> optax.GradientTransformation:
  """One transformation per group (None: frozen, no update and no optimiser state)."""
  transforms = {name: tx if tx is not None else optax.set_to_zero() for name, tx in groups.items()}
  return optax.multi_transform(transforms, lambda params: labels(params, rules, default))


def freeze(tx: optax.GradientTransformation, patterns: Iterable[str]) -> optax.GradientTransformation:
  """`tx` for every parameter but those under `patterns`, which stay as they are."""
  return optimizer({"train": tx, "frozen": None}, [(p, "frozen") for p in patterns], default="train")
