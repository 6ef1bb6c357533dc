"""Export samples of a trained GAN for outside tools: uint8 images (N, H, W, C) under the key 'images'.

    python -m experiments.sample --workdir=runs/gan --num=10000 --output=samples.npz [--which=best]

Uses the workdir's latest (or best-FD) checkpoint and the config saved with it, and the EMA generator when
the run had one. By default the latents are the run's own evaluation latents, so that
`python -m experiments.evaluate --samples=samples.npz --dataset=...` reproduces the run's summary.json numbers
(same checkpoint and count); --seed draws other latents.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from experiments import cli

flags.DEFINE_string("workdir", None, "A GAN run's workdir.")
flags.DEFINE_integer("num", 10000, "How many samples.")
flags.DEFINE_string("output", "samples.npz", "Where to write the .npz.")
flags.DEFINE_integer("seed", None, "Seed of other latents (default: the run's evaluation latents).")
flags.DEFINE_integer("batch_size", 500, "Samples generated per call.")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "The latest checkpoint, or the one with the best FD.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from configs import gan
  from tlgan.trainers import export

  def work() -> int:
    path = export.export_samples(FLAGS.workdir, FLAGS.num, FLAGS.output, seed=FLAGS.seed,
                                 batch_size=FLAGS.batch_size, which=FLAGS.which, defaults=gan.get_config())
    print(f"wrote {FLAGS.num} samples to {path}")
    return 0

  return cli.guarded(work)


if __name__ == "__main__":
  cli.run(main)
