"""DP-SGD for the classifier trainer (`config.dp.enabled`): the checks, the privacy plan, the batches, epsilon.

The classifier trainer calls `check_config` with the other checks, `plan` once the training set's size and the
number of steps are known (it calibrates the noise to `dp.target_epsilon`, or takes `dp.noise_multiplier`, and
refuses a run whose epsilon would exceed `dp.max_epsilon`), then trains with `step_fn` on `batches`, logging
`epsilon_hook`'s epsilon as it goes. Everything a run draws is a function of (seed, step): a resumed run reads the
batches and adds the noise an uninterrupted run would, and its epsilon continues from the resumed step.
"""

import dataclasses
import functools
import itertools
import logging
import math
from typing import Any, Callable, Dict, Iterator, Optional

import jax
import numpy as np

from tlgan import privacy, stopping
from tlgan.errors import ConfigError
from tlgan.models import scattering, small_cnn
from tlgan.steps import private as private_step

def numbers():
  """The dp section's numeric fields, by meaning (for the trainers' NUMBERS tables)."""
  from tlgan import config_checks as n
  return {"dp.clip_norm": n.POSITIVE, "dp.noise_multiplier": n.NON_NEGATIVE, "dp.target_epsilon": n.NON_NEGATIVE,
          "dp.max_epsilon": n.NON_NEGATIVE, "dp.delta": n.FRACTION, "dp.max_batch": n.NON_NEGATIVE_INT,
          "dp.microbatch": n.NON_NEGATIVE_INT}


# model.precondition: 'none', or 'channels': the ScatterNet features' channels whitened (`scattering.channel_whitening`)
# with a noisy release of the training set's channel second moment (`privacy.noisy_second_moment`), before training
PRECONDITIONS = ("none", "channels")
SAMPLING = "truncated Poisson (each example with probability q, at most max_batch kept)"
ACCOUNTANT = "PLD (dp_accounting, TruncatedSubsampledGaussianDpEvent), add-or-remove-one"
# dp.microbatch 0 (auto): examples per pass of per-example gradient norms such that the largest per-example
# array the pass holds (one layer's per-example kernel gradient, `tlgan.steps.ghost_norms`) stays within this
MICROBATCH_BYTES = 2**29


def enabled(config) -> bool:
  return "dp" in config and bool(config.dp.enabled)


def check_trunk(config, trunk_meta) -> None:
  """A private GAN's projected D: its frozen trunk must not have been trained on the private data (it is not
  accounted for; only the heads are private)."""
  if enabled(config) and trunk_meta.dataset and trunk_meta.dataset == config.data.name:
    raise ConfigError(f"dp.enabled with a trunk trained on {config.data.name}, the private data itself "
                      f"(model.d_trunk_weights={config.model.d_trunk_weights}): that training is outside the privacy "
                      "accounting; use a trunk trained on public data (another dataset)")


