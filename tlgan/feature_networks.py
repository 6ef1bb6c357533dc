"""Metric networks for FD/KID/precision/recall, and cached reference features of real data.

`resnet18w16-<dataset>`: the fixed metric networks tlgan ships in `tlgan/metric_networks/` (narrow ResNet18
classifiers trained once on the dataset by `python -m experiments.metric_network`; configs/metric_network.py
says how), each pinned by its sha256 in `SHIPPED`. A number in such a network's space, `FD[resnet18w16-
fashion_mnist]`, means the same on every machine: the weights are a file, not something each machine trains.
A missing or altered file is an error, never a reason to train a new one. Any other tlgan ResNet weights file
(`eval.feature_weights`) can serve too; its numbers carry the file's hash in the name (`FD[...@1a2b3c4d]`).

`inception_v3_fid`: pytorch-fid's Inception-v3 (`tlgan.models.inception`), for FID proper.

Every network takes uint8 images, as real data comes and as pytorch-fid, clean-fid and torch-fidelity feed
generated samples: samples are quantised (`to_uint8`) before they are scored.

Reference features of real data are computed once and cached as .npz under
`<cache_dir>/reference/<dataset>-<split>-<network>-<weights sha256[:12]>-v<FEATURES_VERSION>-n<N>.npz`, so
another network, other weights or another way of feeding them never reuse stale features.
"""

import dataclasses
import io
import os
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from tlgan import evaluation, files, pretrained, reporting, stopping
from tlgan.errors import UserError
from tlgan.evaluation import FeatureStats

# Bumped whenever the features of given weights change (v2: `pretrained.classifier_input`, zeros beyond the
# border as in training, instead of an edge-clamping resize).
FEATURES_VERSION = 2
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metric_networks")
# dataset -> (metric network name, sha256 of its file in SHIPPED_DIR); written by experiments.metric_network
SHIPPED = {
    "fashion_mnist": ("resnet18w16-fashion_mnist", "c0bcd6dfc9c038686b58a2ce1ca742a0f3020313298deed34eb3496cca7c0a27"),
    "digits28": ("resnet18w16-digits28", "91770e779216f431a6c90088525b29bd156e4a7e28b4eef053f7474cef34bdc9"),
}


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255], rounding to nearest (the inverse of the pipeline's x / 127.5 - 1)."""
  return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class FeatureNetwork:
  """uint8 images (N, H, W, C) -> (features (N, dim), logits (N, classes) or None). `apply` takes [0, 1]."""
  name: str
  weights_sha256: str
  dim: int
  apply: Callable

  def __call__(self, images: np.ndarray, batch_size: int = 500) -> Tuple[np.ndarray, np.ndarray]:
    if np.asarray(images).dtype != np.uint8:
      raise TypeError(f"metric networks score uint8 images (quantise samples with to_uint8 first), got "
                      f"{np.asarray(images).dtype}")
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
      stopping.check(f"computing {self.name} features")
      f, l = self.apply(jnp.asarray(images[i:i + batch_size], jnp.float32) / 255.0)
      feats.append(np.asarray(f))
      logits.append(np.asarray(l))
    return np.concatenate(feats), np.concatenate(logits)


def shipped_weights(dataset: str) -> str:
  """The path of the metric network tlgan ships for `dataset`, after checking its pinned sha256."""
  if dataset not in SHIPPED:
    raise UserError(f"tlgan ships no metric network for {dataset} (only for {', '.join(sorted(SHIPPED))}): set "
                    f"--config.eval.feature_weights to a tlgan ResNet weights file trained on {dataset} (python -m "
                    "experiments.metric_network trains one), or score with Inception-v3 "
                    "(--config.eval.domain_network=false --config.eval.inception_weights=FILE)")
  name, pinned = SHIPPED[dataset]
  path = os.path.join(SHIPPED_DIR, f"{name}.msgpack")
  if not os.path.isfile(path):
    raise UserError(f"the shipped metric network {path} is missing: restore it (git checkout -- "
                    f"tlgan/metric_networks) or reinstall tlgan")
  digest = pretrained.sha256_of(path)
  if digest != pinned:
    raise UserError(f"the shipped metric network {path} has sha256 {digest[:12]}..., pinned {pinned[:12]}...: the "
                    "file was altered; restore it (git checkout -- tlgan/metric_networks), or score in another "
                    "network's space with --config.eval.feature_weights=FILE")
  return path


def metric_weights(dataset: str, feature_weights: str = "") -> str:
  """The metric network's weights file: `feature_weights` when given (it must exist), else the shipped one."""
  if not feature_weights:
    return shipped_weights(dataset)
  if not files.isfile(feature_weights):
    raise UserError(f"eval.feature_weights={feature_weights} does not exist: pass a tlgan ResNet weights file "
                    f"trained on {dataset} (or '' for the shipped metric network)")
  return feature_weights


def domain_resnet(weights_path: str, dataset: str) -> FeatureNetwork:
  """The ResNet in `weights_path` (a tlgan weights file of a classifier run), fed as it was trained
  (`pretrained.classifier_input`). Features: the pooled features scaled to norm sqrt(dim) (see below);
  logits: its classifier head on the raw features."""
  model, variables, meta = pretrained.open_network(weights_path)
  variables = jax.tree.map(jnp.asarray, variables)

  @jax.jit
  def apply(pixels):
    feats = model.apply(variables, pretrained.classifier_input(pixels, meta), features_only=True)
    head = variables["params"]["fc"]
    logits = feats @ head["kernel"] + head["bias"]
    # The raw pooled features' norms differ 20x between classes (Fashion-MNIST's trousers), so FD and KID
    # on them mostly count trousers, and vary wildly between sample sets. On the sphere of radius
    # sqrt(dim), every image weighs the same and each coordinate is O(1), as FD and KID's kernel expect.
    feats = feats * (feats.shape[-1] ** 0.5 / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-6))
    return feats, logits

  digest = pretrained.sha256_of(weights_path)
  return FeatureNetwork(name=network_name(meta, dataset, digest), weights_sha256=digest,
                        dim=int(variables["params"]["fc"]["kernel"].shape[0]), apply=apply)


