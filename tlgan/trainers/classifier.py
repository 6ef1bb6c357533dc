"""The classifier trainer: fine-tuning, linear probing and training from scratch, with per-epoch evaluation.

    from tlgan.trainers.classifier import train_and_evaluate
    summary = train_and_evaluate(config, workdir)

Where the weights come from, in order: the workdir's latest checkpoint (resume) > `config.init.weights` (a
tlgan weights file: converted ImageNet weights, or the `model.msgpack` another classifier run exported) >
random initialisation. Weights are merged into a freshly initialised model; the modules in
`config.init.not_loaded` (the head, by default) keep their fresh values and are listed in the log and the
summary, and any other mismatch stops the run naming the variable.
"""

import functools
import logging
import math
import os
import time
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from tlgan import (config_checks, data, files, host_preprocessing, parallel, pretrained, reporting, stopping,
                   streaming)
from tlgan.checkpoint import Checkpointer
from tlgan.errors import ConfigError
from tlgan.models import scattering, small_cnn
from tlgan.models.layers import COMPUTE_DTYPES, IMPLS
from tlgan.models.resnet import NORMS, STEMS
from tlgan.pretrained import IMAGENET_MEAN, IMAGENET_STD
from tlgan.steps import classifier as clf
from tlgan.trainers import loop
from tlgan.trainers import private

RESNETS = tuple(arch for arch, info in pretrained.ARCHS.items() if info["module"])
SMALL = tuple(small_cnn.ARCHS)  # Tramer & Boneh's DP baseline; model.stem/width/norm do not apply


# Every field with a fixed set of values, and the table that holds them (checked before anything is built).
CHOICES = {
    "data.name": data.DATASETS, "mode": clf.MODES, "optim.name": clf.OPTIMIZERS, "model.arch": RESNETS + SMALL,
    "model.stem": STEMS, "model.dtype": COMPUTE_DTYPES, "model.conv_impl": IMPLS, "parallel.mode": parallel.MODES,
    "model.channels": (1, 3), "data.pipeline": streaming.PIPELINES, "data.file_format": data.FILE_FORMATS,
    "model.norm": NORMS, "model.precondition": private.PRECONDITIONS,
}
_N = config_checks
# Every numeric field (but model.channels, a choice), by meaning.
NUMBERS = {
    "seed": _N.NON_NEGATIVE_INT, "batch_size": _N.POSITIVE_INT, "grad_accum_steps": _N.POSITIVE_INT,
    "eval_batch_size": _N.POSITIVE_INT, "num_epochs": _N.POSITIVE, "num_steps": _N.NON_NEGATIVE_INT,
    "eval_every_epochs": _N.POSITIVE, "log_every": _N.POSITIVE_INT, "checkpoint_every": _N.POSITIVE_INT,
    "keep_checkpoints": _N.POSITIVE_INT, "inject_nan_at_step": _N.NON_NEGATIVE_INT,
    "data.per_class": _N.NON_NEGATIVE_INT, "data.subset_seed": _N.Number(int, -1),
    "data.source_size": _N.NON_NEGATIVE_INT, "data.num_shards": _N.NON_NEGATIVE_INT,
    "data.workers": _N.NON_NEGATIVE_INT,
    "model.width": _N.POSITIVE_INT, "model.num_classes": _N.NON_NEGATIVE_INT, "model.image_size": _N.Number(int, 8),
    "optim.learning_rate": _N.POSITIVE, "optim.backbone_lr_factor": _N.NON_NEGATIVE, "optim.momentum": _N.FRACTION,
    "optim.weight_decay": _N.NON_NEGATIVE, "optim.warmup_epochs": _N.NON_NEGATIVE,
    "optim.label_smoothing": _N.FRACTION, "optim.ema_decay": _N.FRACTION, "augment.crop_padding": _N.NON_NEGATIVE_INT,
    "model.norm_groups": _N.POSITIVE_INT, "model.precondition_noise": _N.NON_NEGATIVE, **private.numbers(),
}


def check_config(config, prefix: str = "") -> None:
  """Every value the classifier trainer can refuse from the config alone, refused before anything is built
  (`prefix`: where the config sits in a larger one, e.g. 'pretrain.', for the messages)."""
  config_checks.check_choices(config, CHOICES, prefix)
  config_checks.check_numbers(config, NUMBERS, prefix)
  spec = data.spec(config.data.name)
  if config.model.num_classes and config.model.num_classes != spec.num_classes:
    raise ConfigError(f"{prefix}model.num_classes={config.model.num_classes} but {config.data.name} has "
                      f"{spec.num_classes} classes: set --config.{prefix}model.num_classes=0 (from the dataset)")
  private.check_config(config, prefix)
  private.check_precondition(config, prefix)


