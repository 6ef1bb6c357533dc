"""Differential privacy for DP-SGD runs: the sampling the accounting assumes, and the accounting.

Sampling: truncated Poisson. At step s every training example is in the batch independently with probability
q = expected_batch / N; if more than `max_batch` are drawn, `max_batch` of them are kept uniformly at random
(jax_privacy's `CyclicPoissonSampling` with truncation and cycle length 1; drawn here as a binomial count,
then that many distinct examples, which is the same distribution). The batch is padded to `max_batch` rows with
a mask, so shapes stay static, and it is a function of (seed, step) alone: a resumed run draws the same batches.

Accounting: `dp_accounting`'s PLD accountant with its `TruncatedSubsampledGaussianDpEvent` (the truncated
Poisson subsampled Gaussian, arXiv:2508.15089), add-or-remove-one neighbouring datasets. The per-step
sensitivity is the clipping norm C (per-example gradients clipped to C, summed), the noise N(0, (sigma C)^2) is
added once to the sum, which is then divided by the public expected batch size. The PLD is discretised at
1e-3 (pessimistic: epsilon is an upper bound; 0.4% above the 1e-4 grid for Abadi et al.'s MNIST setting).
Statistics of the private data released once before training with the Gaussian mechanism (`DpSgd.releases`:
their noise multipliers) are composed with the steps in the same PLD.
Fixed-size shuffled batches (what the non-private trainers read) are not what this accounting assumes; a DP
run never reads them.

    dp = DpSgd(dataset_size=60000, expected_batch=256, max_batch=320, noise_multiplier=1.1, delta=1e-5)
    dp.epsilon(steps=14062)                                      # 2.42
    DpSgd(..., releases=(20.0,))  # and a statistic released once before training, noise multiplier 20
    sigma = calibrate_noise(3.0, steps=14062, dataset_size=60000, expected_batch=256, max_batch=320, delta=1e-5)
    indices, mask = poisson_batch(seed=0, step=7, dataset_size=60000, expected_batch=256, max_batch=320)
    moment = noisy_second_moment(features, norm_bound_sq=3969.0, noise_multiplier=20.0, seed=0)  # one release
"""

import dataclasses
import functools
import math
from typing import Tuple

import numpy as np

from tlgan.errors import ConfigError

DISCRETISATION = 1e-3  # the PLD's value discretisation interval (pessimistic estimate: an upper bound)
# The noise multipliers the accountant takes (0 aside: no noise). Below 0.1 epsilon is in the hundreds and the PLD of
# one step no longer fits in memory (its privacy loss spans ~1/sigma^2 at DISCRETISATION: 4 GB at 1e-3); above
# 1e4 epsilon is 0 to the accountant's precision, and near 1e300 the PLD overflows.
NOISE_RANGE = (0.1, 1e4)
_SAMPLING_TAG = 0xD9  # keeps the sampling stream apart from any other NumPy stream seeded with (seed, step)
_RELEASE_TAG = 0x5EC0  # the noise stream of `noisy_second_moment`