def check_config(config, prefix: str = "") -> None:
  """What a DP run refuses from the config alone (one line each)."""
  if not enabled(config):
    return
  d = config.dp
  if ("mode" in config and config.model.norm == "batch" and config.mode == "full"  # a classifier ...
      and config.model.arch not in small_cnn.ARCHS):  # ... with normalisation layers (the small CNNs have none)
    raise ConfigError(f"{prefix}dp.enabled with {prefix}model.norm=batch trains BatchNorm statistics on private data "
                      f"(they mix examples): set {prefix}model.norm=group or frozen_batch")
  if "discriminator" in config.model:  # a GAN: D is the network that reads private data
    if config.model.d_norm == "batch":
      heads = " (the projected D's heads)" if config.model.discriminator == "projected" else ""
      raise ConfigError(f"dp.enabled with model.d_norm=batch: D's BatchNorm{heads} mixes private examples: set "
                        "model.d_norm=group")
    if config.transfer.init_workdir:
      raise ConfigError("dp.enabled with transfer.init_workdir: a D trained elsewhere may have seen this private "
                        "data without accounting: set transfer.init_workdir=''")
  privacy.check_noise(f"{prefix}dp.noise_multiplier", d.noise_multiplier, zero_allowed=True)
  if d.target_epsilon and d.noise_multiplier:
    raise ConfigError(f"{prefix}dp.target_epsilon={d.target_epsilon} and {prefix}dp.noise_multiplier="
                      f"{d.noise_multiplier} both set the noise: set one of them to 0")
  if d.max_epsilon and d.target_epsilon > d.max_epsilon:
    raise ConfigError(f"{prefix}dp.target_epsilon={d.target_epsilon} exceeds the budget {prefix}dp.max_epsilon="
                      f"{d.max_epsilon}: lower the target or raise the budget")
  if config.get("grad_accum_steps", 1) != 1:
    raise ConfigError(f"{prefix}grad_accum_steps={config.grad_accum_steps} with {prefix}dp.enabled: DP runs "
                      f"accumulate per-example gradients themselves; set {prefix}grad_accum_steps=1 (and "
                      f"{prefix}dp.microbatch to bound memory)")
  if config.data.pipeline == "streaming":
    raise ConfigError(f"{prefix}dp.enabled samples batches from data in memory: set {prefix}data.pipeline=memory")
  if config.data.num_shards > 1:
    raise ConfigError(f"{prefix}data.num_shards={config.data.num_shards} with {prefix}dp.enabled: every process "
                      f"holds the whole training set and samples the same Poisson batch; set {prefix}data.num_shards=0")


def preconditioned(config) -> bool:
  return config.model.get("precondition", "none") != "none"


def check_precondition(config, prefix: str = "") -> None:
  """What a classifier config with model.precondition refuses (one line each)."""
  if not preconditioned(config):
    return
  m, p = config.model, prefix
  if not issubclass(small_cnn.ARCHS.get(m.arch, type(None)), scattering.ScatterFront):
    raise ConfigError(f"{p}model.precondition={m.precondition} whitens scattering features: it applies to "
                      f"{p}model.arch=scatter_linear or scatter_cnn, not {m.arch}; set {p}model.precondition=none")
  if not enabled(config):
    raise ConfigError(f"{p}model.precondition={m.precondition} is computed by the DP trainer: set {p}dp.enabled=True "
                      f"(with {p}dp.noise_multiplier=0 and {p}model.precondition_noise=0 for a non-private run)")
  if config.augment.crop_padding or config.augment.flip:
    raise ConfigError(f"{p}model.precondition={m.precondition} needs the features computed once per image, without "
                      f"augmentation: set {p}augment.crop_padding=0 and {p}augment.flip=False")
  privacy.check_noise(f"{p}model.precondition_noise", m.precondition_noise, zero_allowed=True)
  if not m.precondition_noise and (config.dp.noise_multiplier or config.dp.target_epsilon):
    raise ConfigError(f"{p}model.precondition_noise=0 releases the private features' second moment without noise "
                      f"in a private run: set it > 0 (20 in configs/private.py:whitened)")


@dataclasses.dataclass(frozen=True)
class Plan:
  dp: privacy.DpSgd
  clip_norm: float
  microbatch: Optional[int]
  calibrated: bool

  def summary(self, steps: int) -> Dict[str, Any]:
    eps = self.dp.epsilon(steps)
    return {"epsilon": eps if math.isfinite(eps) else None, "private": math.isfinite(eps),
            "delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier,
            "noise_calibrated_to_target": self.calibrated, "clip_norm": self.clip_norm,
            "expected_batch": self.dp.expected_batch, "max_batch": self.dp.max_batch,
            "dataset_size": self.dp.dataset_size, "sampling_probability": self.dp.sampling_probability,
            "steps": steps, "sampling": SAMPLING, "accountant": ACCOUNTANT,
            "releases_before_training": list(self.dp.releases)}