def build_model(config, num_classes: int, axis_name=None):
  m = config.model
  if m.arch in small_cnn.ARCHS:
    extra = {"precondition": True} if private.preconditioned(config) else {}  # a W in batch_stats (identity)
    return small_cnn.ARCHS[m.arch](num_classes=num_classes, dtype=COMPUTE_DTYPES[m.dtype], **extra)
  return pretrained.model_for(m.arch, num_classes, stem=m.stem, width=m.width, dtype=COMPUTE_DTYPES[m.dtype],
                              conv_impl=m.conv_impl, zero_init_residual=m.zero_init_residual, axis_name=axis_name,
                              norm=m.norm, norm_groups=m.norm_groups)


def _unchanged(batch, step, stream=0):
  del step, stream
  return batch


def fixed_features(model, images: np.ndarray, map_fn: Callable, name: str, chunk: int = 1024) -> np.ndarray:
  """`model.fixed_features` of every image (preprocessed by `map_fn`), in chunks, as one float32 array."""
  fn = jax.jit(model.fixed_features)
  out, t0 = [], time.time()
  for i in range(0, len(images), chunk):
    stopping.check("computing fixed features")
    rows = images[i:i + chunk]
    x = map_fn({"image": rows, "label": np.zeros(len(rows), np.int32)}, 0)["image"]
    out.append(np.asarray(fn(jnp.asarray(x))))
  features = np.concatenate(out)
  logging.info("fixed features of %s: %d images -> %s float32 (%.0f MB) in %.1f s", name, len(images),
               features.shape[1:], features.nbytes / 2**20, time.time() - t0)
  return features


def preconditioned_features(features: np.ndarray, w, chunk: int = 4096) -> np.ndarray:
  """`scattering.precondition` of every example's features, in chunks (the model's own operation, compiled)."""
  fn = jax.jit(scattering.precondition)
  out = np.empty(features.shape, np.float32)
  for i in range(0, len(features), chunk):
    stopping.check("preconditioning the features")
    out[i:i + chunk] = np.asarray(fn(jnp.asarray(features[i:i + chunk]), w))
  return out


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return max(1, math.ceil(num_examples / global_batch))


def check_init_weights(config):
  """(weights, meta) of `config.init.weights`, refusing a missing or foreign file and another architecture."""
  weights, meta = pretrained.load(config.init.weights)
  if meta.arch != config.model.arch:
    raise ConfigError(f"{config.init.weights} holds {meta.arch} weights, the model is {config.model.arch}: "
                      f"set --config.model.arch={meta.arch} or choose other weights")
  return weights, meta


def build_state(config, num_classes: int, total_steps: int, epoch_steps: int, log=True, axis_name=None):
  """(state, names of variables not loaded): fresh, or initialised from `config.init.weights`."""
  check_config(config)
  model = build_model(config, num_classes, axis_name=axis_name)
  image_shape = (config.model.image_size, config.model.image_size, config.model.channels)
  # One compiled init, not hundreds of op-by-op dispatches (10 s of a short run's start-up otherwise).
  fresh = jax.jit(model.init, static_argnames="train")(jax.random.fold_in(jax.random.key(config.seed), 0x1A17),
                                                       jnp.zeros((1, *image_shape)), train=False)
  variables, not_loaded = fresh, ()
  if config.init.weights:
    weights, meta = check_init_weights(config)
    variables, not_loaded = pretrained.merge_pretrained(fresh, weights, tuple(config.init.not_loaded))
    if log:
      logging.info("Initialised from %s (%s); not loaded: %s", config.init.weights, meta, ", ".join(not_loaded))
  o = config.optim
  tx = clf.make_optimizer(
      mode=config.mode, optimizer=o.name, learning_rate=o.learning_rate, backbone_lr_factor=o.backbone_lr_factor,
      momentum=o.momentum, weight_decay=o.weight_decay, warmup_steps=int(o.warmup_epochs * epoch_steps),
      total_steps=total_steps, ema_decay=o.ema_decay)
  state = clf.init_state(None, model, tx, image_shape=image_shape, num_classes=num_classes,
                         label_smoothing=o.label_smoothing, mode=config.mode,
                         variables=jax.tree.map(jnp.asarray, variables))
  return state, not_loaded


