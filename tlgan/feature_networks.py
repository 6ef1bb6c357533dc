"""Feature networks for FD/KID, and cached reference statistics of real data.

`inception_v3_fid`: pytorch-fid's Inception-v3 (`tlgan.models.inception`), for FID proper.

`resnet18-<dataset>`: our ResNet18 trained on the dataset by tlgan's own classifier trainer (offline, a domain
feature network). Its weights file is referenced from the GAN config (`eval.feature_weights`); when the file
is missing, `ensure_domain_weights` trains it once (a short `configs/transfer.py:fashion_pretrain`-style run)
into the cache directory. Numbers computed with it are reported as `FD[resnet18-fashion_mnist]`, never as
"FID".

Reference features of real data are computed once and cached as .npz under
`<cache_dir>/reference/<dataset>-<split>-<network>-<weights sha256[:12]>.npz`, so another network or other
weights never reuse stale statistics.
"""

import dataclasses
import logging
import os
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from tlgan import pretrained, reporting
from tlgan.evaluation import FeatureStats
from tlgan.preprocessing import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass
class FeatureNetwork:
  """images in [-1, 1] (N, H, W, C) -> (features (N, dim), logits (N, classes))."""
  name: str
  weights_sha256: str
  dim: int
  apply: Callable

  def __call__(self, images: np.ndarray, batch_size: int = 500) -> Tuple[np.ndarray, np.ndarray]:
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
      f, l = self.apply(jnp.asarray(images[i:i + batch_size], jnp.float32))
      feats.append(np.asarray(f))
      logits.append(np.asarray(l))
    return np.concatenate(feats), np.concatenate(logits)


def domain_resnet(weights_path: str, dataset: str) -> FeatureNetwork:
  """The ResNet18 in `weights_path` (a tlgan weights file of a classifier run), as the trainer fed it:
  [0, 1] pixels, 3 channels, resized to the trained size, ImageNet normalisation. Features: the pooled
  512-d features scaled to norm sqrt(512) (see below); logits: its classifier head on the raw features."""
  variables, meta = pretrained.load(weights_path)
  num_classes = variables["params"]["fc"]["kernel"].shape[1]
  width = variables["params"]["conv1"]["kernel"].shape[-1]
  stem = meta.get("stem", "imagenet")
  image_size = int(meta.get("image_size", 32))
  model = pretrained.model_for(meta.get("arch", "resnet18"), num_classes, stem=stem, width=width)
  variables = jax.tree.map(jnp.asarray, variables)
  mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)

  @jax.jit
  def apply(images):
    x = (images + 1.0) / 2.0
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (image_size, image_size):
      x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), "linear", antialias=False)
    x = (x - mean) / std
    feats = model.apply(variables, x, features_only=True)
    head = variables["params"]["fc"]
    logits = feats @ head["kernel"] + head["bias"]
    # The raw pooled features' norms differ 20x between classes (Fashion-MNIST's trousers), so FD and KID
    # on them mostly count trousers, and vary wildly between sample sets. On the sphere of radius
    # sqrt(dim), every image weighs the same and each coordinate is O(1), as FD and KID's kernel expect.
    feats = feats * (feats.shape[-1] ** 0.5 / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-6))
    return feats, logits

  # A network with another stem says so in its name (FD[resnet18-cifarstem-fashion_mnist]); the weights' hash
  # tells networks of one name apart (summary.json lists it, and it keys the cached reference features).
  variant = "" if stem == "imagenet" else f"-{stem}stem"
  return FeatureNetwork(name=f"{meta.get('arch', 'resnet18')}{variant}-{dataset}",
                        weights_sha256=pretrained.sha256_of(weights_path),
                        dim=int(variables["params"]["fc"]["kernel"].shape[0]), apply=apply)


def inception_fid(weights_path: str) -> FeatureNetwork:
  """pytorch-fid's Inception-v3 (converted with `python -m tlgan.pretrained --arch=inception_v3_fid`):
  numbers in its space are FID proper. Grayscale images are copied to 3 channels, as pytorch-fid does."""
  from tlgan.models.inception import InceptionV3FID
  variables, meta = pretrained.load(weights_path)
  if meta.get("arch") != pretrained.INCEPTION_FID:
    raise ValueError(f"{weights_path} holds {meta.get('arch')!r} weights, not {pretrained.INCEPTION_FID}")
  variables = jax.tree.map(jnp.asarray, variables)
  model = InceptionV3FID()

  @jax.jit
  def apply(images):
    x = (images + 1.0) / 2.0
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    return model.apply(variables, x)

  return FeatureNetwork(name=pretrained.INCEPTION_FID, weights_sha256=pretrained.sha256_of(weights_path),
                        dim=2048, apply=apply)


def default_weights_path(cache_dir: str, dataset: str) -> str:
  return os.path.join(os.path.expanduser(cache_dir), "feature_nets", f"resnet18-{dataset}", "model.msgpack")


def ensure_domain_weights(weights_path: str, dataset: str, train_config) -> str:
  """Returns `weights_path`, training the domain ResNet18 there first when the file does not exist.

  `train_config` is a classifier config (configs/transfer.py) for `dataset`; the run's workdir is the
  folder of `weights_path`, so an interrupted training resumes on the next call.
  """
  if os.path.exists(weights_path):
    return weights_path
  from tlgan.trainers import classifier
  workdir = os.path.dirname(os.path.abspath(weights_path))
  logging.warning("FD feature network %s not found: training resnet18-%s once into %s (%.1f epochs)",
                  weights_path, dataset, workdir, train_config.num_epochs)
  summary = classifier.train_and_evaluate(train_config, workdir)
  if summary.get("status") != "completed" or not os.path.exists(weights_path):
    raise RuntimeError(f"training the feature network in {workdir} did not complete; rerun to resume it")
  logging.info("Feature network resnet18-%s: test accuracy %.4f", dataset, summary["test_accuracy"])
  return weights_path


def reference_features(net: FeatureNetwork, images_uint8: np.ndarray, *, dataset: str, split: str,
                       cache_dir: str) -> np.ndarray:
  """Features of real images (uint8 NHWC), cached by dataset, split, network and weights."""
  folder = os.path.join(os.path.expanduser(cache_dir), "reference")
  path = os.path.join(folder, f"{dataset}-{split}-{net.name}-{net.weights_sha256[:12]}-n{len(images_uint8)}.npz")
  if os.path.exists(path):
    with np.load(path) as cached:
      return cached["features"]
  feats, _ = net(images_uint8.astype(np.float32) / 127.5 - 1.0)
  if reporting.is_writer():
    reporting.atomic_write(path, lambda f: np.savez(f, features=feats))
  return feats


def stats_of(features: np.ndarray) -> FeatureStats:
  stats = FeatureStats(features.shape[1])
  stats.update(features)
  return stats
