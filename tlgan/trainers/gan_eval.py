"""Sample quality during and after GAN training, and of any sample file: FD, KID, IS, precision, recall,
density and coverage in named metric networks' spaces.

By default the metric network is the one tlgan ships for the dataset (`FD[resnet18w16-fashion_mnist]`, ...;
see `tlgan.feature_networks`); `eval.feature_weights` names another; with `eval.inception_weights` pytorch-fid's
Inception-v3 is added (`FD[inception_v3_fid]`, i.e. FID proper; slow on a CPU). Samples are quantised to uint8
before they are scored, as real images are and as pytorch-fid / clean-fid / torch-fidelity do. The generator is
evaluated on fixed latents (`eval_latents`, a function of the seed: `experiments.sample` exports the same
images), with its sampling weights (EMA when on) and running BatchNorm statistics, against the real reference
split. Every process computes the same numbers on the whole split (only process 0 writes them).
"""

import logging
import time
from typing import Dict, List, Optional

import jax
import numpy as np

from tlgan import config_checks, evaluation, feature_networks, files, stopping
from tlgan.errors import ConfigError
from tlgan.steps import gan as gan_step

PRDC = ("precision", "recall", "density", "coverage")
_sample = jax.jit(gan_step.sample)


def eval_latents(seed: int, num: int, latent_dim: int) -> jax.Array:
  """The latents a run is evaluated on (and `experiments.sample` exports by default)."""
  return jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0xE7A1), (num, latent_dim))


def generate_uint8(state, z, batch_size: int = 500) -> np.ndarray:
  """G's samples of latents `z` as uint8 images (N, H, W, C)."""
  images = []
  for i in range(0, len(z), batch_size):
    stopping.check("generating samples")
    images.append(feature_networks.to_uint8(_sample(state, z[i:i + batch_size])))
  return np.concatenate(images)


def build_networks(dataset: str, *, feature_weights: str = "", domain_network: bool = True,
                   inception_weights: str = "") -> List[feature_networks.FeatureNetwork]:
  """The metric networks of an evaluation: the dataset's (shipped, or `feature_weights`) and/or Inception."""
  nets = []
  if domain_network:
    path = feature_networks.metric_weights(dataset, feature_weights)
    nets.append(feature_networks.domain_resnet(path, dataset))
  if inception_weights:
    nets.append(feature_networks.inception_fid(inception_weights))
  if not nets:
    raise ConfigError("no metric network: set eval.domain_network=true or eval.inception_weights (or "
                      "eval.enabled=false)")
  return nets


class SampleScorer:
  """Scores uint8 images against a fixed real reference in every network's space.

  Reference features, their statistics and k-NN radii are computed once. Precision/recall/density/coverage use
  equal set sizes, n = min(#samples, #reference, prdc_num), the first n of each (the reference is in split
  order), as their authors evaluate them; prdc_k = 0 leaves them out.
  """

  def __init__(self, nets, reference: np.ndarray, *, dataset: str, split: str, cache_dir: str,
               kid_subset_size: int, seed: int, prdc_k: int = 3, prdc_num: int = 10000):
    self.nets, self.dataset, self.split = nets, dataset, split
    self.num_reference = len(reference)
    self.kid_subset_size, self.seed, self.prdc_k, self.prdc_num = kid_subset_size, seed, prdc_k, prdc_num
    self.cache_dir = cache_dir
    self.real, self.real_stats, self._radii = {}, {}, {}
    for net in nets:
      t = time.perf_counter()
      self.real[net.name] = feature_networks.reference_features(net, reference, dataset=dataset, split=split,
                                                                cache_dir=cache_dir)
      self.real_stats[net.name] = feature_networks.stats_of(self.real[net.name])
      logging.info("Reference features of %s in %s: %s (%.1f s)", self.reference_name, net.name,
                   self.real[net.name].shape, time.perf_counter() - t)

  @property
  def reference_name(self) -> str:
    return f"{self.dataset}[{self.split}] ({self.num_reference} images)"

  def describe(self) -> Dict:
    return {"networks": {net.name: net.weights_sha256 for net in self.nets}, "reference": self.reference_name,
            "kid_subset_size": self.kid_subset_size, "prdc_k": self.prdc_k}

  def __call__(self, images: np.ndarray, kid_subsets: int, logits: bool = True) -> Dict[str, float]:
    result = {}
    for net in self.nets:
      features, net_logits = net(images)
      result.update(self.compare_features(net, features, net_logits if logits else None, kid_subsets))
    return result

  def compare_features(self, net, features, logits, kid_subsets: int) -> Dict[str, float]:
    evaluation.require_finite(f"the {net.name} features of the scored images", features)  # (the reference's:
    # checked once, where `reference_features` reads or computes them)
    stats, real = feature_networks.stats_of(features), self.real_stats[net.name]
    result = {f"FD[{net.name}]": evaluation.frechet_distance(stats.mean, stats.cov, real.mean, real.cov)}
    kid, kid_std = evaluation.kernel_distance(features, self.real[net.name], num_subsets=kid_subsets,
                                              subset_size=self.kid_subset_size, seed=self.seed)
    result[f"KID[{net.name}]"], result[f"KID_std[{net.name}]"] = kid, kid_std
    if logits is not None:  # the network's own classifier head gives an Inception Score
      result[f"IS[{net.name}]"] = evaluation.inception_score(logits, splits=10)[0]
    n = min(len(features), self.num_reference, self.prdc_num)
    if self.prdc_k and n > self.prdc_k:
      key = (net.name, n)
      if key not in self._radii:
        self._radii[key] = evaluation.nearest_neighbour_radii(self.real[net.name][:n], self.prdc_k)
      values = evaluation.precision_recall_density_coverage(self.real[net.name][:n], features[:n], self.prdc_k,
                                                            real_radii=self._radii[key])
      result.update({f"{name}[{net.name}]": values[name] for name in PRDC})
    return result


