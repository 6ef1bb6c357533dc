"""Samples of a trained GAN as a uint8 .npz, from a workdir's latest checkpoint and saved config."""

import json
import os

import jax
import ml_collections
import numpy as np

from tlgan import data, reporting
from tlgan.checkpoint import Checkpointer
from tlgan.errors import UserError
from tlgan.steps import gan as gan_step


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved by a run; for GAN runs laid over today's defaults, so that runs saved before a field
  existed (e.g. model.discriminator) read as they ran: with that field's default."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no config.json: is it the workdir of a tlgan run?")
  with open(path) as f:
    saved = json.load(f)
  if saved.get("experiment") != "gan":
    return ml_collections.ConfigDict(saved)
  from configs import gan
  config = gan.get_config()

  def overlay(target, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
        overlay(target[key], value)
      else:
        with target.ignore_type():
          target[key] = value

  overlay(config, saved)
  return config


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255], rounding to nearest (the inverse of the pipeline's x / 127.5 - 1)."""
  return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def restore_run(workdir: str):
  """(config, state, step) of a GAN run's latest checkpoint, with the config saved in the run."""
  from tlgan.trainers.gan import build_state
  config = load_run_config(workdir)
  if config.experiment != "gan":
    raise UserError(f"{workdir} is a {config.experiment} run, not a GAN run")
  state = build_state(config, data.spec(config.data.name).image_shape)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), {"experiment": "gan"})
  state, step = checkpointer.restore_latest(state)
  if step is None:
    raise UserError(f"{workdir} has no checkpoint yet: train first")
  return config, state, step


def evaluate_run(workdir: str, feature_weights: str, num: int) -> dict:
  """FD, KID (and IS) of a finished GAN run's samples in the space of another feature network (a tlgan
  ResNet weights file trained on the run's dataset), with the floor of real training images."""
  from tlgan.trainers import gan_eval
  if num <= 0:
    raise UserError(f"--num must be positive, got {num}")
  if not os.path.isfile(feature_weights):
    raise UserError(f"feature network {feature_weights} does not exist: train one with configs/transfer.py")
  config, state, step = restore_run(workdir)
  config.eval.feature_weights = feature_weights
  config.eval.inception_weights = ""
  kwargs = dict(data_dir=config.data.data_dir or None, manual_dir=config.data.manual_dir or None,
                download=config.data.download)
  test_images, _ = data.load_split(config.data.name, config.eval.split, **kwargs)
  train_images, _ = data.load_split(config.data.name, config.data.split, **kwargs)
  evaluator = gan_eval.GANEvaluator(config, test_images)
  return {"workdir": workdir, "step": step, "network": evaluator.main_net.name, "weights": feature_weights,
          "num_samples": num, "generated": evaluator(state, num, config.eval.kid_subsets),
          "floor_train_vs_reference": evaluator.floor(train_images)}


def export_samples(workdir: str, num: int, output: str, seed: int = 0, batch_size: int = 500) -> str:
  if num <= 0:
    raise UserError(f"--num must be positive, got {num}")
  config, state, step = restore_run(workdir)
  sample = jax.jit(gan_step.sample)
  z = jax.random.normal(jax.random.key(seed), (num, config.model.latent_dim))
  images = np.concatenate([to_uint8(sample(state, z[i:i + batch_size])) for i in range(0, num, batch_size)])
  reporting.atomic_write(output, lambda f: np.savez(f, images=images, step=step))
  return output
