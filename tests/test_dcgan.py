"""DCGAN shapes, value ranges, parameter counts (against a formula) and initialisation."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlgan.models.dcgan import Discriminator, Generator


def _spatial_plan(size):
  # Halve while the map stays even and >= 4 pixels: 28 -> [14, 7], 32 -> [16, 8, 4].
  plan = []
  while size % 2 == 0 and size // 2 >= 4:
    size //= 2
    plan.append(size)
  return plan


def expected_counts(image_shape, f, latent):
  h, w, c = image_shape
  plan = _spatial_plan(h)
  widths = [f * 2**(i + 1) for i in range(len(plan))]  # image side inwards
  s = plan[-1]
  g = latent * s * s * widths[-1] + 2 * widths[-1]  # dense (no bias) + BN
  for cin, cout in zip(widths[::-1][:-1], widths[::-1][1:]):
    g += 16 * cin * cout + 2 * cout  # transposed conv (no bias) + BN
  g += 16 * widths[0] * c + c  # last transposed conv, with bias
  d = 16 * c * widths[0] + widths[0]  # first conv, bias, no BN
  for cin, cout in zip(widths[:-1], widths[1:]):
    d += 16 * cin * cout + 2 * cout  # conv (no bias) + BN
  d += s * s * widths[-1] + 1  # dense to one logit
  return g, d


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("features", [8, pytest.param(64, marks=pytest.mark.slow)])
def test_shapes_ranges_and_parameter_counts(image_shape, features):
  latent = 100
  g, d = Generator(image_shape, features), Discriminator(image_shape, features)
  z = jax.random.normal(jax.random.key(0), (3, latent))
  g_vars = g.init(jax.random.key(1), z, train=False)
  d_vars = d.init(jax.random.key(2), jnp.zeros((3, *image_shape)), train=False)
  want_g, want_d = expected_counts(image_shape, features, latent)
  assert _count(g_vars["params"]) == want_g
  assert _count(d_vars["params"]) == want_d
  images, _ = g.apply(g_vars, z * 10.0, train=True, mutable=["batch_stats"])
  assert images.shape == (3, *image_shape)
  assert float(jnp.min(images)) >= -1.0 and float(jnp.max(images)) <= 1.0
  assert float(jnp.std(images)) > 0.0
  logits, _ = d.apply(d_vars, images, train=True, mutable=["batch_stats"])
  assert logits.shape == (3,) and bool(jnp.all(jnp.isfinite(logits)))


def test_radford_conventions():
  image_shape = (28, 28, 1)
  g_vars = Generator(image_shape, 64).init(jax.random.key(0), jnp.zeros((2, 100)), train=False)
  d_vars = Discriminator(image_shape, 64).init(jax.random.key(1), jnp.zeros((2, *image_shape)), train=False)
  flat = flax.traverse_util.flatten_dict(g_vars["params"]) | {
      ("D",) + k: v for k, v in flax.traverse_util.flatten_dict(d_vars["params"]).items()}
  kernels = [np.asarray(v) for k, v in flat.items() if k[-1] == "kernel" and v.size > 10000]
  assert kernels
  for k in kernels:  # N(0, 0.02)
    assert abs(k.mean()) < 2e-3 and abs(k.std() - 0.02) < 2e-3
  scales = np.concatenate([np.asarray(v) for k, v in flat.items() if k[-1] == "scale"])
  assert abs(scales.mean() - 1.0) < 0.01 and 0.01 < scales.std() < 0.03  # N(1, 0.02)
  # No BatchNorm on D's first layer: two convs, one BatchNorm.
  d_layers = set(k[0] for k in flax.traverse_util.flatten_dict(d_vars["params"]))
  assert d_layers == {"Conv_0", "Conv_1", "BatchNorm_0", "Dense_0"}
  g_layers = set(k[0] for k in flax.traverse_util.flatten_dict(g_vars["params"]))
  assert g_layers == {"Dense_0", "BatchNorm_0", "ConvTranspose_0", "BatchNorm_1", "ConvTranspose_1"}


def test_impls_agree_on_the_whole_model():
  image_shape = (28, 28, 1)
  z = jax.random.normal(jax.random.key(0), (4, 16))
  g_fast, g_ref = Generator(image_shape, 8, conv_impl="matmul"), Generator(image_shape, 8, conv_impl="xla")
  variables = g_fast.init(jax.random.key(1), z, train=False)
  np.testing.assert_allclose(g_fast.apply(variables, z, train=False), g_ref.apply(variables, z, train=False),
                             atol=2e-5)
