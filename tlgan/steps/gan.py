"""The GAN training step: pure, compiled by the caller.

    from tlgan.steps.gan import train_step
    state, metrics = jax.jit(train_step, donate_argnums=0)(state, batch, rng)

One step is one discriminator update followed by one generator update on the same fakes, as in the
pytorch/examples DCGAN: G runs forward once (kept as a VJP), D is updated on (real, fake), and the generator's
gradient is pulled back through the *updated* D and that single G forward. All randomness of step `s` is
`fold_in(rng, s)`, so a resumed run draws exactly the numbers an uninterrupted one would.
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from tlgan.losses import get_losses

Metrics = Dict[str, jax.Array]


class GANState(struct.PyTreeNode):
  """Everything a GAN step reads and writes. Modules and optimisers are static (not traced)."""
  step: jax.Array
  g_params: Any
  g_batch_stats: Any
  d_params: Any
  d_batch_stats: Any
  g_opt_state: Any
  d_opt_state: Any
  ema_params: Any  # an empty dict when the EMA is off
  generator: nn.Module = struct.field(pytree_node=False)
  discriminator: nn.Module = struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  latent_dim: int = struct.field(pytree_node=False, default=100)
  loss: str = struct.field(pytree_node=False, default="nonsaturating")
  ema_decay: float = struct.field(pytree_node=False, default=0.0)

  @property
  def sampling_params(self):
    """EMA weights of G when the EMA is on, else G's weights."""
    return self.ema_params if self.ema_decay > 0 else self.g_params


def init_state(rng, generator: nn.Module, discriminator: nn.Module, g_tx, d_tx, *, image_shape,
               latent_dim: int = 100, loss: str = "nonsaturating", ema_decay: float = 0.0) -> GANState:
  """Initialises G and D (their BatchNorm statistics too) and both optimisers."""
  get_losses(loss)  # fail early on an unknown name
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")

  def arrays(rng):
    g_key, d_key = jax.random.split(rng)
    g_vars = generator.init(g_key, jnp.zeros((2, latent_dim), jnp.float32), train=False)
    d_vars = discriminator.init(d_key, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    g_params, d_params = g_vars["params"], d_vars["params"]
    ema = jax.tree.map(jnp.copy, g_params) if ema_decay > 0 else {}
    return (g_vars, d_vars, g_tx.init(g_params), d_tx.init(d_params), ema)

  # One compiled program (op by op, the initialisers were ~150 small compilations: seconds of every start).
  g_vars, d_vars, g_opt_state, d_opt_state, ema = jax.jit(arrays)(rng)
  return GANState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars["params"], g_batch_stats=g_vars.get("batch_stats", {}),
      d_params=d_vars["params"], d_batch_stats=d_vars.get("batch_stats", {}),
      g_opt_state=g_opt_state, d_opt_state=d_opt_state, ema_params=ema,
      generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx,
      latent_dim=latent_dim, loss=loss, ema_decay=ema_decay)


def _mean_over(axis_name: Optional[str], tree):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def latents(state: GANState, rng: jax.Array, n: int, axis_name: Optional[str] = None) -> jax.Array:
  """Step `state.step`'s latents for `n` rows: under pmap, this device's rows of the global batch's latents
  (the trajectory of one device, whatever the count)."""
  key = jax.random.fold_in(rng, state.step)
  if axis_name is None:
    return jax.random.normal(key, (n, state.latent_dim), jnp.float32)
  size, i = jax.lax.axis_size(axis_name), jax.lax.axis_index(axis_name)
  return jax.lax.dynamic_slice_in_dim(jax.random.normal(key, (size * n, state.latent_dim), jnp.float32), i * n, n)


