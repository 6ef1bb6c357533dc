"""DP-SGD steps: per-example gradients clipped to a norm, Gaussian noise once on their sum: pure, like the others.

    from tlgan.steps import private
    step = functools.partial(private.train_step, clip_norm=1.0, noise_multiplier=1.1, expected_batch=256)
    state, metrics = jax.jit(step, donate_argnums=0)(state, batch, rng)   # batch: image, label, mask

The batch is a padded truncated Poisson sample (`tlgan.privacy.poisson_batch`): rows with mask False
contribute nothing. The sum of per-example clipped gradients is computed without any per-example gradient:
per-example gradient norms from one batched backward pass (`ghost_norms`: each layer's share from its inputs and
output gradients; vmapped per-example gradients for a layer it has no rule for; in micro-batches of
`microbatch_size` when memory demands), then one batched gradient of the clip-weighted loss (`clipped_grad_sum`,
checked against `jax_privacy.clipped_grad`, which materialises per-example gradients, and against an explicit
loop). A padding row or a row whose gradient is
not finite contributes exactly zero, so the sensitivity stays C whatever the data.
Only the trainable parameters (not the 'frozen' group of `steps.classifier.make_optimizer`, e.g. a linear
probe's backbone) get per-example gradients and noise. The noise is a function of (rng, step): a resumed run
adds the noise an uninterrupted run adds. The noisy sum is divided by the expected batch size (public), and
any optax optimiser follows (`state.tx`).

Privacy needs models whose outputs for one example do not depend on the others: `state.bn_train` (BatchNorm
in training mode) is refused.
"""

from typing import Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from tlgan import param_groups
from tlgan.models import initializers
from tlgan.steps import classifier as clf
from tlgan.steps import ghost_norms

NOISE_TAG = 0xD1F  # keeps the noise stream apart from other streams folded from the same rng


def trainable_mask(params, mode: str):
  """True for parameters that learn in `mode` (the head only in 'linear_probe')."""
  default = "frozen" if mode == "linear_probe" else "backbone"
  return jax.tree.map(lambda group: group != "frozen", param_groups.labels(params, [(clf.HEAD, "head")], default))


def split(params, mask):
  """(trainable, frozen): two flat dicts path -> array."""
  flat, flags = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
  return ({k: v for k, v in flat.items() if flags[k]}, {k: v for k, v in flat.items() if not flags[k]})


def gaussian_noise(rng, step, tree, std):
  """N(0, std^2) for every leaf of `tree`, a function of (rng, step) and the leaf's position."""
  key = jax.random.fold_in(jax.random.fold_in(rng, NOISE_TAG), step)
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([std * initializers.normal(k, x.shape, jnp.float32).astype(x.dtype)
                            for k, x in zip(keys, leaves)])


IMPLS = ("ghost", "reweight", "materialize")
NORM_METHODS = ("ghost", "vmap")


