"""The pure GAN step: it learns, its metrics are finite, and it is a function of (state, batch, seed, step)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tlgan.models.dcgan import Discriminator, Generator
from tlgan.steps import gan
from tlgan.steps.gan import train_step  # the import research code uses
from tlgan.models import initializers

SHAPE = (28, 28, 1)
step_fn = jax.jit(train_step)


# One optimiser object for every state: the state carries it as a static field, and a new (unequal) one per state
# would make step_fn compile again for every state.
ADAM = optax.adam(2e-4, 0.5)


def make_state(loss="nonsaturating", ema_decay=0.9, seed=0):
  g, d = Generator(SHAPE, 8), Discriminator(SHAPE, 8)
  return gan.init_state(jax.random.key(seed), g, d, ADAM, ADAM,
                        image_shape=SHAPE, latent_dim=16, loss=loss, ema_decay=ema_decay)


def batch(seed=0):
  return {"image": initializers.uniform(jax.random.key(seed), (8, *SHAPE), minval=-1, maxval=1)}


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("loss", ["nonsaturating", "hinge"])
def test_step_updates_everything_with_finite_metrics(loss):
  state = make_state(loss)
  new, metrics = step_fn(state, batch(), jax.random.key(0))
  assert int(new.step) == 1
  assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert 0.0 < float(metrics["d_real"]) < 1.0 and 0.0 < float(metrics["d_fake"]) < 1.0
  for name in ("g_params", "d_params", "g_batch_stats", "d_batch_stats", "ema_params"):
    old, upd = jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(new, name))
    assert any(not np.array_equal(a, b) for a, b in zip(old, upd)), name
  # EMA with warm-up: ema' = d * ema + (1 - d) * params', d = min(decay, (1 + t) / (10 + t)), t = 0 here.
  d = min(0.9, 1.0 / 10.0)
  for e0, e1, p1 in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(new.ema_params),
                        jax.tree.leaves(new.g_params)):
    np.testing.assert_allclose(e1, d * e0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)
  later = make_state(loss).replace(step=jnp.asarray(1000, jnp.int32))  # past the warm-up: d = decay
  new_later, _ = step_fn(later, batch(), jax.random.key(0))
  for e0, e1, p1 in zip(jax.tree.leaves(later.ema_params), jax.tree.leaves(new_later.ema_params),
                        jax.tree.leaves(new_later.g_params)):
    np.testing.assert_allclose(e1, 0.9 * e0 + 0.1 * p1, rtol=1e-5, atol=1e-7)


def test_step_is_deterministic_in_seed_and_step():
  s1, m1 = step_fn(make_state(), batch(), jax.random.key(3))
  s2, m2 = step_fn(make_state(), batch(), jax.random.key(3))
  assert _leaves_equal(s1, s2) and _leaves_equal(m1, m2)
  s3, _ = step_fn(make_state(), batch(), jax.random.key(4))  # another seed draws other latents
  assert not _leaves_equal(s1.g_params, s3.g_params)
  later = make_state().replace(step=jnp.asarray(7, jnp.int32))  # another step, too
  s4, _ = step_fn(later, batch(), jax.random.key(3))
  assert not _leaves_equal(s1.g_params, s4.g_params)


def test_discriminator_learns_to_separate():
  """A few D+G steps on a fixed real batch: D's loss falls from its chance value 2 log 2."""
  state = make_state(ema_decay=0.0)
  state = state.replace(d_tx=optax.adam(2e-3, 0.5), d_opt_state=optax.adam(2e-3, 0.5).init(state.d_params))
  step = jax.jit(train_step)
  first = None
  for i in range(15):
    state, metrics = step(state, batch(), jax.random.key(0))
    first = first if first is not None else float(metrics["d_loss"])
  assert first == pytest.approx(2 * np.log(2), abs=0.3)
  assert float(metrics["d_loss"]) < 0.7 * first


def test_sample_uses_ema_weights():
  state = make_state(ema_decay=0.5)
  state, _ = step_fn(state, batch(), jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (4, 16))
  with_ema = gan.sample(state, z)
  by_hand = state.generator.apply({"params": state.ema_params, "batch_stats": state.g_batch_stats}, z,
                                  train=False)
  np.testing.assert_array_equal(with_ema, by_hand)
  assert not np.allclose(with_ema, state.generator.apply(
      {"params": state.g_params, "batch_stats": state.g_batch_stats}, z, train=False))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state():
  g16, d16 = Generator(SHAPE, 8, dtype=jnp.bfloat16), Discriminator(SHAPE, 8, dtype=jnp.bfloat16)
  state32 = make_state()
  state16 = state32.replace(generator=g16, discriminator=d16)
  new16, metrics16 = step_fn(state16, batch(), jax.random.key(0))
  new32, metrics32 = step_fn(state32, batch(), jax.random.key(0))
  for tree in (new16.g_params, new16.d_params, new16.g_opt_state, new16.d_opt_state, new16.ema_params):
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(tree))
  for key in ("d_loss", "g_loss"):  # the same step, computed at bfloat16 precision (8 mantissa bits)
    assert float(metrics16[key]) == pytest.approx(float(metrics32[key]), rel=0.05)
  fake16 = g16.apply({"params": state32.g_params, "batch_stats": state32.g_batch_stats}, jnp.ones((2, 16)), train=False)
  assert fake16.dtype == jnp.float32  # G's tanh output comes back as float32 for losses and metrics
