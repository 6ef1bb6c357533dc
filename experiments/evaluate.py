"""Evaluate a finished GAN run in another feature network's space (FD, KID, IS, and the real-data floor).

    python -m experiments.evaluate --workdir=runs/gan --feature_weights=runs/fashion_cifarstem/model.msgpack

For a second opinion on a metric the run may have been tuned against (a discriminator built on features like
the metric's can game it): train another classifier on the dataset (configs/transfer.py, another stem, width
or seed) and measure the samples there. Writes <workdir>/eval_<network>.json and prints it.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_string("workdir", None, "A GAN run's workdir.")
flags.DEFINE_string("feature_weights", None, "A tlgan ResNet weights file trained on the run's dataset.")
flags.DEFINE_integer("num", 10000, "How many samples.")
flags.mark_flags_as_required(["workdir", "feature_weights"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from tlgan import reporting
  from tlgan.errors import UserError
  from tlgan.trainers import export
  try:
    result = export.evaluate_run(FLAGS.workdir, FLAGS.feature_weights, FLAGS.num)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  reporting.write_json(os.path.join(FLAGS.workdir, f"eval_{result['network']}.json"), result)
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  app.run(main)
