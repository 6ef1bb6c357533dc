"""GAN losses computed from discriminator logits (never from probabilities, which saturate in float32)."""

import jax
import jax.numpy as jnp


def nonsaturating_d_loss(real_logits, fake_logits):
  """-log D(x) - log(1 - D(G(z))) averaged, with D = sigmoid(logits) (Goodfellow et al., 2014)."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def nonsaturating_g_loss(fake_logits):
  """-log D(G(z)): the non-saturating generator loss (targets 'real' for the fakes)."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def hinge_d_loss(real_logits, fake_logits):
  """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))) (Lim & Ye, 2017; Miyato et al., 2018)."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits):
  return -jnp.mean(fake_logits)


# D's loss as mean(real term) + mean(fake term), term by term and per example: a private discriminator clips the
# per-example gradients of the real term (the only one that reads private data).
D_TERMS = {
    "nonsaturating": (lambda real_logits: jax.nn.softplus(-real_logits), lambda fake_logits: jax.nn.softplus(fake_logits)),
    "hinge": (lambda real_logits: jax.nn.relu(1.0 - real_logits), lambda fake_logits: jax.nn.relu(1.0 + fake_logits)),
}

LOSSES = {
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
}


def get_losses(name: str):
  """Returns (d_loss_fn, g_loss_fn) for a loss name."""
  if name not in LOSSES:
    raise ValueError(f"unknown GAN loss {name!r}: choose one of {sorted(LOSSES)}")
  return LOSSES[name]
