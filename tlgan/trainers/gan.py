"""The GAN trainer: data, state, compiled step, loop, logging, samples, checkpoints, summary.

    from tlgan.trainers.gan import train_and_evaluate
    summary = train_and_evaluate(config, workdir)

Order of business, so that bad input never changes a workdir: check the config, build the state, compare it
with the workdir's checkpoint (and restore it), load the data; only then write anything.
"""

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Dict

import jax
import ml_collections
import numpy as np
import optax

from tlgan import (config_checks, data, feature_networks, files, param_groups, parallel, pretrained, reporting,
                   stopping, streaming)
from tlgan.checkpoint import Checkpointer
from tlgan.errors import ConfigError
from tlgan.losses import LOSSES
from tlgan.models.dcgan import D_NORMS, Discriminator, Generator, d_block_layers, num_upsamplings
from tlgan.models.layers import COMPUTE_DTYPES, IMPLS
from tlgan.models.projected import TRUNK, ProjectedDiscriminator, load_trunk
from tlgan.models.resnet import STAGES
from tlgan.steps import gan as gan_step
from tlgan.steps import private_gan
from tlgan.trainers import gan_eval, loop, private


BEST_METRIC = "fd"  # the main metric network's FD, stored with the checkpoints saved at evaluations
DISCRIMINATORS = ("dcgan", "projected")
# Every field with a fixed set of values, and the table that holds them (checked before anything is built).
CHOICES = {
    "data.name": data.DATASETS, "loss": LOSSES, "model.discriminator": DISCRIMINATORS,
    "model.dtype": COMPUTE_DTYPES, "model.conv_impl": IMPLS, "model.d_trunk_stages": STAGES,
    "parallel.mode": parallel.MODES, "data.pipeline": streaming.PIPELINES, "data.file_format": data.FILE_FORMATS,
    "model.d_norm": D_NORMS,
}
_N = config_checks
# Every numeric field but the evaluation's (gan_eval.NUMBERS), by meaning.
MODEL_NUMBERS = {
    "seed": _N.NON_NEGATIVE_INT, "batch_size": _N.POSITIVE_INT, "num_steps": _N.POSITIVE_INT,
    "g_lr": _N.POSITIVE, "d_lr": _N.POSITIVE, "b1": _N.FRACTION, "b2": _N.FRACTION, "ema_decay": _N.FRACTION,
    "model.latent_dim": _N.POSITIVE_INT, "model.g_features": _N.POSITIVE_INT, "model.d_features": _N.POSITIVE_INT,
    "model.d_trunk_size": _N.NON_NEGATIVE_INT, "data.num_shards": _N.NON_NEGATIVE_INT,
    "data.workers": _N.NON_NEGATIVE_INT,
    "transfer.freeze_d_layers": _N.NON_NEGATIVE_INT, "log_every": _N.POSITIVE_INT, "sample_every": _N.POSITIVE_INT,
    "checkpoint_every": _N.POSITIVE_INT, "keep_checkpoints": _N.POSITIVE_INT, "num_sample_images": _N.POSITIVE_INT,
    "inject_nan_at_step": _N.NON_NEGATIVE_INT, "d_steps": _N.POSITIVE_INT, **private.numbers(),
}
NUMBERS = {**MODEL_NUMBERS, **gan_eval.NUMBERS}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every value the GAN trainer can refuse, refused before anything is built, read or written."""
  check_model_config(config)
  config_checks.check_numbers(config, gan_eval.NUMBERS)  # every numeric field, evaluation on or off
  if config.eval.enabled:
    gan_eval.check_eval_config(config)


def check_model_config(config: ml_collections.ConfigDict) -> None:
  """What `build_state` needs: the tables' values, a dataset D can shrink, EMA and FreezeD in range."""
  config_checks.check_choices(config, CHOICES)
  config_checks.check_numbers(config, MODEL_NUMBERS)
  m = config.model
  image_shape = data.spec(config.data.name).image_shape
  try:
    num_blocks = num_upsamplings(image_shape[0])
  except ValueError as e:
    raise ConfigError(f"data.name={config.data.name}: {e}") from None
  frozen = config.transfer.freeze_d_layers
  if frozen and m.discriminator != "dcgan":
    raise ConfigError("transfer.freeze_d_layers is for the DCGAN discriminator (the projected one's trunk is "
                      "frozen already): set it to 0")
  if not 0 <= frozen <= num_blocks:
    raise ConfigError(f"transfer.freeze_d_layers={frozen}, but D has {num_blocks} convolution blocks: "
                      f"use 1..{num_blocks} (or 0: nothing frozen)")
  private.check_config(config)
  if config.d_steps > 1 and not private.enabled(config):
    raise ConfigError(f"d_steps={config.d_steps}: several D steps per G step are implemented for the private D "
                      "(configs/gan.py:private); set d_steps=1 or dp.enabled=True")


