"""The private GAN step: D trained with DP-SGD on the private images, G only through D. Pure, like the others.

    from tlgan.steps import private_gan
    step = functools.partial(private_gan.train_step, clip_norm=1.0, noise_multiplier=1.0, expected_batch=64)
    state, metrics = jax.jit(step, donate_argnums=0)(state, batch, rng)    # batch: image, mask

Why this is private (the argument the README states): D's loss is mean_i real(D(x_i)) + mean_j fake(D(G(z_j)))
(`tlgan.losses.D_TERMS`). Only the real term reads private data; its per-example gradients are clipped to C and
summed, Gaussian noise N(0, (sigma C)^2) is added once, and the sum is divided by the expected batch — the DP-SGD
mechanism the accountant charges for. The fake term's gradient is a function of D's current parameters (already
a private output) and of G's (a function of earlier private outputs and public noise) only: post-processing, no
privacy cost, so it is added exactly, without clipping or noise. G's update reads only the updated D and its own
fakes: post-processing again. D must not mix examples (GroupNorm, not BatchNorm: `Discriminator(norm='group')`);
G's BatchNorm sees fakes only and is fine.

A projected D (`ProjectedDiscriminator(norm='group')`) is private in its heads only: the trunk (a network trained
on public data, in inference mode, behind stop_gradient) never learns, so the per-example gradients, clipping
and noise cover the heads' parameters, and the trunk's fixed BatchNorm statistics are read, never updated.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from tlgan.losses import D_TERMS, get_losses
from tlgan.models.projected import TRUNK
from tlgan.steps.gan import GANState, ema_update, generate_with_vjp, latents
from tlgan.steps.private import gaussian_noise, reweighted_clipped_sum

FROZEN = TRUNK  # the parameters of D that never learn (a projected D's pretrained trunk)


def train_step(state: GANState, batch: Dict[str, jax.Array], rng: jax.Array, axis_name: Optional[str] = None, *,
               clip_norm: float, noise_multiplier: float, expected_batch: float,
               microbatch_size: Optional[int] = None, clip_fake: bool = False, d_steps: int = 1
               ) -> Tuple[GANState, Dict[str, jax.Array]]:
  """One private D update on a padded Poisson batch of real images (`batch['mask']`), then one G update.

  Args:
    state: a `GANState` whose discriminator never mixes examples (no BatchNorm).
    batch: 'image' (real images in [-1, 1], NHWC) and 'mask' (bool: the real rows of the Poisson sample).
    rng: the run's key: latents and noise of step s come from (rng, s).
    axis_name: under pmap, the device axis.
    clip_norm, noise_multiplier, expected_batch, microbatch_size: as `tlgan.steps.private.train_step`.
    clip_fake: also clip the fake term's per-example gradients to `clip_norm` (no noise: they are public), so
      that both halves of D's gradient have the same scale; without it the exact fake term can outweigh the
      clipped real one, and D learns to call everything fake.
    d_steps: D steps per G step (Bie et al. 2023, "Private GANs, Revisited": a noisy D needs more steps to keep
      up with G): G, its EMA and its BatchNorm statistics change only at steps s with (s + 1) % d_steps == 0.
      Every step still computes G's gradient (its metrics stay meaningful; it costs little next to D's
      per-example gradients) and discards it on D-only steps.
  """
  discriminator = state.discriminator
  if getattr(discriminator, "norm", "batch") == "batch":
    raise ValueError("a private discriminator must not mix examples: BatchNorm statistics of private images are "
                     "refused; use model.d_norm=group")
  real_term, fake_term = D_TERMS[state.loss]
  _, g_loss_fn = get_losses(state.loss)
  real, mask = batch["image"], batch["mask"]
  fake, g_vjp, g_batch_stats = generate_with_vjp(state, latents(state, rng, real.shape[0], axis_name))
  fixed = {"batch_stats": state.d_batch_stats} if state.d_batch_stats else {}  # a projected D's trunk statistics
  trunk = {k: v for k, v in state.d_params.items() if k == FROZEN}  # never learns: outside the private gradient
  d_logits = lambda d_params, images: discriminator.apply({"params": {**d_params, **trunk}, **fixed}, images,
                                                          train=True)
  learning = {k: v for k, v in state.d_params.items() if k != FROZEN}
  if trunk:  # a projected D: the frozen trunk's features once per image; per-example gradients of the heads on them
    d_inputs = lambda images: jax.lax.stop_gradient(discriminator.apply(
        {"params": state.d_params, **fixed}, images, train=True, features_only=True))
    head_logits = lambda d_params, feats: discriminator.apply({"params": {**d_params, **trunk}, **fixed}, None,
                                                              train=True, stage_features=feats)
  else:
    d_inputs, head_logits = (lambda images: images), d_logits

  # per-example losses of one of D's terms (and the logits), as `reweighted_clipped_sum` takes them
  term_losses = lambda term: lambda d_params, inputs: (lambda logits: (term(logits), logits))(
      head_logits(d_params, inputs))

  # the private part: per-example clipped gradients of the real term, noise once on their sum
  real_sum, real_losses, real_logits, norms = reweighted_clipped_sum(
      term_losses(real_term), learning, d_inputs(real), mask, clip_norm=clip_norm, microbatch_size=microbatch_size)
  counts = {"count": jnp.sum(mask.astype(jnp.float32)),
            "clipped": jnp.sum((norms > clip_norm) & mask), "d_real_sum": jnp.sum(jax.nn.sigmoid(real_logits) * mask),
            "real_loss_sum": jnp.sum(real_losses * mask)}
  if axis_name is not None:
    real_sum, counts = jax.lax.psum((real_sum, counts), axis_name)
  noise = gaussian_noise(rng, state.step, real_sum, noise_multiplier * clip_norm)
  private_grads = jax.tree.map(lambda g, e: (g + e) / expected_batch, real_sum, noise)

  # the public part: the fakes' term, exact (post-processing of private D and G); D's inputs for the fakes
  # (a projected D's trunk features) once, for this term and for D(G(z)) below
  fake_inputs = d_inputs(jax.lax.stop_gradient(fake))
  if clip_fake:
    fake_sum, fake_losses, _, _ = reweighted_clipped_sum(
        term_losses(fake_term), learning, fake_inputs, jnp.ones(fake.shape[0], bool), clip_norm=clip_norm,
        microbatch_size=microbatch_size)
    fake_loss, fake_grads = jnp.mean(fake_losses), jax.tree.map(lambda g: g / fake.shape[0], fake_sum)
  else:
    fake_loss, fake_grads = jax.value_and_grad(
        lambda d_params: jnp.mean(fake_term(head_logits(d_params, fake_inputs))))(learning)
  if axis_name is not None:
    fake_grads, fake_loss = jax.lax.pmean((fake_grads, fake_loss), axis_name)
  d_grads = {**jax.tree.map(jnp.add, private_grads, fake_grads), **jax.tree.map(jnp.zeros_like, trunk)}
  d_updates, d_opt_state = state.d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  new_learning = {k: v for k, v in d_params.items() if k != FROZEN}
  fake_logits = head_logits(learning, fake_inputs)
  g_loss, fake_cotangent = jax.value_and_grad(lambda images: g_loss_fn(d_logits(new_learning, images)))(fake)
  (g_grads,) = g_vjp(fake_cotangent)
  if axis_name is not None:
    g_grads, g_loss = jax.lax.pmean((g_grads, g_loss), axis_name)
  g_updates, g_opt_state = state.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  ema_params = ema_update(state, g_params)
  if d_steps > 1:  # a D-only step keeps G's state as it was
    g_step = (state.step + 1) % d_steps == 0
    g_params, g_opt_state, ema_params, g_batch_stats = jax.tree.map(
        lambda new, old: jnp.where(g_step, new, old), (g_params, g_opt_state, ema_params, g_batch_stats),
        (state.g_params, state.g_opt_state, state.ema_params, state.g_batch_stats))
  count = jnp.maximum(counts["count"], 1.0)
  d_fake = jnp.mean(jax.nn.sigmoid(fake_logits))
  if axis_name is not None:
    d_fake = jax.lax.pmean(d_fake, axis_name)
  metrics = {"d_loss": counts["real_loss_sum"] / count + fake_loss, "g_loss": g_loss,
             "d_real": counts["d_real_sum"] / count, "d_fake": d_fake, "batch": counts["count"],
             "clipped_fraction": counts["clipped"] / count, "d_grad_norm": optax.global_norm(d_grads),
             "g_grad_norm": optax.global_norm(g_grads)}
  new_state = state.replace(step=state.step + 1, g_params=g_params, g_batch_stats=g_batch_stats, d_params=d_params,
                            g_opt_state=g_opt_state, d_opt_state=d_opt_state, ema_params=ema_params)
  return new_state, metrics