def default_delta(dataset_size: int) -> float:
  """The power of ten below 1/N (60,000 examples: 1e-5; 1,797: 1e-4)."""
  return 10.0 ** math.floor(math.log10(1.0 / dataset_size) - 1e-12)


def plan(config, *, dataset_size: int, total_steps: int, largest_trainable: int) -> Plan:
  """The run's privacy parameters; refuses, in one line, a run that would exceed `dp.max_epsilon`."""
  d = config.dp
  devices = jax.device_count()  # over all processes: each holds the whole set, samples the same batch, keeps its rows
  delta = d.delta or default_delta(dataset_size)
  if delta >= 1.0 / dataset_size:
    raise ConfigError(f"dp.delta={delta:g} is not below 1/N = {1 / dataset_size:.3g} (N = {dataset_size} training "
                      f"examples): set dp.delta=0 ({default_delta(dataset_size):g}) or a smaller value")
  if config.batch_size > dataset_size:
    raise ConfigError(f"batch_size={config.batch_size} (the expected Poisson batch) exceeds the {dataset_size} "
                      f"training examples: set batch_size to at most {dataset_size}")
  max_batch = d.max_batch or privacy.default_max_batch(config.batch_size, dataset_size, multiple=8 * devices)
  if max_batch % devices:
    raise ConfigError(f"dp.max_batch={max_batch} is not divisible by the {devices} devices: set a multiple of "
                      f"{devices} (or 0: automatic)")
  if config.batch_size > max_batch:
    raise ConfigError(f"batch_size={config.batch_size} (the expected batch) exceeds dp.max_batch={max_batch}: "
                      "set dp.max_batch=0 (automatic) or larger")
  # a statistic released once before training (model.precondition) is composed with the steps
  releases = ((float(config.model.precondition_noise),)
              if preconditioned(config) and config.model.precondition_noise else ())
  params = dict(dataset_size=dataset_size, expected_batch=float(config.batch_size), max_batch=max_batch, delta=delta,
                releases=releases)
  sigma = d.noise_multiplier
  if d.target_epsilon:
    sigma = privacy.calibrate_noise(d.target_epsilon, steps=total_steps, **params)
  dp = privacy.DpSgd(noise_multiplier=sigma, **params)
  if d.max_epsilon:
    eps = dp.epsilon(total_steps)
    if eps > d.max_epsilon:
      raise ConfigError(f"{total_steps} steps reach epsilon {eps:.3g} > dp.max_epsilon={d.max_epsilon} (delta "
                        f"{delta:g}): train at most {steps_within(dp, d.max_epsilon, total_steps)} steps, or raise "
                        "the noise (dp.noise_multiplier, or dp.target_epsilon to calibrate it)")
  per_device = max_batch // devices
  microbatch = d.microbatch or _auto_microbatch(per_device, largest_trainable)
  if per_device % microbatch:
    raise ConfigError(f"dp.microbatch={microbatch} does not divide the {per_device} examples per device "
                      f"(dp.max_batch {max_batch} / {devices} devices): choose a divisor, or 0 (automatic)")
  result = Plan(dp=dp, clip_norm=float(d.clip_norm), microbatch=None if microbatch == per_device else microbatch,
                calibrated=bool(d.target_epsilon))
  logging.info("DP-SGD: N=%d, q=%.5f (expected batch %g, at most %d), sigma=%.4f%s, C=%g, delta=%g; after %d steps "
               "epsilon=%.3f%s; per-example gradient norms in micro-batches of %d", dataset_size,
               dp.sampling_probability, dp.expected_batch, max_batch, sigma,
               " (calibrated)" if d.target_epsilon else "", d.clip_norm, delta, total_steps, dp.epsilon(total_steps),
               f" (with a release of noise multiplier {releases[0]:g} before training)" if releases else "", microbatch)
  if sigma == 0:
    logging.warning("DP-SGD without noise (dp.noise_multiplier=0): clipped, Poisson-sampled, and NOT private")
  stopping.check("computing the privacy accounting")  # calibration can take a while: a stop asked then ends here
  return result