def build_state(config: ml_collections.ConfigDict, image_shape, axis_name=None) -> gan_step.GANState:
  """A freshly initialised GANState for the config (deterministic in config.seed)."""
  m = config.model
  check_model_config(config)
  kwargs = dict(image_shape=tuple(image_shape), conv_impl=m.conv_impl, dtype=COMPUTE_DTYPES[m.dtype],
                axis_name=axis_name)
  generator = Generator(features=m.g_features, **kwargs)
  g_tx = optax.adam(config.g_lr, b1=config.b1, b2=config.b2)
  d_tx = optax.adam(config.d_lr, b1=config.b1, b2=config.b2)
  trunk = None
  if m.discriminator == "projected":
    trunk, trunk_meta = read_trunk(config)
    discriminator = ProjectedDiscriminator(features=m.d_features, stages=tuple(m.d_trunk_stages), trunk=trunk_meta,
                                           norm=m.d_norm, **kwargs)
    d_tx = param_groups.freeze(d_tx, [TRUNK])
  else:
    discriminator = Discriminator(features=m.d_features, norm=m.d_norm, **kwargs)
  if config.transfer.freeze_d_layers:  # FreezeD (Mo et al., 2020): D's lowest blocks keep their parameters
    d_tx = param_groups.freeze(d_tx, d_block_layers(config.transfer.freeze_d_layers, m.d_norm))
  init_key = jax.random.fold_in(jax.random.key(config.seed), 0x1A17)
  state = gan_step.init_state(init_key, generator, discriminator, g_tx, d_tx, image_shape=tuple(image_shape),
                              latent_dim=m.latent_dim, loss=config.loss, ema_decay=config.ema_decay)
  if trunk is not None:
    d_params, d_batch_stats = load_trunk(state.d_params, state.d_batch_stats, trunk)
    state = state.replace(d_params=d_params, d_batch_stats=d_batch_stats)
  return state


def read_trunk(config):
  """The projected discriminator's trunk: (variables, its file's record, with the resolution it is fed at)
  from a classifier's weights file, which must not be the FD feature network (a discriminator on the metric's
  own features can game the metric, Kynkaanniemi et al. 2022)."""
  m, e = config.model, config.eval
  path = m.d_trunk_weights
  if not path or not files.isfile(path):
    raise ConfigError(f"model.d_trunk_weights={path!r} does not exist: train the trunk first with python -m "
                      "experiments.main --config=configs/transfer.py:fashion_pretrain --workdir=runs/fashion_resnet18"
                      " (or point --config.model.d_trunk_weights at another tlgan ResNet18 weights file)")
  _, variables, meta = pretrained.open_network(path)
  if meta.arch != "resnet18":
    raise ConfigError(f"model.d_trunk_weights={path} holds {meta.arch} weights: the trunk is a resnet18")
  private.check_trunk(config, meta)
  metric = feature_networks.metric_weights(config.data.name, e.feature_weights) if e.enabled and e.domain_network else ""
  if metric and pretrained.sha256_of(metric) == pretrained.sha256_of(path):
    raise ConfigError(f"model.d_trunk_weights={path} is the FD feature network itself ({metric}): the "
                      "discriminator would be trained on the metric's features; use another trunk")
  return variables, dataclasses.replace(meta, image_size=int(m.d_trunk_size or meta.image_size or 32))


