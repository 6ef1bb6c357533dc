"""Samples of a trained GAN as a uint8 .npz (from a workdir's latest or best checkpoint and saved config), and
the metrics of a finished run or of any sample file."""

import io
import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from tlgan import data, files
from tlgan.checkpoint import Checkpointer
from tlgan.errors import UserError, first_line
from tlgan.trainers import gan_eval


def load_run_config(workdir: str, defaults: Optional[ml_collections.ConfigDict] = None) -> ml_collections.ConfigDict:
  """The config saved by a run, laid over `defaults` (today's config of its experiment, which the caller
  passes: `configs.gan.get_config()`) when given, so that runs saved before a field existed (e.g.
  model.discriminator) read as they ran: with that field's default."""
  path = files.join(workdir, "config.json")
  if not files.exists(path):
    raise UserError(f"{workdir} has no config.json: is it the workdir of a tlgan run?")
  try:
    saved = json.loads(files.read_text(path))
  except (OSError, ValueError) as e:  # truncated, not JSON, unreadable
    raise UserError(f"{path} cannot be read ({type(e).__name__}: {first_line(e, 120)}): rerun the "
                    "training command in that workdir (it rewrites config.json) or restore the file") from None
  if not isinstance(saved, dict) or not isinstance(saved.get("experiment"), str):
    raise UserError(f"{path} is not a tlgan run config (no 'experiment' field): restore the file")
  if defaults is None or saved.get("experiment") != defaults.get("experiment"):
    return ml_collections.ConfigDict(saved)
  config = ml_collections.ConfigDict(defaults.to_dict())

  def overlay(target, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
        overlay(target[key], value)
      else:
        with target.ignore_type():
          target[key] = value

  overlay(config, saved)
  return config


def restore_run(workdir: str, which: str = "latest", defaults=None):
  """(config, state, step) of a GAN run's latest (or best-FD) checkpoint, with the config saved in the run
  (over `defaults`, see `load_run_config`)."""
  from tlgan.trainers.gan import BEST_METRIC, build_state
  config = load_run_config(workdir, defaults)
  if config.experiment != "gan":
    raise UserError(f"{workdir} is a {config.experiment} run, not a GAN run")
  state = build_state(config, data.spec(config.data.name).image_shape)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), {"experiment": "gan"}, best_metric=BEST_METRIC)
  state, step = checkpointer.restore(state, which)
  if step is None:
    raise UserError(f"{workdir} has no checkpoint yet: train first")
  return config, state, step


def _load_split(config, split: str) -> np.ndarray:
  images, _ = data.load_split(config.data.name, split, data_dir=config.data.data_dir or None,
                              manual_dir=config.data.manual_dir or None, download=config.data.download)
  return images


def check_fits_in_memory(num: int, image_shape, what: str, fraction: float = 0.5) -> None:
  """Refuses `num` uint8 images of `image_shape` (plus their features) when they would take more than `fraction`
  of the memory this machine has available, before anything is generated."""
  need = num * int(np.prod(image_shape)) * 2  # the images, and as much again in features and float batches
  try:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):  # not Linux: no figure to check against
    return
  if need > fraction * available:
    raise UserError(f"{what}={num} needs about {need / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB are "
                    f"available: use at most {int(fraction * available / need * num):,}")


def evaluate_run(workdir: str, feature_weights: str, num: int, which: str = "latest", cache_dir: str = "",
                 defaults=None) -> dict:
  """The metrics of a finished GAN run's samples (its evaluation latents) in the space of a metric network (the
  shipped one when `feature_weights` is '', else a tlgan ResNet weights file trained on the run's dataset),
  with the floor of real training images."""
  if num < 2:
    raise UserError(f"--num must be 2 or more, got {num}")
  config, state, step = restore_run(workdir, which, defaults)
  check_fits_in_memory(num, data.spec(config.data.name).image_shape, "--num")
  config.eval.feature_weights = feature_weights
  config.eval.domain_network = True
  config.eval.inception_weights = ""
  config.eval.cache_dir = cache_dir or config.eval.cache_dir
  gan_eval.check_eval_config(config)  # before the data is loaded
  evaluator = gan_eval.GANEvaluator(config, _load_split(config, config.eval.split))
  return {"workdir": workdir, "checkpoint": f"{which} (step {step})", "step": step,
          "network": evaluator.main_net.name, "weights": feature_weights or "shipped",
          **evaluator.scorer.describe(), "num_samples": num,
          "generated": evaluator(state, num, config.eval.kid_subsets),
          "floor_train_vs_reference": evaluator.floor(_load_split(config, config.data.split))}


def read_samples(path: str, image_shape) -> np.ndarray:
  """uint8 images (N, H, W, C) under 'images' in an .npz (the format `export_samples` writes), checked."""
  if not files.isfile(path):
    raise UserError(f"samples file {path} does not exist: write one with python -m experiments.sample")
  try:
    with np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False) as f:
      if "images" not in f.files:
        raise UserError(f"{path} has no 'images' array (it has {', '.join(f.files) or 'none'}): save the samples "
                        "as np.savez(path, images=uint8 N x H x W x C)")
      images = f["images"]
  except UserError:
    raise
  except Exception as e:  # not a zip, truncated, pickled objects
    raise UserError(f"{path} is not a readable .npz of images ({type(e).__name__}): save the samples as "
                    "np.savez(path, images=uint8 N x H x W x C)") from None
  if images.dtype != np.uint8:
    raise UserError(f"{path}: images are {images.dtype}, not uint8: quantise them to 0..255 first (samples are "
                    "scored as uint8, like real images)")
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape) or len(images) < 2:
    raise UserError(f"{path}: images have shape {images.shape}, expected (N >= 2, {', '.join(map(str, image_shape))}) "
                    "for this dataset: check --dataset")
  return images


def score_samples(path: str, config, split: str = "") -> dict:
  """Every metric of the samples in `path` against `config`'s dataset (a GAN config: its eval settings)."""
  images = read_samples(path, data.spec(config.data.name).image_shape)
  gan_eval.check_eval_config(config)  # before the data is loaded
  split = split or config.eval.split
  scorer = gan_eval.scorer_for(config, _load_split(config, split), split)
  return {"samples": path, "num_samples": len(images), "dataset": config.data.name, **scorer.describe(),
          "metrics": scorer(images, config.eval.kid_subsets)}


def export_samples(workdir: str, num: int, output: str, seed=None, batch_size: int = 500,
                   which: str = "latest", defaults=None) -> str:
  """Writes `num` uint8 samples to `output`: by default from the run's evaluation latents (so that scoring
  the file reproduces the run's own numbers); with `seed`, from jax.random.key(seed)'s latents."""
  if num <= 0:
    raise UserError(f"--num must be positive, got {num}")
  if batch_size <= 0:
    raise UserError(f"--batch_size must be positive, got {batch_size}")
  if files.isdir(output):
    raise UserError(f"--output={output} is a folder: give a file path, e.g. {os.path.join(output, 'samples.npz')}")
  config, state, step = restore_run(workdir, which, defaults)
  check_fits_in_memory(num, data.spec(config.data.name).image_shape, "--num")
  if seed is None:
    z = gan_eval.eval_latents(config.seed, num, config.model.latent_dim)
  else:
    z = jax.random.normal(jax.random.key(seed), (num, config.model.latent_dim))
  images = gan_eval.generate_uint8(state, z, batch_size)
  files.atomic_write(output, lambda f: np.savez(f, images=images, step=step))
  return output
