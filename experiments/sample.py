"""Export samples of a trained GAN for outside tools: uint8 images (N, H, W, C) under the key 'images'.

    python -m experiments.sample --workdir=runs/gan --num=10000 --output=samples.npz

Uses the workdir's latest checkpoint and the config saved with it, the EMA generator when the run had one,
and a fixed seed (--seed) for the latents.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_string("workdir", None, "A GAN run's workdir.")
flags.DEFINE_integer("num", 10000, "How many samples.")
flags.DEFINE_string("output", "samples.npz", "Where to write the .npz.")
flags.DEFINE_integer("seed", 0, "Seed of the latents.")
flags.DEFINE_integer("batch_size", 500, "Samples generated per call.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from tlgan.errors import UserError
  from tlgan.trainers import export
  try:
    path = export.export_samples(FLAGS.workdir, FLAGS.num, FLAGS.output, seed=FLAGS.seed,
                                 batch_size=FLAGS.batch_size)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {FLAGS.num} samples to {path}")


if __name__ == "__main__":
  app.run(main)