def init_from_source(config, state: gan_step.GANState, image_shape) -> gan_step.GANState:
  """G and D (weights, BatchNorm statistics, EMA) from another GAN run's latest checkpoint; the optimisers
  start fresh and the step at 0 (fine-tuning to a new domain, e.g. FreezeD)."""
  source = config.transfer.init_workdir
  folder = os.path.join(source, "checkpoints")
  meta = {"experiment": "gan", "image_shape": list(image_shape)}
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.transfer.freeze_d_layers = 0  # the source run's optimiser state has no frozen group
  template = build_state(plain, image_shape)
  source_state, step = Checkpointer(folder, meta).restore_latest(template)
  if step is None:
    raise ConfigError(f"transfer.init_workdir={source} has no checkpoint: train the source GAN there first")
  logging.info("Initialised G and D from %s (step %d); optimisers start fresh", source, step)
  return state.replace(g_params=source_state.g_params, g_batch_stats=source_state.g_batch_stats,
                       d_params=source_state.d_params, d_batch_stats=source_state.d_batch_stats,
                       ema_params=source_state.ema_params if state.ema_decay > 0 else state.ema_params)


def training_data(config, ds_spec, per_process_batch: int, start: int):
  """(this process's training images, for the FD floor; its batches from step `start` on), in memory or
  streamed (`data.pipeline`): the same batches either way."""
  d = config.data
  where = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None, download=d.download,
               file_format=d.file_format)
  pipeline, builder = "memory", None
  if data.is_tfds(d.name):
    builder = data.get_builder(d.name, **where)
    pipeline = streaming.choose(d.pipeline, builder)
  elif d.pipeline == "streaming":
    raise ConfigError(f"data.pipeline=streaming reads TFDS datasets prepared as ArrayRecord; {d.name} is not one: "
                      "use data.pipeline=memory")
  if pipeline == "streaming":
    shards = streaming.load_shards(builder, d.split, ds_spec.image_shape,
                                   num_shards=d.num_shards, process_index=jax.process_index(),
                                   process_count=jax.process_count())
    for shard in shards:
      logging.info("process %d streams %s[%s] (data shard %d): %d examples", jax.process_index(), d.name,
                   shard.split, shard.index, len(shard.images))
    batches = streaming.train_batches(shards, batch_size=per_process_batch, seed=config.seed, start_step=start,
                                      workers=d.workers)
    return streaming.ConcatenatedImages([s.images for s in shards]), batches
  shards = data.load_shards(d.name, d.split, num_shards=d.num_shards, process_index=jax.process_index(),
                            process_count=jax.process_count(), **where)
  loop.log_shards(d.name, shards)
  images = np.concatenate([s.images for s in shards])
  return images, data.sharded_train_batches(shards, batch_size=per_process_batch, seed=config.seed,
                                            start_step=start)


def private_training_images(config) -> np.ndarray:
  """A private run's training images, all of them in memory in every process (each draws the same Poisson batch
  and keeps its rows; `private.check_config` has refused data.pipeline=streaming)."""
  d = config.data
  shards = data.load_shards(d.name, d.split, num_shards=1, process_index=0, process_count=1,
                            data_dir=d.data_dir or None, manual_dir=d.manual_dir or None, download=d.download,
                            file_format=d.file_format)
  loop.log_shards(d.name, shards)
  return shards[0].images


