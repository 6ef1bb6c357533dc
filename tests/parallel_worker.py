"""Run by tests/test_parallel.py in a subprocess with fake CPU devices (the caller sets XLA_FLAGS).

Trains the GAN and the classifier for a few steps on one device, in jit mode over all devices and in pmap mode
over all devices, from the same initial state on the same global batches, and prints one JSON line: for each
comparison the largest parameter difference and, for scale, the largest parameter change the steps made.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from configs import gan as gan_config
from configs import transfer
from tlgan import parallel
from tlgan.steps import classifier as clf
from tlgan.steps import gan as gan_step
from tlgan.trainers import classifier as clf_trainer
from tlgan.trainers import gan as gan_trainer

STEPS = 3
GLOBAL_BATCH = 2 * jax.device_count()


def run(mode, build, step_fn, batches):
  """Final (params, initial params) after the batches, on one device ('single') or with Parallel(mode)."""
  rng = jax.random.key(0)
  if mode == "single":
    state = build(None)
    initial = jax.device_get(state)
    step = jax.jit(step_fn)
    for b in batches:
      state, _ = step(state, b, rng)
    return jax.device_get(state), initial
  par = parallel.Parallel(mode)
  host = build(par.axis_name)
  initial = jax.device_get(host)
  state = par.put_state(host)
  compiled = par.compile(step_fn, state, par.put_batch(batches[0]), rng)
  for b in batches:
    state, _ = compiled(state, par.put_batch(b), rng)
  return jax.device_get(par.host_state(state)), initial


def compare(final, reference, initial, fields):
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for f in fields for a, b in zip(jax.tree.leaves(getattr(final, f)), jax.tree.leaves(getattr(reference, f))))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for f in fields for a, b in zip(jax.tree.leaves(getattr(reference, f)), jax.tree.leaves(getattr(initial, f))))
  return {"max_diff": diff, "max_change": moved}


def gan_results():
  config = gan_config.get_config("smoke")
  config.batch_size = GLOBAL_BATCH
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (GLOBAL_BATCH, 28, 28, 1)).astype(np.float32)} for _ in range(STEPS)]
  build = lambda axis_name: gan_trainer.build_state(config, (28, 28, 1), axis_name=axis_name)
  runs = {mode: run(mode, build, gan_step.train_step, batches) for mode in ("single", "jit", "pmap")}
  fields = ("g_params", "d_params", "g_batch_stats", "d_batch_stats")
  return {f"gan_{mode}": compare(runs[mode][0], runs["single"][0], runs["single"][1], fields)
          for mode in ("jit", "pmap")}


def classifier_config(mode="full", arch="resnet18"):
  config = transfer.get_config("smoke")
  config.mode = mode
  config.model.arch = arch
  config.batch_size = GLOBAL_BATCH
  config.optim.warmup_epochs = 0.0
  # The CIFAR stem keeps layer4 at 4x4: with the ImageNet stem a 32x32 image reaches it as 1x1, BatchNorm there
  # normalises 2 values per device, and float32 rounding differences of any two reduction orders grow to
  # percents within 3 steps (jax 0.12 showed it: 17%); the comparison is then of noise, not of parallelism.
  config.model.stem = "cifar"
  return config


def classifier_results():
  rng = np.random.default_rng(1)
  batches = [{"image": rng.normal(size=(GLOBAL_BATCH, 32, 32, 3)).astype(np.float32),
              "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)} for _ in range(STEPS)]
  out = {}
  config = classifier_config("full")
  build = lambda axis_name: clf_trainer.build_state(config, 10, 100, 10, log=False, axis_name=axis_name)[0]
  single = run("single", build, clf.train_step, batches)
  for par_mode in ("jit", "pmap"):
    final, _ = run(par_mode, build, clf.train_step, batches)
    out[f"classifier_full_{par_mode}"] = compare(final, single[0], single[1], ("params", "batch_stats"))
  # Gradient accumulation under pmap vs the whole batch on one device, where accumulation must equal the whole
  # batch: a linear probe of the small tanh CNN (no BatchNorm; two compiles of it take seconds, of ResNet18 ~30 s).
  config = classifier_config("linear_probe", "tanh_cnn")
  single = run("single", build, clf.train_step, batches)
  accumulated = lambda s, b, r, axis_name=None: clf.train_step(s, b, r, axis_name, accum_steps=2)
  final, _ = run("pmap", build, accumulated, batches)
  out["classifier_linear_probe_pmap_accum2"] = compare(final, single[0], single[1], ("params",))
  return out


def eval_results():
  """Masked evaluation of 37 examples in batches of 16 over all devices: every example counted once."""
  config = classifier_config(arch="tanh_cnn")
  state, _ = clf_trainer.build_state(config, 10, 100, 10, log=False)
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (37, 32, 32, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, 37).astype(np.int32)
  identity = lambda b, step, stream=0: {"image": tf.cast(b["image"], tf.float32) / 255, "label": b["label"]}
  mesh = parallel.make_mesh()
  res = clf_trainer.evaluate(jax.jit(clf.eval_step), parallel.replicate(state, mesh), images, labels, 16,
                             identity, mesh, 10)
  logits = state.model.apply(state.variables, jnp.asarray(images, jnp.float32) / 255, train=False)
  expected = float(np.mean(np.argmax(np.asarray(logits), -1) == labels))
  return {"eval": {"count": res["count"], "accuracy": res["accuracy"], "expected_accuracy": expected,
                   "confusion_total": int(res["confusion"].sum())}}


if __name__ == "__main__":
  results = {"devices": jax.device_count()}
  for part in sys.argv[1:]:
    results.update({"gan": gan_results, "classifier": classifier_results, "eval": eval_results}[part]())
  print("RESULTS " + json.dumps(results))