def default_max_batch(expected_batch: float, dataset_size: int, multiple: int = 1) -> int:
  """Truncation at 4 standard deviations above the expected batch (rounded up to `multiple`, e.g. the device
  count): truncation then almost never happens and costs ~1% of epsilon (0.4% in Abadi et al.'s setting);
  truncating at the expected batch itself would multiply epsilon by ~5."""
  q = expected_batch / dataset_size
  size = math.ceil(expected_batch + 4.0 * math.sqrt(expected_batch * max(1.0 - q, 0.0)))  # q > 1: DpSgd refuses it
  return min(-(-size // multiple) * multiple, -(-dataset_size // multiple) * multiple)


def check_noise(name: str, value: float, zero_allowed: bool = False) -> None:
  """Refuses, in one line, a noise multiplier outside NOISE_RANGE (0 too unless `zero_allowed`)."""
  if (value == 0 and zero_allowed) or NOISE_RANGE[0] <= value <= NOISE_RANGE[1]:
    return
  low, high = NOISE_RANGE
  raise ConfigError(f"{name}={value:g} is outside [{low:g}, {high:g}]: below, epsilon is in the hundreds (not private) "
                    f"and its accounting does not fit in memory; above, epsilon is 0 to the accountant's precision; "
                    f"choose a value in that range{' (or 0: no noise, not private)' if zero_allowed else ''}")


@dataclasses.dataclass(frozen=True)
class DpSgd:
  """A DP-SGD run's privacy parameters: what the accountant needs."""
  dataset_size: int
  expected_batch: float
  max_batch: int
  noise_multiplier: float
  delta: float
  # Noise multipliers of Gaussian mechanisms run once on the private data before training (statistics such as
  # a feature covariance, released with noise multiplier r: std r x their sensitivity), composed with the steps.
  releases: Tuple[float, ...] = ()

  def __post_init__(self):
    if self.dataset_size < 1:
      raise ConfigError("a DP-SGD run needs a training set with at least one example")
    if not 0 < self.expected_batch <= self.dataset_size:
      raise ConfigError(f"the expected batch ({self.expected_batch:g}) must be in (0, the training set's "
                        f"{self.dataset_size} examples]: choose a smaller batch_size")
    if self.max_batch < 1:
      raise ConfigError(f"dp.max_batch={self.max_batch} must be at least 1")
    if not 0 < self.delta < 1:
      raise ConfigError(f"dp.delta={self.delta} must be in (0, 1), and below 1/N = {1 / self.dataset_size:.2g}")
    if self.noise_multiplier < 0 or not math.isfinite(self.noise_multiplier):
      raise ConfigError(f"dp.noise_multiplier={self.noise_multiplier} must be a finite number >= 0")
    check_noise("dp.noise_multiplier", self.noise_multiplier, zero_allowed=True)
    for r in self.releases:
      if not r > 0 or not math.isfinite(r):
        raise ConfigError(f"a release's noise multiplier ({r}) must be a finite number > 0")
      check_noise("a release's noise multiplier", r)

  @property
  def sampling_probability(self) -> float:
    return self.expected_batch / self.dataset_size

  def epsilon(self, steps: int) -> float:
    """Epsilon after the releases and `steps` steps at this delta (inf without noise; 0 with neither)."""
    steps = max(int(steps), 0)
    if steps and self.noise_multiplier == 0:
      return math.inf
    if not steps and not self.releases:
      return 0.0
    dist = _releases_pld(tuple(self.releases))
    if steps:
      run = _step_pld(self.dataset_size, self.sampling_probability, self.max_batch, self.noise_multiplier
                      ).self_compose(steps)
      dist = run if dist is None else run.compose(dist)
    return float(dist.get_epsilon_for_delta(self.delta))

  def dp_event(self, steps: int = 1):
    """The `dp_accounting` event of `steps` steps (for other accountants or tools)."""
    import dp_accounting
    event = dp_accounting.TruncatedSubsampledGaussianDpEvent(
        dataset_size=self.dataset_size, sampling_probability=self.sampling_probability,
        truncated_batch_size=self.max_batch, noise_multiplier=self.noise_multiplier)
    run = dp_accounting.SelfComposedDpEvent(event, int(steps))
    if not self.releases:
      return run
    return dp_accounting.ComposedDpEvent([*(dp_accounting.GaussianDpEvent(r) for r in self.releases), run])


@functools.lru_cache(maxsize=8)
def _step_pld(dataset_size, q, max_batch, noise_multiplier):
  from dp_accounting.pld import privacy_loss_distribution as pld
  return pld.from_truncated_subsampled_gaussian_mechanism(
      dataset_size=dataset_size, sampling_probability=q, truncated_batch_size=max_batch,
      noise_multiplier=noise_multiplier, value_discretization_interval=DISCRETISATION)


@functools.lru_cache(maxsize=8)
def _releases_pld(releases):
  """The composed PLD of Gaussian mechanisms of these noise multipliers (sensitivity 1), or None."""
  from dp_accounting.pld import privacy_loss_distribution as pld
  dist = None
  for r in releases:
    one = pld.from_gaussian_mechanism(r, value_discretization_interval=DISCRETISATION)
    dist = one if dist is None else dist.compose(one)
  return dist


def calibrate_noise(target_epsilon: float, *, steps: int, dataset_size: int, expected_batch: float, max_batch: int,
                    delta: float, releases: Tuple[float, ...] = ()) -> float:
  """The smallest noise multiplier (to 0.1%) whose epsilon after `steps` steps is at most `target_epsilon`.

  Each epsilon is a PLD composition (~1 s on a 2-core CPU), so the search interpolates instead of halving:
  regula falsi on log epsilon against log sigma (nearly a straight line), Illinois variant, keeping a bracket
  [low, high] with epsilon(low) > target >= epsilon(high) until it is 0.1% wide; ~6 compositions instead of
  bisection's ~13. Remembered per argument set (a study calibrates the same setting for every arm and seed).
  `releases`: the noise multipliers of Gaussian mechanisms run once before training (`DpSgd.releases`); the
  steps get what the budget leaves."""
  if not target_epsilon > 0 or not math.isfinite(target_epsilon):
    raise ConfigError(f"dp.target_epsilon={target_epsilon} must be a finite number > 0")
  releases = tuple(float(r) for r in releases)
  if releases:
    spent = DpSgd(dataset_size=int(dataset_size), expected_batch=float(expected_batch), max_batch=int(max_batch),
                  noise_multiplier=1.0, delta=float(delta), releases=releases).epsilon(0)
    if spent >= target_epsilon:
      raise ConfigError(f"the releases before training alone spend epsilon {spent:.3g} of the target "
                        f"{target_epsilon:g}: release with more noise or allow a larger epsilon")
  return _calibrate(float(target_epsilon), int(steps), int(dataset_size), float(expected_batch), int(max_batch),
                    float(delta), releases)


@functools.lru_cache(maxsize=64)
def _calibrate(target_epsilon, steps, dataset_size, expected_batch, max_batch, delta, releases=()) -> float:
  params = dict(dataset_size=dataset_size, expected_batch=expected_batch, max_batch=max_batch, delta=delta,
                releases=releases)
  # g(log sigma) = log epsilon - log target: positive below the answer, <= 0 at and above it
  g = lambda sigma: math.log(DpSgd(noise_multiplier=sigma, **params).epsilon(steps)) - math.log(target_epsilon)
  low, high = 1.0, 1.0
  g_low = g_high = g(1.0)
  while g_high > 0:  # epsilon falls as the noise grows: double until the target is met
    low, g_low, high = high, g_high, high * 2.0
    if high > 1e4:
      raise ConfigError(f"no noise multiplier up to 1e4 reaches epsilon {target_epsilon} in {steps} steps: "
                        "train fewer steps, with a smaller batch, or allow a larger epsilon")
    g_high = g(high)
  while g_low <= 0:  # ... or halve until it is not
    high, g_high, low = low, g_low, low / 2.0
    if low < NOISE_RANGE[0]:  # the least noise the accountant takes already meets the target
      return high
    g_low = g(low)
  side = 0
  while high - low > 1e-3 * high:
    a, b = math.log(low), math.log(high)
    x = b - g_high * (b - a) / (g_high - g_low) if math.isfinite(g_low) and g_high != g_low else 0.5 * (a + b)
    # stay strictly inside, and never closer to an end than a tenth of the tolerance (no stalling)
    margin = 1e-4 * (b - a) + 1e-4
    x = min(max(x, a + min(margin, 0.5 * (b - a))), b - min(margin, 0.5 * (b - a)))
    sigma = math.exp(x)
    g_mid = g(sigma)
    if g_mid > 0:
      low, g_low = sigma, g_mid
      if side == -1:
        g_high *= 0.5  # Illinois: the end that stayed twice weighs half, so both ends move
      side = -1
    else:
      high, g_high = sigma, g_mid
      if side == 1:
        g_low *= 0.5
      side = 1
  return high


def poisson_batch(*, seed: int, step: int, dataset_size: int, expected_batch: float, max_batch: int):
  """(indices, mask): step `step`'s truncated Poisson sample, padded to `max_batch` rows (padding: index 0,
  mask False). Sorted indices (reads in file order); a function of (seed, step) only."""
  rng = np.random.default_rng([_SAMPLING_TAG, int(seed) & 0xFFFFFFFFFFFFFFFF, int(step)])
  count = min(int(rng.binomial(dataset_size, expected_batch / dataset_size)), max_batch)
  chosen = np.sort(rng.choice(dataset_size, size=count, replace=False)) if count else np.zeros(0, np.int64)
  indices = np.zeros(max_batch, np.int64)
  indices[:count] = chosen
  mask = np.zeros(max_batch, bool)
  mask[:count] = True
  return indices, mask


def noisy_second_moment(features: np.ndarray, *, norm_bound_sq: float, noise_multiplier: float, seed: int,
                        chunk: int = 2048) -> np.ndarray:
  """The Gaussian mechanism on the channel second moment of `features` (N, ..., C): (S + E) / (N P), float64
  (C, C), with S = sum over examples n and positions p of z_np z_np^T and P the positions per example.

  Sensitivity: each example's features are first scaled down, if need be, to squared L2 norm `norm_bound_sq`
  (B), so its term sum_p z_p z_p^T has Frobenius norm <= sum_p |z_p|^2 <= B: adding or removing one example
  moves S by at most B, and S's upper triangle (diagonal included, the vector released) by no more. E is
  symmetric, its upper triangle i.i.d. N(0, (noise_multiplier B)^2); mirroring it is post-processing. One release
  of noise multiplier `noise_multiplier` in `DpSgd.releases`' units. B must not depend on the data (a bound that
  holds for every possible example, e.g. the feature count for GroupNorm'd features), or the release leaks it. N (the
  training set's size) is treated as public, as the DP-SGD accounting does. The noise is a function of `seed`
  alone: a rerun releases the same matrix. `noise_multiplier` 0: the exact moment (not private)."""
  if not norm_bound_sq > 0 or not math.isfinite(norm_bound_sq):
    raise ValueError(f"norm_bound_sq={norm_bound_sq} must be a finite number > 0")
  if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
    raise ValueError(f"noise_multiplier={noise_multiplier} must be a finite number >= 0")
  n, c = len(features), features.shape[-1]
  if n < 1:
    raise ValueError("a second moment of no examples")
  positions = int(np.prod(features.shape[1:-1], dtype=np.int64))
  total = np.zeros((c, c), np.float64)
  for i in range(0, n, chunk):
    z = np.asarray(features[i:i + chunk], np.float64).reshape(-1, positions, c)
    sq = np.einsum("npc,npc->n", z, z)
    scale = np.sqrt(norm_bound_sq / np.maximum(sq, norm_bound_sq))  # 1 unless the example exceeds the bound
    z = z * scale[:, None, None]
    flat = z.reshape(-1, c)
    total += flat.T @ flat
  if not np.all(np.isfinite(total)):
    raise ValueError("the features hold NaN or inf: their second moment is undefined")
  if noise_multiplier:
    rng = np.random.default_rng([_RELEASE_TAG, int(seed) & 0xFFFFFFFFFFFFFFFF])
    noise = np.triu(rng.normal(0.0, noise_multiplier * norm_bound_sq, (c, c)))
    total += noise + np.triu(noise, 1).T
  return total / (n * positions)