def best_checkpoint(checkpointer: Checkpointer, evaluator) -> Any:
  """{step, FD key: value} of the checkpoint kept for its lowest FD during training (None without one)."""
  step = checkpointer.best_step() if evaluator is not None else None
  if step is None:
    return None
  return {"step": step, evaluator.fd_key: checkpointer.manager.metrics(step)[BEST_METRIC]}


def fixed_noise(config, n: int) -> jax.Array:
  """The latents of the sample grids: the same for every grid of a run, so grids show progress."""
  return jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), 0x5A3), (n, config.model.latent_dim))


# Fields a resumed run may change (`tlgan.run_config`): they decide what is logged, evaluated and kept, and how
# long to train (the learning rates are constant), not the parameters' trajectory. jit and pmap follow one
# trajectory; a resumed run never initialises again (transfer.init_workdir).
FREE_FIELDS = ("num_steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "num_sample_images",
               "eval", "data.data_dir", "data.manual_dir", "data.download", "data.pipeline", "data.file_format",
               "data.workers", "parallel", "transfer.init_workdir",
               "inject_nan_at_step")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains (or resumes) the GAN of `config` in `workdir`; returns the summary also written to summary.json.
  `allow_config_change`: resume even when fields outside FREE_FIELDS differ from the checkpoint's config."""
  wall_start = time.time()
  check_config(config)
  ds_spec = data.spec(config.data.name)
  dp_run = private.enabled(config)
  # A private run's batch_size is the expected size of its Poisson batches; the arrays hold dp.max_batch rows.
  sizes = parallel.batch_sizes(jax.device_count() if dp_run else config.batch_size)
  loop.check_workdir(workdir)
  par = parallel.Parallel(config.parallel.mode)
  logging.info("Parallel mode %s: %s", par.mode, parallel.describe())
  state = build_state(config, ds_spec.image_shape, axis_name=par.axis_name)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              meta={"experiment": "gan", "dataset": config.data.name,
                                    "image_shape": list(ds_spec.image_shape)},
                              max_to_keep=config.keep_checkpoints, best_metric=BEST_METRIC,
                              config=config.to_dict(),
                              # a private run's noise is calibrated to its number of steps: not free there
                              free_fields=tuple(f for f in FREE_FIELDS if not (dp_run and f == "num_steps")),
                              allow_config_change=allow_config_change)
  state, restored = checkpointer.restore_latest(state)
  if restored is None and config.transfer.init_workdir:  # resume order: this workdir > the source run > scratch
    state = init_from_source(config, state, ds_spec.image_shape)
  start = int(state.step)
  done = loop.completed_summary(workdir, start) if start >= config.num_steps else None
  if done:
    logging.info("Checkpoint %d already reaches num_steps=%d and its summary is complete: nothing to do", start,
                 config.num_steps)
    return done

  dp_plan = None
  if dp_run:
    images = private_training_images(config)
    largest = max(int(np.size(x)) for k, v in state.d_params.items() if k != private_gan.FROZEN  # what learns
                  for x in jax.tree.leaves(v))
    dp_plan = private.plan(config, dataset_size=len(images), total_steps=config.num_steps, largest_trainable=largest)
    sizes = parallel.batch_sizes(dp_plan.dp.max_batch)
    batches = private.batches(images, np.zeros(len(images), np.int32), dp_plan, seed=config.seed, start_step=start,
                              map_fn=streaming.gan_preprocessing)
  else:
    images, batches = training_data(config, ds_spec, sizes.per_process, start)
  batches = loop.poison_batches(batches, config.inject_nan_at_step, start)
  stopping.check("reading the training data")
  evaluator = None
  if config.eval.enabled:
    reference_images, _ = data.load_split(
        config.data.name, config.eval.split, data_dir=config.data.data_dir or None,
        manual_dir=config.data.manual_dir or None, download=config.data.download)
    evaluator = gan_eval.GANEvaluator(config, reference_images)

  loop.claim_workdir(workdir)  # from here on the workdir is written: this run holds it
  reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())  # for experiments.sample
  state = par.put_state(state)
  rng = jax.random.key(config.seed)
  z_fixed = fixed_noise(config, config.num_sample_images)
  sample_fn = jax.jit(gan_step.sample)

  def write_samples(step, state):
    images = np.asarray(jax.device_get(sample_fn(state, z_fixed)))
    reporting.save_image_grid(os.path.join(workdir, "samples", f"step_{step:06d}.png"), images)
    reporting.save_image_grid(os.path.join(workdir, "samples.png"), images)

  def to_device(batch):
    return par.put_batch({"image": batch["image"], **({"mask": batch["mask"]} if dp_run else {})})

  def evaluate(step, state):
    logging.info("Evaluating %d samples at step %d", config.eval.num_samples, step)
    return evaluator(state, config.eval.num_samples, max(1, config.eval.kid_subsets // 5))

  hooks = [(config.sample_every, write_samples)]
  if evaluator is not None:
    hooks.append((config.eval.every, evaluate))
  step_fn = gan_step.train_step
  if dp_run:
    step_fn = functools.partial(private_gan.train_step, clip_norm=dp_plan.clip_norm,
                                noise_multiplier=dp_plan.dp.noise_multiplier, expected_batch=dp_plan.dp.expected_batch,
                                microbatch_size=dp_plan.microbatch, clip_fake=config.dp.clip_fake,
                                d_steps=config.d_steps)
    hooks.append((config.log_every, private.epsilon_hook(dp_plan)))
  result = loop.run(
      state=state, step_fn=step_fn, batches=map(to_device, batches), rng=rng, par=par,
      config=config, workdir=workdir, checkpointer=checkpointer, start_step=start,
      global_batch=sizes.global_, hooks=hooks, best_metric=(evaluator.fd_key, BEST_METRIC) if evaluator else None)

  reporting.plot_curves(os.path.join(workdir, "losses.png"), result.history,
                        ["d_loss", "g_loss", "d_real", "d_fake"], title=f"DCGAN on {config.data.name}")
  final_eval = None
  if evaluator is not None and result.status == "completed":
    logging.info("Final evaluation: %d samples", config.eval.final_num_samples)
    final_eval = {
        **evaluator.scorer.describe(),
        "num_samples": config.eval.final_num_samples,
        "checkpoint": f"latest (step {result.step})",
        "generated": evaluator(result.state, config.eval.final_num_samples, config.eval.kid_subsets),
        # real training images against the reference (none when the reference is the training split itself, or
        # when the training images are private: their statistics are not released)
        "floor_train_vs_reference": (evaluator.floor(images) if config.eval.split != config.data.split
                                     and not dp_run else None),
    }
    name = evaluator.main_net.name
    reporting.plot_curves(os.path.join(workdir, "fd.png"), result.history,
                          [f"{m}[{name}]" for m in ("FD", "KID", "precision", "recall")],
                          title=f"{name} space, {config.eval.num_samples} samples")
  summary = {
      "experiment": "gan",
      "dataset": config.data.name,
      "status": result.status,
      "step": result.step,
      "num_steps": config.num_steps,
      "resumed_from_step": restored,
      "wall_time_s": round(time.time() - wall_start, 2),
      **result.timing(),
      "final_metrics": result.last_metrics,
      "final_eval": final_eval,
      "best_checkpoint": best_checkpoint(checkpointer, evaluator),
      "batch_size": {"global": sizes.global_, "per_process": sizes.per_process, "per_device": sizes.per_device},
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "parallel_mode": par.mode,
      "backend": jax.default_backend(),
      "machine": reporting.machine(),  # the CPU (or accelerator) behind the times and rates above
      "samples": "samples.png",
      "loss_curve": "losses.png",
  }
  if dp_plan is not None:
    summary["privacy"] = dp_plan.summary(result.step)
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
