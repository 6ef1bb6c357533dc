"""GAN losses against float64 NumPy implementations of their textbook formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

from tlgan import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def logits():
  rng = np.random.default_rng(0)
  # Moderate values, where log(sigmoid) in float64 is exact enough to be the reference.
  return rng.normal(0, 3, 257), rng.normal(0, 3, 257)


def test_nonsaturating(logits):
  real, fake = logits
  d_ref = -np.mean(np.log(_sigmoid(real))) - np.mean(np.log(1.0 - _sigmoid(fake)))
  g_ref = -np.mean(np.log(_sigmoid(fake)))
  d_loss, g_loss = losses.get_losses("nonsaturating")
  np.testing.assert_allclose(float(d_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))),
                             d_ref, rtol=1e-6)
  np.testing.assert_allclose(float(g_loss(jnp.asarray(fake, jnp.float32))), g_ref, rtol=1e-6)


def test_nonsaturating_is_stable_for_extreme_logits():
  d_loss, g_loss = losses.get_losses("nonsaturating")
  big = jnp.array([200.0, -200.0])
  assert np.isfinite(float(d_loss(big, big))) and np.isfinite(float(g_loss(big)))
  np.testing.assert_allclose(float(g_loss(jnp.array([-200.0]))), 200.0, rtol=1e-6)  # -log(sigmoid(-200))


def test_hinge(logits):
  real, fake = logits
  d_ref = np.mean(np.maximum(0.0, 1.0 - real)) + np.mean(np.maximum(0.0, 1.0 + fake))
  g_ref = -np.mean(fake)
  d_loss, g_loss = losses.get_losses("hinge")
  np.testing.assert_allclose(float(d_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))),
                             d_ref, rtol=1e-6)
  np.testing.assert_allclose(float(g_loss(jnp.asarray(fake, jnp.float32))), g_ref, rtol=1e-5)


def test_unknown_loss():
  with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
    losses.get_losses("wgan")