def generate_with_vjp(state: GANState, z: jax.Array):
  """(fakes, the VJP of G at its parameters, G's updated BatchNorm statistics): G runs forward once."""
  def generate(g_params):
    fake, new_vars = state.generator.apply({"params": g_params, "batch_stats": state.g_batch_stats}, z,
                                           train=True, mutable=["batch_stats"])
    return fake, new_vars["batch_stats"]
  return jax.vjp(generate, state.g_params, has_aux=True)


def ema_update(state: GANState, g_params):
  """The EMA of G's new parameters (an empty dict when the EMA is off)."""
  if state.ema_decay <= 0:
    return state.ema_params
  # Warm-up as in tf.train.ExponentialMovingAverage(num_updates=step): early on the average must not be
  # dominated by the random initial weights, which a short run would otherwise show in its samples.
  t = state.step.astype(jnp.float32)
  decay = jnp.minimum(state.ema_decay, (1.0 + t) / (10.0 + t))
  return optax.incremental_update(g_params, state.ema_params, 1.0 - decay)


def train_step(state: GANState, batch: Dict[str, jax.Array], rng: jax.Array,
               axis_name: Optional[str] = None) -> Tuple[GANState, Metrics]:
  """One D update, then one G update. `batch['image']`: float images in [-1, 1], NHWC.

  Args:
    state: the current `GANState`.
    batch: a dict with 'image'.
    rng: the run's base key; this step uses `fold_in(rng, state.step)`.
    axis_name: under `pmap`, the device axis: gradients and metrics are averaged over it.
  Returns:
    The new state and a dict of scalar metrics (still on device).
  """
  d_loss_fn, g_loss_fn = get_losses(state.loss)
  real = batch["image"]
  discriminator = state.discriminator
  fake, g_vjp, g_batch_stats = generate_with_vjp(state, latents(state, rng, real.shape[0], axis_name))

  def d_objective(d_params):
    real_logits, new_vars = discriminator.apply(
        {"params": d_params, "batch_stats": state.d_batch_stats}, real, train=True, mutable=["batch_stats"])
    fake_logits, new_vars = discriminator.apply(
        {"params": d_params, "batch_stats": new_vars["batch_stats"]}, jax.lax.stop_gradient(fake),
        train=True, mutable=["batch_stats"])
    return d_loss_fn(real_logits, fake_logits), (real_logits, fake_logits, new_vars["batch_stats"])

  (d_loss, (real_logits, fake_logits, d_batch_stats)), d_grads = jax.value_and_grad(
      d_objective, has_aux=True)(state.d_params)
  d_grads = _mean_over(axis_name, d_grads)
  d_updates, d_opt_state = state.d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  def g_objective(fake_images):
    # D in train mode (batch statistics), as during its own update; its running-stat update is discarded.
    logits, _ = discriminator.apply({"params": d_params, "batch_stats": d_batch_stats}, fake_images,
                                    train=True, mutable=["batch_stats"])
    return g_loss_fn(logits)

  g_loss, fake_cotangent = jax.value_and_grad(g_objective)(fake)
  (g_grads,) = g_vjp(fake_cotangent)
  g_grads = _mean_over(axis_name, g_grads)
  g_updates, g_opt_state = state.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  ema_params = ema_update(state, g_params)
  metrics = _mean_over(axis_name, {
      "d_loss": d_loss,
      "g_loss": g_loss,
      "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),  # mean D(x)
      "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),  # mean D(G(z)), before D's update
      "d_grad_norm": optax.global_norm(d_grads),
      "g_grad_norm": optax.global_norm(g_grads),
  })
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_batch_stats=g_batch_stats, d_params=d_params,
      d_batch_stats=d_batch_stats, g_opt_state=g_opt_state, d_opt_state=d_opt_state, ema_params=ema_params)
  return new_state, metrics


def sample(state: GANState, z: jax.Array) -> jax.Array:
  """Images from latents with the sampling weights (EMA when on) and G's running BatchNorm statistics."""
  return state.generator.apply({"params": state.sampling_params, "batch_stats": state.g_batch_stats}, z,
                               train=False)