def steps_within(dp: privacy.DpSgd, budget: float, upper: int) -> int:
  """The most steps (<= upper) whose epsilon stays within `budget`."""
  low, high = 0, upper
  while low < high:
    mid = (low + high + 1) // 2
    low, high = (mid, high) if dp.epsilon(mid) <= budget else (low, mid - 1)
  return low


def _auto_microbatch(per_device: int, largest_trainable: int) -> int:
  cap = max(1, MICROBATCH_BYTES // (4 * max(largest_trainable, 1)))
  return max(d for d in range(1, per_device + 1) if per_device % d == 0 and d <= cap)


def largest_trainable(params, mode: str) -> int:
  """The size of the largest array that gets per-example gradients in `mode` (what `plan` bounds)."""
  mask = private_step.trainable_mask(params, mode)
  return max((int(np.size(p)) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m), default=0)


def step_fn(plan_: Plan, mode: str) -> Callable:
  return functools.partial(private_step.train_step, clip_norm=plan_.clip_norm,
                           noise_multiplier=plan_.dp.noise_multiplier, expected_batch=plan_.dp.expected_batch,
                           mode=mode, microbatch_size=plan_.microbatch)


def batches(images: np.ndarray, labels: np.ndarray, plan_: Plan, *, seed: int, start_step: int,
            map_fn: Callable) -> Iterator[Dict[str, np.ndarray]]:
  """This process's rows of step s's padded truncated Poisson batch, preprocessed by `map_fn(batch, step)`
  (NumPy, per example). Every process holds the whole training set and draws the same batch, a function of
  (seed, step), and preprocesses all of it (augmentation draws are per row of the whole batch, as in one
  process); process p keeps the p-th of `jax.process_count()` equal slices of its rows (max_batch is a multiple
  of the global device count), which is where the global batch array puts them."""
  dp = plan_.dp
  rows = dp.max_batch // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  for step in itertools.count(start_step):
    indices, mask = privacy.poisson_batch(seed=seed, step=step, dataset_size=dp.dataset_size,
                                          expected_batch=dp.expected_batch, max_batch=dp.max_batch)
    batch = map_fn({"image": images[indices], "label": labels[indices]}, step, 0)
    yield {"image": batch["image"][mine], "label": batch["label"][mine].astype(np.int32), "mask": mask[mine]}


def channel_preconditioner(features: np.ndarray, *, noise_multiplier: float, seed: int) -> np.ndarray:
  """W for `ScatterFront.precondition` from a ScatterNet model's training features (N, H, W, C), computed once
  before training: `scattering.channel_whitening` of `privacy.noisy_second_moment`, the release that `plan`
  composes with the steps (model.precondition_noise).

  The sensitivity bound B is the feature count H W C, which holds for every possible image, not just these:
  the features are GroupNorm'd without affine parameters, and a group of n values standardised with its own
  mean and variance has squares summing to n var / (var + eps) <= n. (`noisy_second_moment` also scales down
  any example above B, so a rounding error cannot break the bound.)"""
  bound = float(np.prod(features.shape[1:]))
  moment = privacy.noisy_second_moment(features, norm_bound_sq=bound, noise_multiplier=noise_multiplier, seed=seed)
  w = scattering.channel_whitening(moment)
  eigen = np.linalg.eigvalsh(w.astype(np.float64))
  logging.info("channel preconditioner: second moment of %d examples x %d positions released with noise multiplier "
               "%g (sensitivity %g); W's eigenvalues %.3f..%.3f", len(features), int(np.prod(features.shape[1:-1])),
               noise_multiplier, bound, eigen.min(), eigen.max())
  return w


def epsilon_hook(plan_: Plan) -> Callable:
  """A loop hook: epsilon at the step reached (a function of the step count, so it continues on resume)."""
  def hook(step, state):
    del state
    eps = plan_.dp.epsilon(step)
    return {"epsilon": eps} if math.isfinite(eps) else {}  # no noise: no epsilon (the log says so once)
  return hook