def evaluate(eval_fn, state, images, labels, batch_size, map_fn, mesh, num_classes,
             batches_fn: Callable = data.eval_batches) -> Dict[str, Any]:
  """Accuracy, mean loss and confusion matrix over a whole split: each process passes its shard, all in the
  same number of padded batches (the largest shard's), and the masked sums count every example once."""
  largest = len(images)
  if jax.process_count() > 1:
    largest = int(np.max(multihost_utils.process_allgather(np.int64(len(images)))))
  totals = None
  for batch in batches_fn(images, labels, batch_size=batch_size, map_fn=map_fn,
                          num_batches=max(1, -(-largest // batch_size))):
    stopping.check("evaluating the classifier")
    sums = eval_fn(state, parallel.global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss_sum"]) / count,
          "count": int(count), "confusion": np.asarray(totals["confusion"], np.int64)}


def plot_confusion(path: str, confusion: np.ndarray, class_names, title: str) -> None:
  if not reporting.is_writer():
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  k = len(confusion)
  fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
  rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  for i in range(k):
    for j in range(k):
      ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
              color="white" if rates[i, j] > 0.5 else "black")
  ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=7)
  ax.set_yticks(range(k), class_names, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)


def class_names(name: str, num_classes: int):
  if name in ("fashion_mnist", "mnist", "cifar10"):
    try:
      return data.get_builder(name, download=False).info.features["label"].names
    except Exception:  # info unavailable (mock data, partial install): numbers will do
      pass
  return [str(i) for i in range(num_classes)]


# Fields a resumed run may change (`tlgan.run_config`). Not the number of steps or epochs: the learning-rate
# schedule spans them. A resumed run never initialises again (init.*); jit and pmap follow one trajectory.
FREE_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints", "eval_every_epochs", "eval_batch_size",
               "data.data_dir", "data.manual_dir", "data.download", "data.pipeline", "data.file_format",
               "data.workers", "parallel", "init", "inject_nan_at_step")


def choose_pipeline(config, load) -> str:
  """'memory' or 'streaming' for this config (`tlgan.streaming.choose`); a labelled subset (data.per_class) and
  area downsampling (data.source_size) are done in memory only."""
  d = config.data
  if not data.is_tfds(d.name):
    if d.pipeline == "streaming":
      raise ConfigError(f"data.pipeline=streaming reads TFDS datasets prepared as ArrayRecord; {d.name} is not "
                        "one: use data.pipeline=memory")
    return "memory"
  pipeline = streaming.choose(d.pipeline, data.get_builder(d.name, **load))
  if pipeline == "streaming":
    for field, value in (("data.per_class", d.per_class), ("data.source_size", d.source_size)):
      if value:
        raise ConfigError(f"{field}={value} works on data in memory: set data.pipeline=memory (or {field}=0)")
  return pipeline