def _example_losses(state: clf.ClassifierState, frozen, trainable, images, labels):
  """Per-example cross-entropy and correctness of a batch (the model never mixes examples: see train_step)."""
  params = traverse_util.unflatten_dict({**frozen, **trainable})
  # train=False: no batch statistics (GroupNorm and frozen BatchNorm do not have a training mode anyway)
  logits = state.model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=False)
  return (clf.cross_entropy(logits, labels, state.num_classes, state.label_smoothing),
          (jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def per_example_grad_norms(example_losses, params, inputs, real, microbatch_size=None, method: str = "ghost"):
  """||grad of example i's loss|| for every row of `inputs` (a pytree of arrays with a leading batch axis);
  `example_losses(params, inputs) -> (losses (N,), aux)`. method 'ghost': `ghost_norms` (one batched backward
  pass), falling back to 'vmap' (vmapped per-example gradients) for a model it has no rule for. In micro-batches
  of `microbatch_size` (chunks in sequence; chunks with no real row are skipped)."""
  if method not in NORM_METHODS:
    raise ValueError(f"method must be one of {NORM_METHODS}, got {method!r}")

  def norm_of(example):
    loss = lambda p: example_losses(p, jax.tree.map(lambda x: x[None], example))[0][0]
    return optax.global_norm(jax.grad(loss)(params))

  def norms_of(chunk):
    if method == "ghost":
      try:
        return ghost_norms.per_example_grad_norms(example_losses, params, chunk)
      except ghost_norms.Unsupported as e:
        logging.warning("per-example gradient norms from vmapped per-example gradients (slower): %s", e)
    return jax.vmap(norm_of)(chunk)

  n = real.shape[0]
  size = microbatch_size or n
  if size >= n:
    return norms_of(inputs)
  chunks = lambda x: x.reshape(n // size, size, *x.shape[1:])

  def chunk_norms(args):
    example_chunk, r = args
    return jax.lax.cond(jnp.any(r), lambda: norms_of(example_chunk), lambda: jnp.zeros((size,), jnp.float32))
  return jax.lax.map(chunk_norms, (jax.tree.map(chunks, inputs), chunks(real))).reshape(n)


def reweighted_clipped_sum(example_losses, params, inputs, real, *, clip_norm, microbatch_size=None,
                           norms_method: str = "ghost"):
  """(sum over real rows of per-example gradients clipped to `clip_norm`, per-example losses, aux, norms).

  Per-example gradient norms first, then ONE batched gradient of sum_i c_i loss_i with c_i = min(1, C/||g_i||)
  held constant: that is sum_i c_i g_i because example i's loss depends on no other example (the models DP-SGD
  accepts never mix examples; `example_losses` must not either). A padding row, or a row whose norm is not
  finite, gets c_i = 0 and zeroed inputs in the batched pass: it contributes exactly nothing."""
  norms = per_example_grad_norms(example_losses, params, inputs, real, microbatch_size, norms_method)
  ok = real & jnp.isfinite(norms)
  scale = jnp.where(ok, jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30)), 0.0)
  safe = jax.tree.map(lambda x: jnp.where(ok.reshape(-1, *([1] * (x.ndim - 1))), x, jnp.zeros_like(x)), inputs)

  def weighted(p):
    losses, aux = example_losses(p, safe)
    return jnp.sum(jax.lax.stop_gradient(scale) * losses), (losses, aux)

  grads, (losses, aux) = jax.grad(weighted, has_aux=True)(params)
  return grads, losses, aux, norms


def clipped_grad_sum(state: clf.ClassifierState, batch, *, clip_norm: float, mode: str = "full",
                     microbatch_size: Optional[int] = None, impl: str = "ghost"):
  """(sum over real examples of per-example gradients clipped to `clip_norm` (a flat dict of the trainable
  parameters), per-example losses, per-example correctness, per-example gradient norms before clipping).

  impl='ghost' (default): `reweighted_clipped_sum` with norms from `ghost_norms`: no per-example gradient at all.
  impl='reweight': the same with norms from vmapped per-example gradients (never summed as a (batch x
  parameters) array: 4x faster than materialising them for ResNet18 at batch 128 on a 2-core CPU).
  impl='materialize': jax_privacy's `clipped_grad` (per-example gradients, clipped and summed): the reference.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  trainable, frozen = split(state.params, trainable_mask(state.params, mode))
  images, labels, real = batch["image"], batch["label"], batch["mask"]
  if impl == "materialize":
    from jax_privacy import clipping

    def loss_fn(trainable, image, label):
      losses, correct = _example_losses(state, frozen, trainable, image, label)
      return losses[0], (losses[0], correct[0])

    grad_fn = clipping.clipped_grad(loss_fn, has_aux=True, l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                                    microbatch_size=microbatch_size, return_grad_norms=True)
    grads, aux = grad_fn(trainable, images, labels, is_padding_example=jnp.logical_not(real))
    losses, correct = aux.aux
    return grads, losses, correct, aux.grad_norms

  example_losses = lambda t, ex: _example_losses(state, frozen, t, ex["image"], ex["label"])
  return reweighted_clipped_sum(example_losses, trainable, {"image": images, "label": labels}, real,
                                clip_norm=clip_norm, microbatch_size=microbatch_size,
                                norms_method="ghost" if impl == "ghost" else "vmap")


def train_step(state: clf.ClassifierState, batch: Dict[str, jax.Array], rng: jax.Array,
               axis_name: Optional[str] = None, *, clip_norm: float, noise_multiplier: float,
               expected_batch: float, mode: str = "full", microbatch_size: Optional[int] = None,
               impl: str = "ghost") -> Tuple[clf.ClassifierState, Dict[str, jax.Array]]:
  """One DP-SGD update of a classifier on a padded Poisson batch (`batch['mask']` marks the real rows).

  Args:
    state: a `ClassifierState` whose model never mixes examples (`bn_train` False: GroupNorm, frozen
      BatchNorm, or BatchNorm of a linear probe's frozen backbone).
    batch: 'image', 'label' and 'mask' (bool), the same number of rows.
    rng: the run's key; the noise of a step is drawn from (rng, state.step).
    axis_name: under pmap, the device axis: clipped sums are added over it before the (single) noise.
    clip_norm: C, the bound on each example's gradient norm.
    noise_multiplier: sigma; the noise has standard deviation sigma * C.
    expected_batch: q * N, the divisor of the noisy sum.
    mode: 'full' or 'linear_probe' (which parameters get per-example gradients).
    microbatch_size: examples per vmap (None: the whole batch at once).
    impl: how per-example clipping is computed ('ghost', 'reweight' or 'materialize': see `clipped_grad_sum`).
  """
  if state.bn_train:
    raise ValueError("DP-SGD with BatchNorm in training mode mixes examples (batch statistics of private data): "
                     "use model.norm=group or frozen_batch")
  grads, losses, correct, norms = clipped_grad_sum(state, batch, clip_norm=clip_norm, mode=mode,
                                                   microbatch_size=microbatch_size, impl=impl)
  real = batch["mask"].astype(jnp.float32)
  sums = {"loss": jnp.sum(losses * real), "correct": jnp.sum(correct * real), "count": jnp.sum(real),
          "clipped": jnp.sum((norms > clip_norm) * real), "norm": jnp.sum(norms * real)}
  if axis_name is not None:
    grads, sums = jax.lax.psum((grads, sums), axis_name)
  noisy = jax.tree.map(jnp.add, grads, gaussian_noise(rng, state.step, grads, noise_multiplier * clip_norm))
  flat = traverse_util.flatten_dict(state.params)
  full = traverse_util.unflatten_dict({k: noisy[k] / expected_batch if k in noisy else jnp.zeros_like(v)
                                       for k, v in flat.items()})
  updates, opt_state = state.tx.update(full, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  count = jnp.maximum(sums["count"], 1.0)
  metrics = {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count, "batch": sums["count"],
             "clipped_fraction": sums["clipped"] / count, "grad_norm_mean": sums["norm"] / count,
             "update_norm": optax.global_norm(full)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
