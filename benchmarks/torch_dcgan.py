"""Time to quality: the PyTorch reference DCGAN trained for a wall-clock budget, scored by tlgan's metric.

    python -m benchmarks.torch_dcgan --minutes=10 --workdir=runs/torch_dcgan
    python -m benchmarks.torch_dcgan --steps=3000 --seed=1 --workdir=runs/torch_dcgan_s1   # equal steps instead

Trains `benchmarks.torch_reference.TorchDCGAN` (tlgan's DCGAN in PyTorch, tested step for step against it) on
Fashion-MNIST (the same offline data and batch size as the default `configs/gan.py` run) for `--minutes` of
training or exactly `--steps` steps, then scores 10,000 samples (quantised to uint8, as every sample tlgan
scores) with the default run's final metrics (the shipped Fashion-MNIST metric network, the same reference) and
writes summary.json and samples.png. The default tlgan run's own summary.json holds the numbers to compare with.
"""

from benchmarks import torch_reference  # torch before TensorFlow (tlgan.data imports it)

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
import numpy as np

flags.DEFINE_float("minutes", 10.0, "Training budget (wall clock, data loading included).")
flags.register_validator("minutes", lambda v: v > 0, message="--minutes must be > 0 (the training budget)")
flags.DEFINE_integer("steps", 0, "If > 0, train exactly this many steps and ignore --minutes (an equal-steps "
                     "comparison with a tlgan run, e.g. the default run's 3,000).", lower_bound=0)
flags.DEFINE_string("workdir", "runs/torch_dcgan", "Where summary.json and samples.png go.")
flags.DEFINE_integer("batch_size", 64, "As the default configs/gan.py.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the weights, the data order and the latents.", lower_bound=0)
flags.DEFINE_integer("num_samples", 10000, "Samples scored at the end.", lower_bound=1)
FLAGS = flags.FLAGS


def main(_):
  torch = torch_reference.torch
  from configs import gan as gan_config
  from tlgan import data, files, reporting
  from tlgan.feature_networks import to_uint8
  from tlgan.trainers.gan_eval import GANEvaluator
  try:  # before the training it would lose: a folder this process cannot write to
    files.atomic_write(os.path.join(FLAGS.workdir, ".write_check"), lambda f: f.write(b""))
    os.remove(os.path.join(FLAGS.workdir, ".write_check"))
  except OSError as e:
    raise SystemExit(f"error: cannot write to --workdir={FLAGS.workdir} ({e.strerror}): choose a writable folder")
  config = gan_config.get_config()
  config.batch_size = FLAGS.batch_size
  images, _ = data.load_split(config.data.name, "train")
  test_images, _ = data.load_split(config.data.name, config.eval.split)

  gan = torch_reference.TorchDCGAN(FLAGS.batch_size, seed=FLAGS.seed)
  real_all = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
  step, train_s = torch_reference.train_for(gan.train_step, real_all, FLAGS.batch_size, seed=FLAGS.seed,
                                                budget_s=FLAGS.minutes * 60, steps=FLAGS.steps)

  evaluator = GANEvaluator(config, test_images)
  summary = {"steps": step, "train_seconds": train_s, "images_per_second": step * FLAGS.batch_size / train_s,
             "budget": f"{FLAGS.steps} steps" if FLAGS.steps else f"{FLAGS.minutes:g} minutes",
             "batch_size": FLAGS.batch_size, "torch_threads": torch.get_num_threads(),
             "machine": reporting.machine(), **evaluator.scorer.describe()}
  torch.manual_seed(FLAGS.seed + 1)
  z = torch.randn(FLAGS.num_samples, 100, 1, 1)
  for mode in ("eval", "train"):  # running BatchNorm statistics (as tlgan samples), or batch statistics
    gan.g.train(mode == "train")
    with torch.no_grad():
      samples = torch.cat([gan.g(z[i:i + 500]) for i in range(0, len(z), 500)]).numpy().transpose(0, 2, 3, 1)
    result = evaluator.scorer(to_uint8(samples), config.eval.kid_subsets)
    summary.update({f"{k} ({mode}-mode G)": v for k, v in result.items()})
    if mode == "eval":
      reporting.save_image_grid(os.path.join(FLAGS.workdir, "samples.png"), samples[:64])
      files.atomic_write(os.path.join(FLAGS.workdir, "samples.npz"),  # for experiments.evaluate
                         lambda f, images=to_uint8(samples): np.savez(f, images=images))
  reporting.write_json(os.path.join(FLAGS.workdir, "summary.json"), summary)
  print("\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()))


if __name__ == "__main__":
  app.run(main)
