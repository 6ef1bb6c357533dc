"""The `dp` section every trainable config carries (off unless a config or variant turns it on)."""

import ml_collections


def dp_section() -> ml_collections.ConfigDict:
  """Differentially private training (DP-SGD; configs/private.py, configs/gan.py:private). With dp.enabled,
  batch_size is the expected size of the Poisson-sampled batches."""
  dp = ml_collections.ConfigDict()
  dp.enabled = False
  dp.clip_norm = 1.0  # C: per-example gradients are clipped to this L2 norm
  dp.noise_multiplier = 0.0  # sigma: noise std sigma * C on the sum (used when target_epsilon is 0)
  dp.target_epsilon = 0.0  # > 0: calibrate sigma so that the whole run ends at this epsilon
  dp.max_epsilon = 0.0  # > 0: refuse to start a run whose epsilon would exceed this budget
  dp.delta = 0.0  # 0: the power of ten below 1/N
  dp.max_batch = 0  # truncation of the Poisson batches; 0: 4 standard deviations above the expected size
  dp.microbatch = 0  # per-example gradient norms computed at once; 0: automatic (about 512 MB)
  return dp
