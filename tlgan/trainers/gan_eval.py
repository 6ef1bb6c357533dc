"""Sample quality during and after GAN training: FD and KID in a named feature network's space.

The generator is evaluated on a fixed set of latents (a function of the seed), with its sampling weights
(EMA when on) and running BatchNorm statistics, against the real test split; numbers carry the network's name,
e.g. `FD[resnet18-fashion_mnist]`. Every process computes the same numbers on the whole split (only process 0
writes them).
"""

import logging
import time
from typing import Dict

import jax
import numpy as np

from tlgan import data, evaluation, feature_networks
from tlgan.steps import gan as gan_step


def feature_train_config(config):
  """The classifier config that trains the domain feature network for the GAN's dataset."""
  from configs import transfer
  c = transfer.get_config("fashion_pretrain")
  for field in ("name", "data_dir", "manual_dir", "download"):
    c.data[field] = config.data[field]
  c.num_epochs = config.eval.feature_train_epochs
  c.model.width = config.eval.feature_width
  c.model.channels = 3
  c.log_every = 100
  c.checkpoint_every = 200
  return c


class GANEvaluator:
  """Computes {FD[net], KID[net], KID_std[net]} for a GAN state against the real test split."""

  def __init__(self, config, test_images: np.ndarray):
    e = config.eval
    weights = e.feature_weights or feature_networks.default_weights_path(e.cache_dir, config.data.name)
    feature_networks.ensure_domain_weights(weights, config.data.name, feature_train_config(config))
    self.net = feature_networks.domain_resnet(weights, config.data.name)
    self.config = config
    t = time.perf_counter()
    self.real = feature_networks.reference_features(self.net, test_images, dataset=config.data.name,
                                                    split=e.split, cache_dir=e.cache_dir)
    self.real_stats = feature_networks.stats_of(self.real)
    logging.info("Reference features of %s[%s] in %s: %d x %d (%.1f s)", config.data.name, e.split, self.net.name,
                 *self.real.shape, time.perf_counter() - t)
    self._sample = jax.jit(gan_step.sample)
    self.fd_key, self.kid_key = f"FD[{self.net.name}]", f"KID[{self.net.name}]"

  def samples(self, state, num: int, batch_size: int = 500) -> np.ndarray:
    """`num` images in [-1, 1] from fixed latents (the same for every evaluation of a run)."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), 0xE7A1)
    z = jax.random.normal(key, (num, self.config.model.latent_dim))
    return np.concatenate([np.asarray(self._sample(state, z[i:i + batch_size]))
                           for i in range(0, num, batch_size)])

  def compare(self, features: np.ndarray, kid_subsets: int) -> Dict[str, float]:
    stats = feature_networks.stats_of(features)
    fd = evaluation.frechet_distance(stats.mean, stats.cov, self.real_stats.mean, self.real_stats.cov)
    kid, kid_std = evaluation.kernel_distance(features, self.real, num_subsets=kid_subsets,
                                              subset_size=self.config.eval.kid_subset_size, seed=self.config.seed)
    return {self.fd_key: fd, self.kid_key: kid, f"KID_std[{self.net.name}]": kid_std}

  def __call__(self, state, num_samples: int, kid_subsets: int) -> Dict[str, float]:
    t = time.perf_counter()
    features, _ = self.net(self.samples(state, num_samples))
    result = self.compare(features, kid_subsets)
    logging.info("%s = %.3f, %s = %.5f (%d samples, %.1f s)", self.fd_key, result[self.fd_key], self.kid_key,
                 result[self.kid_key], num_samples, time.perf_counter() - t)
    return result

  def floor(self, train_images: np.ndarray) -> Dict[str, float]:
    """FD and KID of real training images (as many as the reference) against the test split: the best a
    generator can hope for with this network and sample count."""
    n = min(len(train_images), len(self.real))
    idx = np.random.default_rng(self.config.seed).choice(len(train_images), n, replace=False)
    features, _ = self.net(train_images[idx].astype(np.float32) / 127.5 - 1.0)
    return self.compare(features, self.config.eval.kid_subsets)
