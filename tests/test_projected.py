"""The projected discriminator: heads on a frozen pretrained ResNet18 trunk (the weights file's own features,
bit-identical after training steps), its config errors, and a short end-to-end run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import smoke_gan, train_gan
from tlgan import pretrained
from tlgan.errors import ConfigError
from tlgan.models.projected import ProjectedDiscriminator
from tlgan.preprocessing import classifier_map_fn
from tlgan.steps import gan as gan_step
from tlgan.trainers import gan as gan_trainer
from tlgan.models import initializers

STAGES = ("layer1", "layer2", "layer3")


def make_trunk(path, width=8, seed=0):
  """A tiny ResNet18 'classifier' weights file with non-trivial BatchNorm statistics."""
  model = pretrained.model_for("resnet18", 10, width=width)
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 1000))
  stats = jax.tree.map(lambda v: v + 0.5 * jax.random.uniform(next(keys), v.shape), variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}
  pretrained.save(str(path), variables, pretrained.WeightsMeta("resnet18", image_size=32))
  return model, variables


def projected_config(trunk_path, **overrides):
  config = smoke_gan(**overrides)
  config.model.discriminator = "projected"
  config.model.d_trunk_weights = str(trunk_path)
  return config


def test_resnet_stages_equal_its_sown_activations():
  model = pretrained.model_for("resnet18", 10, width=8)
  x = initializers.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  _, sown = model.apply(variables, x, train=False, mutable=["intermediates"])
  out = model.apply(variables, x, train=False, stages=("stem", "layer2"))
  assert sorted(out) == ["layer2", "stem"]
  for name in out:
    np.testing.assert_array_equal(out[name], sown["intermediates"][name][0])
  shallow = model.init(jax.random.key(1), x, train=False, stages=("layer2",))
  assert "layer3_0" not in shallow["params"] and "fc" not in shallow["params"]  # nothing deeper is built
  with pytest.raises(ValueError, match="unknown stages"):
    model.apply(variables, x, train=False, stages=("layer9",))


@pytest.mark.slow
def test_trunk_is_the_weights_file_and_stays_frozen_while_heads_and_g_learn(tmp_path):
  model, variables = make_trunk(tmp_path / "trunk.msgpack")
  config = projected_config(tmp_path / "trunk.msgpack")
  state = gan_trainer.build_state(config, (28, 28, 1))
  assert isinstance(state.discriminator, ProjectedDiscriminator)
  for collection, tree in (("params", state.d_params), ("batch_stats", state.d_batch_stats)):
    for path, value in jax.tree_util.tree_leaves_with_path(tree["trunk"]):
      expected = variables[collection]
      for key in path:
        expected = expected[key.key]
      np.testing.assert_array_equal(value, expected)

  # The trunk sees the image exactly as the classifier's training pipeline fed it (the oracle: that tf.data
  # function on the same uint8 pixels).
  pixels = np.random.default_rng(2).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  images = jnp.asarray(pixels, jnp.float32) / 127.5 - 1.0
  _, sown = state.discriminator.apply({"params": state.d_params, "batch_stats": state.d_batch_stats}, images,
                                      train=False, mutable=["intermediates"])
  fed = classifier_map_fn(image_size=32, channels=3)({"image": pixels, "label": np.zeros(4)}, 0)["image"].numpy()
  expected = model.apply(variables, fed, train=False, stages=STAGES)
  trunk_sown = sown["intermediates"]["trunk"]
  for name in STAGES:
    np.testing.assert_allclose(trunk_sown[name][0], expected[name], rtol=1e-5, atol=1e-5)

  batch = {"image": initializers.uniform(jax.random.key(3), (8, 28, 28, 1), minval=-1.0, maxval=1.0)}
  step = jax.jit(gan_step.train_step)
  new, metrics = step(state, batch, jax.random.key(4))
  new, metrics = step(new, batch, jax.random.key(4))
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))
  assert same(new.d_params["trunk"], state.d_params["trunk"])
  assert same(new.d_batch_stats["trunk"], state.d_batch_stats["trunk"])
  assert not same(new.d_params["head_layer2_conv"], state.d_params["head_layer2_conv"])
  assert not same(new.g_params, state.g_params)
  assert all(np.isfinite(float(v)) for v in metrics.values()) and float(metrics["g_grad_norm"]) > 0
  # Adam keeps moments for the heads only (2 per parameter + counters), none for the trunk
  heads = sum(v.size for k, sub in state.d_params.items() if k != "trunk" for v in jax.tree.leaves(sub))
  assert 2 * heads <= sum(np.size(v) for v in jax.tree.leaves(state.d_opt_state)) <= 2 * heads + 8


@pytest.mark.slow
def test_trunk_config_and_errors(tmp_path):
  with pytest.raises(ConfigError, match="does not exist: train the trunk first"):
    gan_trainer.build_state(projected_config(tmp_path / "none.msgpack"), (28, 28, 1))
  make_trunk(tmp_path / "trunk.msgpack")
  config = projected_config(tmp_path / "trunk.msgpack")
  config.eval.feature_weights = str(tmp_path / "trunk.msgpack")
  with pytest.raises(ConfigError, match="is the FD feature network itself"):
    gan_trainer.build_state(config, (28, 28, 1))
  config = projected_config(tmp_path / "trunk.msgpack")
  config.transfer.freeze_d_layers = 1
  with pytest.raises(ConfigError, match="frozen already"):
    gan_trainer.build_state(config, (28, 28, 1))
  config = projected_config(tmp_path / "trunk.msgpack")
  config.model.d_trunk_size = 40  # e.g. for ImageNet weights
  assert gan_trainer.build_state(config, (28, 28, 1)).discriminator.trunk.image_size == 40
  config = projected_config(tmp_path / "trunk.msgpack")
  config.model.d_trunk_stages = ("layer1", "layer9")
  with pytest.raises(ConfigError, match="model.d_trunk_stages holds 'layer9', which is not one of stem, layer1"):
    gan_trainer.build_state(config, (28, 28, 1))


@pytest.mark.slow
@pytest.mark.parametrize("private", [False, True])
def test_end_to_end_run_with_projected_discriminator(tmp_path, private):
  make_trunk(tmp_path / "trunk.msgpack")
  config = projected_config(tmp_path / "trunk.msgpack", num_steps=4)
  config.eval.enabled = False
  if private:  # GroupNorm heads trained with DP-SGD on the (mock) private images; the public trunk frozen
    config.dp.enabled, config.dp.target_epsilon, config.model.d_norm = True, 10.0, "group"
    config.model.d_trunk_stages = ("layer1",)  # one head: per-example gradients through the trunk compile slowly
  summary = train_gan(config, tmp_path / "run")
  assert summary["status"] == "completed" and summary["step"] == 4
  assert all(np.isfinite(v) for v in summary["final_metrics"].values())
  if private:
    assert summary["privacy"]["private"] and 9.9 < summary["privacy"]["epsilon"] <= 10.0