def memory_shards(config, load, whole: bool = False) -> list:
  """This process's training shards in memory, cut to `data.per_class` examples per class when it is set.
  `whole`: the whole training set in every process (a DP run's Poisson sampling reads all of it)."""
  d = config.data
  where = dict(num_shards=1, process_index=0, process_count=1) if whole else dict(
      num_shards=d.num_shards, process_index=jax.process_index(), process_count=jax.process_count())
  shards = data.load_shards(d.name, d.train_split, **where, **load)
  subset_seed = d.subset_seed if d.subset_seed >= 0 else config.seed
  total_shards = 1 if whole else d.num_shards or jax.process_count()
  if d.per_class % total_shards:
    raise ConfigError(f"data.per_class={d.per_class} does not split over {total_shards} data shards: "
                      f"use a multiple of {total_shards}")
  for shard in shards:  # per_class counts the whole training set: each shard draws its share
    shard.images, shard.labels = data.subset_per_class(shard.images, shard.labels, d.per_class // total_shards,
                                                       subset_seed + shard.index)
  loop.log_shards(d.name, shards)
  return shards


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains (or resumes) the classifier of `config` in `workdir`; returns the summary (also summary.json).
  `allow_config_change`: resume even when fields outside FREE_FIELDS differ from the checkpoint's config."""
  wall_start = time.time()
  check_config(config)
  num_classes = data.spec(config.data.name).num_classes
  dp_run = private.enabled(config)
  # A DP run's batch_size is the expected size of its Poisson batches; the arrays hold dp.max_batch rows.
  sizes = parallel.batch_sizes(jax.device_count() if dp_run else config.batch_size, config.grad_accum_steps)
  loop.check_workdir(workdir)
  if config.init.weights:  # fail on the weights file before loading any data
    check_init_weights(config)
  par = parallel.Parallel(config.parallel.mode)
  mesh = par.mesh
  logging.info("Parallel mode %s: %s", par.mode, parallel.describe())

  load = dict(data_dir=config.data.data_dir or None, manual_dir=config.data.manual_dir or None,
              download=config.data.download, file_format=config.data.file_format)
  pipeline = choose_pipeline(config, load)
  if dp_run and pipeline != "memory":
    raise ConfigError("dp.enabled samples batches from data in memory: set data.pipeline=memory")
  if pipeline == "streaming":
    builder = data.get_builder(config.data.name, **load)
    image_shape = data.spec(config.data.name).image_shape
    shards = streaming.load_shards(builder, config.data.train_split, image_shape, num_shards=config.data.num_shards,
                                   process_index=jax.process_index(), process_count=jax.process_count())
    for shard in shards:
      logging.info("process %d streams %s[%s] (data shard %d): %d examples", jax.process_index(),
                   config.data.name, shard.split, shard.index, len(shard.images))
  else:
    shards = memory_shards(config, load, whole=dp_run)
  load.update(process_index=jax.process_index(), process_count=jax.process_count())
  test_x, test_y = data.load_split(config.data.name, config.data.test_split, **load)
  stopping.check("reading the data")
  n_train = int(sum(len(s.images) for s in shards))
  if jax.process_count() > 1 and not dp_run:  # a DP run's processes each hold the whole set
    n_train = int(np.sum(multihost_utils.process_allgather(np.int64(n_train))))
  epoch_steps = steps_per_epoch(n_train, config.batch_size if dp_run else sizes.global_)
  if config.num_steps > 0:  # a fixed budget of steps (comparisons across dataset sizes) instead of epochs
    total_steps = config.num_steps
  else:
    total_steps = max(1, int(round(config.num_epochs * epoch_steps)))
  logging.info("%s: %d training examples (%s per class), %d test; %d steps (%.1f epochs of %d steps)",
               config.data.name, n_train, config.data.per_class or "all", len(test_x), total_steps,
               total_steps / epoch_steps, epoch_steps)

  state, not_loaded = build_state(config, num_classes, total_steps, epoch_steps, axis_name=par.axis_name)
  dp_plan = None
  if dp_run:
    dp_plan = private.plan(config, dataset_size=n_train, total_steps=total_steps,
                           largest_trainable=private.largest_trainable(state.params, config.mode))
    sizes = parallel.batch_sizes(dp_plan.dp.max_batch)
  checkpointer = Checkpointer(
      os.path.join(workdir, "checkpoints"),
      meta={"experiment": "classifier", "dataset": config.data.name, "arch": config.model.arch},
      max_to_keep=config.keep_checkpoints, config=config.to_dict(), free_fields=FREE_FIELDS,
      allow_config_change=allow_config_change)
  state, restored = checkpointer.restore_latest(state)
  start = int(state.step)
  done = loop.completed_summary(workdir, start) if start >= total_steps else None
  if done:
    logging.info("Checkpoint %d already reaches %d steps and its summary is complete: nothing to do", start,
                 total_steps)
    return done

  a = config.augment
  common = dict(image_size=config.model.image_size, channels=config.model.channels,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, source_size=config.data.source_size)
  if dp_run:  # Poisson batches, preprocessed without TensorFlow
    train_map = host_preprocessing.classifier_fn(train=True, crop_padding=a.crop_padding, flip=a.flip,
                                                 seed=config.seed, **common)
    eval_map, eval_batches = host_preprocessing.classifier_fn(train=False, **common), streaming.eval_batches
    train_x = shards[0].images
    if hasattr(state.model, "fixed_features") and not (a.crop_padding or a.flip):
      # A parameter-free front end (the scattering transform): computed once per image, not twice per step.
      train_x, test_x = (fixed_features(state.model, x, eval_map, name) for x, name in
                         ((train_x, config.data.train_split), (test_x, config.data.test_split)))
      state = state.replace(model=state.model.clone(precomputed=True))
      train_map = eval_map = _unchanged
      if private.preconditioned(config):
        if restored is None:  # else W comes with the checkpoint
          w = private.channel_preconditioner(train_x, noise_multiplier=config.model.precondition_noise,
                                             seed=config.seed)
          state = state.replace(batch_stats={**state.batch_stats, scattering.PRECONDITION: jnp.asarray(w)})
        # the precomputed model's input is the front end's output: W applied once per image, not per step
        train_x, test_x = (preconditioned_features(x, state.batch_stats[scattering.PRECONDITION])
                           for x in (train_x, test_x))
    batches = private.batches(train_x, shards[0].labels, dp_plan, seed=config.seed, start_step=start,
                              map_fn=train_map)
  elif pipeline == "streaming":  # the same batches, without TensorFlow
    train_map = host_preprocessing.classifier_fn(train=True, crop_padding=a.crop_padding, flip=a.flip,
                                                 seed=config.seed, **common)
    eval_map, eval_batches = host_preprocessing.classifier_fn(train=False, **common), streaming.eval_batches
    batches = streaming.train_batches(shards, batch_size=sizes.per_process, seed=config.seed, start_step=start,
                                      map_fn=train_map, workers=config.data.workers)
  else:
    from tlgan.preprocessing import classifier_map_fn  # TensorFlow
    train_map = classifier_map_fn(train=True, crop_padding=a.crop_padding, flip=a.flip, seed=config.seed,
                                  **common)
    eval_map, eval_batches = classifier_map_fn(train=False, **common), data.eval_batches
    batches = data.sharded_train_batches(shards, batch_size=sizes.per_process, seed=config.seed,
                                         start_step=start, map_fn=train_map)
  batches = loop.poison_batches(batches, config.inject_nan_at_step, start)
  state = par.put_state(state)
  eval_fn = jax.jit(clf.eval_step)
  eval_batch = max(sizes.per_process, config.eval_batch_size // jax.process_count())
  eval_batch -= eval_batch % jax.local_device_count()
  results = {}

  def run_eval(step, state):
    res = evaluate(eval_fn, state, test_x, test_y, eval_batch, eval_map, mesh, num_classes, eval_batches)
    results["last"] = res
    results.setdefault("history", []).append({"step": step, "epoch": step / epoch_steps,
                                              "test_accuracy": res["accuracy"]})
    logging.info("step %d (epoch %.2f): test accuracy %.4f, loss %.4f", step, step / epoch_steps,
                 res["accuracy"], res["loss"])
    return {"test_accuracy": res["accuracy"], "test_loss": res["loss"]}

  eval_every = max(1, int(round(config.eval_every_epochs * epoch_steps)))
  hooks = ((eval_every, run_eval),)
  step_fn = functools.partial(clf.train_step, accum_steps=config.grad_accum_steps)
  if dp_run:
    step_fn = private.step_fn(dp_plan, config.mode)
    hooks += ((config.log_every, private.epsilon_hook(dp_plan)),)
  result = loop.run(
      state=state, step_fn=step_fn, num_steps=total_steps, batches=map(par.put_batch, batches),
      rng=jax.random.key(config.seed), par=par, config=config, workdir=workdir, checkpointer=checkpointer,
      start_step=start, global_batch=sizes.global_, hooks=hooks)

  final = results.get("last")
  names = class_names(config.data.name, num_classes)
  if final is not None:
    plot_confusion(os.path.join(workdir, "confusion.png"), final["confusion"], names,
                   f"{config.model.arch} on {config.data.name}: test accuracy {final['accuracy']:.4f}")
  reporting.plot_curves(os.path.join(workdir, "curves.png"), result.history,
                        ["loss", "accuracy", "test_accuracy"], title=f"{config.model.arch} on {config.data.name}")
  if reporting.is_writer() and result.status == "completed":
    final_state = jax.device_get(result.state)
    pretrained.save(os.path.join(workdir, "model.msgpack"),
                    final_state.eval_variables,  # the parameters' EMA when one is kept
                    pretrained.WeightsMeta(
                        arch=config.model.arch, source=f"tlgan classifier on {config.data.name}",
                        stem=config.model.stem, image_size=config.model.image_size, channels=config.model.channels,
                        source_size=config.data.source_size, dataset=config.data.name))
  summary = {
      "experiment": "classifier",
      "dataset": config.data.name,
      "mode": config.mode,
      "init": config.init.weights or "scratch",
      "not_loaded": list(not_loaded),
      "per_class": config.data.per_class,
      "train_examples": n_train,
      "status": result.status,
      "step": result.step,
      "num_steps": total_steps,
      "epochs": result.step / epoch_steps,
      "resumed_from_step": restored,
      "test_accuracy": final["accuracy"] if final else None,
      "test_examples": final["count"] if final else None,
      "accuracy_history": results.get("history", []),
      "wall_time_s": round(time.time() - wall_start, 2),
      **result.timing(),
      "final_metrics": {k: v for k, v in result.last_metrics.items()},
      "batch_size": {"global": sizes.global_, "per_process": sizes.per_process, "per_device": sizes.per_device},
      "grad_accum_steps": config.grad_accum_steps,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "parallel_mode": par.mode,
      "backend": jax.default_backend(),
      "machine": reporting.machine(),  # the CPU (or accelerator) behind the times and rates above
  }
  if dp_plan is not None:
    summary["privacy"] = dp_plan.summary(result.step)
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
