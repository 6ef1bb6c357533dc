"""Input pipelines vs training steps: can the data keep up?

    python -m benchmarks.pipeline [--batch_size=64] [--steps=30]

Measures, in one process on this machine, the images/s the tf.data pipelines deliver (numpy batches on the
host, as the trainers consume them) and the images/s the compiled steps consume, on Fashion-MNIST:
  * the GAN: [-1, 1] scaling, vs the default DCGAN step;
  * the classifier with augmentation on (random shifts + flips through crop_and_resize to 32x32x3,
    normalisation), vs the ResNet18 32x32 step at the classifier's batch size (128).
Each pipeline should deliver at least 10x what its step consumes.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import jax

from configs import gan as gan_config
from tlgan import data, parallel
from tlgan.preprocessing import IMAGENET_MEAN, IMAGENET_STD, classifier_map_fn
from tlgan.steps.gan import train_step
from tlgan.trainers.gan import build_state

flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("steps", 30, "Timed GAN steps (the pipeline gets 20x as many batches).")
FLAGS = flags.FLAGS


def pipeline_rate(images, labels, batch_size, num_batches, map_fn=data.to_gan_range):
  it = data.train_batches(images, labels, batch_size=batch_size, seed=0, map_fn=map_fn)
  next(it)  # build the graph and fill the prefetch buffer
  t = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * batch_size / (time.perf_counter() - t)


def step_rate(config, images, labels, num_steps):
  mesh = parallel.make_mesh()
  state = parallel.replicate(build_state(config, images.shape[1:]), mesh)
  it = data.train_batches(images, labels, batch_size=config.batch_size, seed=0)
  batch = parallel.global_batch({"image": next(it)["image"]}, mesh)
  step = parallel.compile_step(train_step, mesh)
  rng = jax.random.key(0)
  state, m = step(state, batch, rng)  # compile + warm up
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(num_steps):
    state, m = step(state, batch, rng)
  jax.block_until_ready(m)
  return num_steps * config.batch_size / (time.perf_counter() - t)


def resnet_step_rate(batch_size, num_steps):
  from benchmarks.jax_steps import jax_resnet18
  step = jax_resnet18(batch_size, "auto")
  t = time.perf_counter()
  for _ in range(num_steps):
    step.run()
  return num_steps * batch_size / (time.perf_counter() - t)


def main(_):
  config = gan_config.get_config()
  config.batch_size = FLAGS.batch_size
  images, labels = data.load_split(config.data.name, "train")
  pipe = pipeline_rate(images, labels, FLAGS.batch_size, 20 * FLAGS.steps)
  step = step_rate(config, images, labels, FLAGS.steps)
  augment = classifier_map_fn(train=True, image_size=32, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              crop_padding=2, flip=True, seed=0)
  clf_pipe = pipeline_rate(images, labels, 128, 5 * FLAGS.steps, map_fn=augment)
  clf_step = resnet_step_rate(128, FLAGS.steps)
  print(f"\nFashion-MNIST, {jax.device_count()} {jax.default_backend()} device(s)")
  print("| pipeline | pipeline images/s | step | step images/s | ratio (goal >= 10x) |\n|---|---|---|---|---|")
  for name, p, step_name, s in (
      (f"GAN, batch {FLAGS.batch_size}", pipe, "DCGAN (D + G update)", step),
      ("classifier, batch 128, shift + flip augmentation, 32x32x3", clf_pipe, "ResNet18 32x32", clf_step)):
    print(f"| {name} | {p:,.0f} | {step_name} | {s:,.0f} | {p / s:,.1f}x {'OK' if p / s >= 10 else 'TOO SLOW'} |")


if __name__ == "__main__":
  app.run(main)
