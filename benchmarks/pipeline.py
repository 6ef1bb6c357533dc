"""Input pipelines vs training steps: can the data keep up?

    python -m benchmarks.pipeline [--batch_size=64] [--steps=30]
    python -m benchmarks.pipeline --streaming_gb=3 [--workers=1,2]

Measures, in one process on this machine, the images/s the tf.data pipelines deliver (numpy batches on the
host, as the trainers consume them) and the images/s the compiled steps consume, on Fashion-MNIST:
  * the GAN: [-1, 1] scaling, vs the default DCGAN step;
  * the classifier with augmentation on (random shifts + flips through crop_and_resize to 32x32x3,
    normalisation), vs the ResNet18 32x32 step at the classifier's batch size (128).
Each pipeline should deliver at least 10x what its step consumes.

With --streaming_gb=G, instead: the streaming path (`tlgan.streaming`) on a synthetic TFDS dataset of G GB
(32x32x3 uint8 images, prepared as ArrayRecord into a temporary folder, removed at the end), read with 1 and
2 Grain worker processes (and with threads in the reading process), each in a fresh process whose peak RSS
(PSS, with its workers) is sampled from /proc; the reading process imports only Grain, TFDS and
`tlgan.streaming` (no TensorFlow, no JAX computation); against the ResNet18 32x32 step's images/s at batch 128.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import jax

from benchmarks import synthetic_data
from configs import gan as gan_config
from tlgan import data, parallel
from tlgan.preprocessing import IMAGENET_MEAN, IMAGENET_STD, classifier_map_fn
from tlgan.steps.gan import train_step
from tlgan.trainers.gan import build_state

flags.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("steps", 30, "Timed GAN steps (the pipeline gets 20x as many batches).", lower_bound=1)
flags.DEFINE_float("streaming_gb", 0.0, "> 0: benchmark the streaming path on a synthetic dataset of this size.",
                   lower_bound=0.0)
flags.DEFINE_list("workers", ["0", "1", "2"], "Streaming: Grain worker processes per run (0: threads only).")
flags.DEFINE_integer("stream_batches", 400, "Streaming: timed batches of 128 per run.", lower_bound=1)

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


STREAM_BATCH = 128


def _tree_memory(pid: int) -> int:
  """Proportional set size (PSS: each shared page split among the processes sharing it, so a forked worker's
  pages are not counted twice) of `pid` and its descendants (Grain's workers), in bytes, from /proc."""
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f"/proc/{p}/smaps_rollup") as f:
        total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
      for task in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{task}/children") as f:
          todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      continue
  return total


def streaming_table(gb: float, workers, num_batches: int) -> None:
  folder = tempfile.mkdtemp(prefix="tlgan-streaming-bench-")
  try:
    num_examples = int(gb * 1e9 / (synthetic_data.IMAGE_SHAPE[0] * synthetic_data.IMAGE_SHAPE[1] * synthetic_data.IMAGE_SHAPE[2])) + 1
    t = time.perf_counter()
    builder = synthetic_data.builder(folder, num_examples)
    builder.download_and_prepare()
    on_disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
    print(f"prepared {num_examples:,} examples, {on_disk / 1e9:.2f} GB of ArrayRecord in {folder} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    step = resnet_step_rate(STREAM_BATCH, FLAGS.steps)
    rows, imported_tf = [], False
    for n in workers:
      proc = subprocess.Popen([sys.executable, "-m", "benchmarks.synthetic_data", folder, str(n), str(num_batches),
                               str(STREAM_BATCH)], stdout=subprocess.PIPE, text=True)
      peak = [0]

      def sample():
        while proc.poll() is None:
          peak[0] = max(peak[0], _tree_memory(proc.pid))
          time.sleep(0.1)

      sampler = threading.Thread(target=sample, daemon=True)
      sampler.start()
      out, _ = proc.communicate()
      sampler.join()
      if proc.returncode:
        raise SystemExit(f"the streaming run with {n} workers failed (status {proc.returncode})")
      result = json.loads(out.strip().splitlines()[-1])
      rows.append((int(n), result["images_per_s"], peak[0]))
      imported_tf = imported_tf or result["tensorflow_imported"]
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  from tlgan import reporting
  print(f"\nStreaming {on_disk / 1e9:.2f} GB of ArrayRecord ({num_examples:,} images 32x32x3), batch "
        f"{STREAM_BATCH}, {num_batches} timed batches per run; {reporting.cpu_model()}, {os.cpu_count()} cores")
  print(f"ResNet18 32x32 step (batch {STREAM_BATCH}, {jax.default_backend()}): {step:,.0f} images/s\n")
  print("| Grain workers | images/s | ratio to the step (goal >= 10x) | peak memory (PSS), reader + workers (goal < 1 GB) |")
  print("|---|---|---|---|")
  for n, rate, rss in rows:
    label = f"{n} (threads in the reader)" if n == 0 else str(n)
    print(f"| {label} | {rate:,.0f} | {rate / step:,.1f}x {'OK' if rate / step >= 10 else 'TOO SLOW'} | "
          f"{rss / 2**20:,.0f} MiB {'OK' if rss < 2**30 else 'TOO BIG'} |")
  print(f"\nTensorFlow imported by the reading process: {'yes' if imported_tf else 'no'}")


def main(_):
  if FLAGS.streaming_gb > 0:
    streaming_table(FLAGS.streaming_gb, FLAGS.workers, FLAGS.stream_batches)
    return
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