def network_name(meta: pretrained.WeightsMeta, dataset: str, digest: str) -> str:
  """A shipped network's own name; any other network's name says its shape and carries its weights' hash
  (FD[resnet18w16-cifarstem-fashion_mnist@1a2b3c4d]), so numbers of unpinned networks are never confused."""
  for name, pinned in SHIPPED.values():
    if digest == pinned:
      return name
  shape = f"{meta.arch}{'' if meta.width == 64 else f'w{meta.width}'}"
  return f"{shape}{'' if meta.stem == 'imagenet' else f'-{meta.stem}stem'}-{dataset}@{digest[:8]}"


def inception_fid(weights_path: str) -> FeatureNetwork:
  """pytorch-fid's Inception-v3 (converted with `python -m tlgan.pretrained --arch=inception_v3_fid`):
  numbers in its space are FID proper. Grayscale images are copied to 3 channels, as pytorch-fid does."""
  model, variables, meta = pretrained.open_network(weights_path)
  if meta.arch != pretrained.INCEPTION_FID:
    raise UserError(f"{weights_path} holds {meta.arch!r} weights, not {pretrained.INCEPTION_FID}: convert "
                    "pytorch-fid's weights with python -m tlgan.pretrained --arch=inception_v3_fid")
  variables = jax.tree.map(jnp.asarray, variables)

  @jax.jit
  def apply(pixels):
    x = jnp.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    return model.apply(variables, x)

  return FeatureNetwork(name=pretrained.INCEPTION_FID, weights_sha256=pretrained.sha256_of(weights_path),
                        dim=2048, apply=apply)


def reference_features(net: FeatureNetwork, images_uint8: np.ndarray, *, dataset: str, split: str,
                       cache_dir: str) -> np.ndarray:
  """Features of real images (uint8 NHWC), cached by dataset, split, network and weights."""
  folder = files.join(cache_dir if files.is_remote(cache_dir) else os.path.expanduser(cache_dir), "reference")
  name = f"{dataset}-{split}-{net.name}-{net.weights_sha256[:12]}-v{FEATURES_VERSION}-n{len(images_uint8)}.npz"
  path = files.join(folder, name)
  what = f"the {net.name} features of {dataset}[{split}]"
  if files.exists(path):
    with np.load(io.BytesIO(files.read_bytes(path))) as cached:
      feats = cached["features"]
    evaluation.require_finite(f"{what} cached in {path}", feats)
    return feats
  feats, _ = net(images_uint8)
  evaluation.require_finite(what, feats)  # never cached
  if reporting.is_writer():
    files.atomic_write(path, lambda f: np.savez(f, features=feats))
  return feats


def stats_of(features: np.ndarray) -> FeatureStats:
  stats = FeatureStats(features.shape[1])
  stats.update(features)
  return stats
