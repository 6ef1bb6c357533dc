"""Parameter groups by path patterns: the labels, and optax doing what the groups say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from tlgan import param_groups
from tlgan.models.dcgan import Discriminator, d_block_layers

PARAMS = {"trunk": {"conv1": {"kernel": 1.0}, "layer1_0": {"conv1": {"kernel": 2.0}}},
          "head_layer1_conv": {"kernel": 3.0}, "fc": {"kernel": 4.0, "bias": 5.0}, "fcx": {"kernel": 6.0}}


def test_patterns_match_a_module_and_everything_inside_it_first_rule_wins():
  labels = param_groups.labels(PARAMS, [("fc", "head"), ("trunk/layer1_.*", "late"), ("trunk", "frozen")], "train")
  assert labels == {"trunk": {"conv1": {"kernel": "frozen"}, "layer1_0": {"conv1": {"kernel": "late"}}},
                    "head_layer1_conv": {"kernel": "train"}, "fc": {"kernel": "head", "bias": "head"},
                    "fcx": {"kernel": "train"}}  # 'fc' is a module name, not a prefix of 'fcx'


def test_freeze_leaves_the_frozen_parameters_and_keeps_no_state_for_them():
  params = jax.tree.map(jnp.asarray, PARAMS)
  tx = param_groups.freeze(optax.adam(0.1), ["trunk"])
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert float(new["trunk"]["conv1"]["kernel"]) == 1.0 and float(new["trunk"]["layer1_0"]["conv1"]["kernel"]) == 2.0
  assert float(new["fc"]["bias"]) != 5.0
  adam_state = state.inner_states["train"].inner_state[0]
  assert isinstance(adam_state.mu["trunk"]["conv1"]["kernel"], optax.MaskedNode)  # no moments for the trunk


def test_groups_learn_at_their_own_rates():
  params = jax.tree.map(jnp.asarray, PARAMS)
  tx = param_groups.optimizer({"head": optax.sgd(1.0), "backbone": optax.sgd(0.1), "frozen": None},
                              [("fc", "head"), ("trunk", "frozen")], default="backbone")
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert float(updates["fc"]["kernel"]) == -1.0 and np.isclose(float(updates["fcx"]["kernel"]), -0.1)
  assert float(updates["trunk"]["conv1"]["kernel"]) == 0.0


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_d_block_layers_name_real_layers_of_d(norm):
  d = Discriminator(image_shape=(32, 32, 3), features=8, norm=norm)
  params = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
  assert set(d_block_layers(3, norm)) <= set(params) and len(d_block_layers(3, norm)) == 5
  assert set(params) - set(d_block_layers(3, norm)) == {"Dense_0"}  # every block: the whole D but its head
