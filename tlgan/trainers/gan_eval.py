"""Sample quality during and after GAN training: FD and KID in named feature networks' spaces.

Always the domain network `resnet18-<dataset>` (numbers `FD[resnet18-fashion_mnist]`, `KID[...]`); with
`eval.inception_weights`, also pytorch-fid's Inception-v3 (`FD[inception_v3_fid]`, i.e. FID proper; slow on a
CPU). The generator is evaluated on a fixed set of latents (a function of the seed), with its sampling weights
(EMA when on) and running BatchNorm statistics, against the real test split. Every process computes the same
numbers on the whole split (only process 0 writes them).
"""

import logging
import time
from typing import Dict

import jax
import numpy as np

from tlgan import evaluation, feature_networks
from tlgan.steps import gan as gan_step


def feature_train_config(config):
  """The classifier config that trains the domain feature network for the GAN's dataset."""
  from configs import transfer
  c = transfer.get_config("fashion_pretrain")
  for field in ("name", "data_dir", "manual_dir", "download"):
    c.data[field] = config.data[field]
  c.num_epochs = config.eval.feature_train_epochs
  c.optim.warmup_epochs = min(c.optim.warmup_epochs, 0.1 * c.num_epochs)  # a short run: a short warm-up
  c.model.width = config.eval.feature_width
  c.log_every = 100
  c.checkpoint_every = 200
  return c


class GANEvaluator:
  """Computes {FD[net], KID[net], KID_std[net], IS[net]} for each feature network against the test split."""

  def __init__(self, config, test_images: np.ndarray):
    e = config.eval
    weights = e.feature_weights or feature_networks.default_weights_path(e.cache_dir, config.data.name)
    feature_networks.ensure_domain_weights(weights, config.data.name, feature_train_config(config))
    self.nets = [feature_networks.domain_resnet(weights, config.data.name)]
    if e.inception_weights:
      self.nets.append(feature_networks.inception_fid(e.inception_weights))
    self.config = config
    self.real, self.real_stats = {}, {}
    for net in self.nets:
      t = time.perf_counter()
      self.real[net.name] = feature_networks.reference_features(net, test_images, dataset=config.data.name,
                                                                split=e.split, cache_dir=e.cache_dir)
      self.real_stats[net.name] = feature_networks.stats_of(self.real[net.name])
      logging.info("Reference features of %s[%s] in %s: %s (%.1f s)", config.data.name, e.split, net.name,
                   self.real[net.name].shape, time.perf_counter() - t)
    self._sample = jax.jit(gan_step.sample)
    self.main_net = self.nets[0]
    self.fd_key, self.kid_key = f"FD[{self.main_net.name}]", f"KID[{self.main_net.name}]"

  def samples(self, state, num: int, batch_size: int = 500) -> np.ndarray:
    """`num` images in [-1, 1] from fixed latents (the same for every evaluation of a run)."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), 0xE7A1)
    z = jax.random.normal(key, (num, self.config.model.latent_dim))
    return np.concatenate([np.asarray(self._sample(state, z[i:i + batch_size]))
                           for i in range(0, num, batch_size)])

  def compare(self, images: np.ndarray, kid_subsets: int) -> Dict[str, float]:
    """FD and KID of images in [-1, 1] against the reference, in every network's space."""
    result = {}
    for net in self.nets:
      features, logits = net(images)
      result.update(self._compare_features(net, features, logits, kid_subsets))
    return result

  def _compare_features(self, net, features, logits, kid_subsets: int) -> Dict[str, float]:
    stats, real = feature_networks.stats_of(features), self.real_stats[net.name]
    result = {f"FD[{net.name}]": evaluation.frechet_distance(stats.mean, stats.cov, real.mean, real.cov)}
    kid, kid_std = evaluation.kernel_distance(features, self.real[net.name], num_subsets=kid_subsets,
                                              subset_size=self.config.eval.kid_subset_size, seed=self.config.seed)
    result[f"KID[{net.name}]"], result[f"KID_std[{net.name}]"] = kid, kid_std
    if logits is not None:  # the network's own classifier head gives an Inception Score
      result[f"IS[{net.name}]"] = evaluation.inception_score(logits, splits=10)[0]
    return result

  def __call__(self, state, num_samples: int, kid_subsets: int) -> Dict[str, float]:
    t = time.perf_counter()
    result = self.compare(self.samples(state, num_samples), kid_subsets)
    logging.info("%s (%d samples, %.1f s)", ", ".join(f"{k} = {v:.4g}" for k, v in result.items()
                                                       if not k.startswith("KID_std")),
                 num_samples, time.perf_counter() - t)
    return result

  def floor(self, train_images: np.ndarray) -> Dict[str, float]:
    """Real training images (as many as the reference) against the test split: the best a generator can
    hope for with these networks and this sample count."""
    n = min(len(train_images), len(self.real[self.main_net.name]))
    idx = np.random.default_rng(self.config.seed).choice(len(train_images), n, replace=False)
    split = f"{self.config.data.split}-sample{self.config.seed}"
    result = {}
    for net in self.nets:  # cached like the reference: the same real images give the same features
      features = feature_networks.reference_features(net, train_images[idx], dataset=self.config.data.name,
                                                     split=split, cache_dir=self.config.eval.cache_dir)
      result.update(self._compare_features(net, features, None, self.config.eval.kid_subsets))
    return result
