"""Input pipeline vs GAN step: can the data keep up?

    python -m benchmarks.pipeline [--batch_size=64] [--steps=30]

Measures, in one process on this machine, the images/s the tf.data pipeline delivers (numpy batches on the
host, as the trainer consumes them) and the images/s the compiled GAN step consumes, for the default
Fashion-MNIST config, and prints both with their ratio. The pipeline should be at least 10x the step.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import jax

from configs import gan as gan_config
from tlgan import data, parallel
from tlgan.steps.gan import train_step
from tlgan.trainers.gan import build_state

flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("steps", 30, "Timed GAN steps (the pipeline gets 20x as many batches).")
FLAGS = flags.FLAGS


def pipeline_rate(images, labels, batch_size, num_batches):
  it = data.train_batches(images, labels, batch_size=batch_size, seed=0)
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


def main(_):
  config = gan_config.get_config()
  config.batch_size = FLAGS.batch_size
  images, labels = data.load_split(config.data.name, "train")
  pipe = pipeline_rate(images, labels, FLAGS.batch_size, 20 * FLAGS.steps)
  step = step_rate(config, images, labels, FLAGS.steps)
  print(f"\nFashion-MNIST, global batch {FLAGS.batch_size}, {jax.device_count()} {jax.default_backend()} device(s)")
  print(f"| what | images/s |\n|---|---|\n| input pipeline (tf.data -> numpy) | {pipe:,.0f} |")
  print(f"| DCGAN train step (D + G update) | {step:,.0f} |")
  ratio = pipe / step
  print(f"| ratio pipeline / step | {ratio:,.1f}x ({'OK' if ratio >= 10 else 'TOO SLOW'}: goal >= 10x) |")


if __name__ == "__main__":
  app.run(main)