# The evaluation's numeric fields and their meaning (FD, KID and their subsets need 2 or more vectors).
NUMBERS = {
    "eval.every": config_checks.POSITIVE_INT, "eval.num_samples": config_checks.Number(int, 2),
    "eval.final_num_samples": config_checks.Number(int, 2), "eval.kid_subsets": config_checks.POSITIVE_INT,
    "eval.kid_subset_size": config_checks.Number(int, 2), "eval.prdc_k": config_checks.NON_NEGATIVE_INT,
    "eval.prdc_num": config_checks.POSITIVE_INT,
}


def check_eval_config(config) -> None:
  """The evaluation fields that cannot work, and metric networks that are not there, named before anything runs
  (before data is loaded or a workdir written)."""
  e = config.eval
  config_checks.check_numbers(config, NUMBERS)
  if e.domain_network:
    feature_networks.metric_weights(config.data.name, e.feature_weights)
  if e.inception_weights and not files.isfile(e.inception_weights):
    raise ConfigError(f"eval.inception_weights={e.inception_weights} does not exist: convert pytorch-fid's weights "
                      "with python -m tlgan.pretrained --arch=inception_v3_fid --output=FILE (or set it to '')")


def scorer_for(config, reference_images: np.ndarray, split: str) -> SampleScorer:
  """The SampleScorer of a GAN config's evaluation settings (checked first) against `reference_images`."""
  check_eval_config(config)
  e = config.eval
  nets = build_networks(config.data.name, feature_weights=e.feature_weights, domain_network=e.domain_network,
                        inception_weights=e.inception_weights)
  return SampleScorer(nets, reference_images, dataset=config.data.name, split=split, cache_dir=e.cache_dir,
                      kid_subset_size=e.kid_subset_size, seed=config.seed, prdc_k=e.prdc_k, prdc_num=e.prdc_num)


class GANEvaluator:
  """The metrics of a GAN state's samples (fixed latents) against the reference split, every network."""

  def __init__(self, config, reference_images: np.ndarray, split: Optional[str] = None):
    self.config = config
    self.scorer = scorer_for(config, reference_images, split or config.eval.split)
    self.nets = self.scorer.nets
    self.main_net = self.nets[0]
    self.fd_key, self.kid_key = f"FD[{self.main_net.name}]", f"KID[{self.main_net.name}]"

  def samples(self, state, num: int) -> np.ndarray:
    """`num` uint8 images from the run's evaluation latents (the same for every evaluation of a run)."""
    return generate_uint8(state, eval_latents(self.config.seed, num, self.config.model.latent_dim))

  def __call__(self, state, num_samples: int, kid_subsets: int) -> Dict[str, float]:
    t = time.perf_counter()
    result = self.scorer(self.samples(state, num_samples), kid_subsets)
    logging.info("%s (%d samples, %.1f s)", ", ".join(f"{k} = {v:.4g}" for k, v in result.items()
                                                       if not k.startswith(("KID_std", "IS"))),
                 num_samples, time.perf_counter() - t)
    return result

  def floor(self, train_images: np.ndarray) -> Dict[str, float]:
    """Real training images (as many as the reference) against the reference: the best a generator can
    hope for with these networks and this sample count."""
    n = min(len(train_images), self.scorer.num_reference)
    idx = np.random.default_rng(self.config.seed).choice(len(train_images), n, replace=False)
    split = f"{self.config.data.split}-sample{self.config.seed}"
    result = {}
    for net in self.nets:  # cached like the reference: the same real images give the same features
      features = feature_networks.reference_features(net, train_images[idx], dataset=self.config.data.name,
                                                     split=split, cache_dir=self.config.eval.cache_dir)
      result.update(self.scorer.compare_features(net, features, None, self.config.eval.kid_subsets))
    return result
