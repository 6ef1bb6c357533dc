"""Score samples: any program's (a uint8 .npz), or a finished GAN run's, in a metric network's space.

    python -m experiments.evaluate --samples=samples.npz --dataset=fashion_mnist
    python -m experiments.evaluate --workdir=runs/gan [--which=best] [--feature_weights=W] [--num=10000]

With --samples (uint8 'images', N x H x W x C, the format experiments.sample writes): prints one JSON line
with every metric (FD, KID, IS, precision, recall, density, coverage), the metric networks' names and
sha256, N and the reference split, with the evaluation settings of the dataset's GAN config (configs/gan.py)
— the way pytorch-fid is used on a folder. The metric network is the one tlgan ships for the dataset unless
--feature_weights names another.

With --workdir: the run's samples (its evaluation latents, --num of them) against the reference, with the
floor of real training images; writes <workdir>/eval_<network>.json and prints it. For a second opinion on a
metric the run may have been tuned against, pass --feature_weights of another classifier of the dataset.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from experiments import cli

flags.DEFINE_string("samples", None, "An .npz of uint8 images (N, H, W, C) under 'images'.")
flags.DEFINE_string("dataset", None, "With --samples: the dataset to compare with (fashion_mnist, digits28, ...).")
flags.DEFINE_string("split", "", "With --samples: the reference split (default: the GAN config's eval.split).")
flags.DEFINE_string("workdir", None, "A GAN run's workdir.")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "With --workdir: which checkpoint.")
flags.DEFINE_string("feature_weights", "", "A tlgan ResNet weights file trained on the dataset ('' = shipped).")
flags.DEFINE_integer("num", 10000, "With --workdir: how many samples.")
flags.DEFINE_string("cache_dir", "", "Where reference features are cached (default: the config's eval.cache_dir).")
FLAGS = flags.FLAGS

# The GAN config variant whose eval settings (KID subset size, ...) score each dataset's samples.
VARIANTS = {"fashion_mnist": "", "digits28": "digits", "mnist": "mnist", "cifar10": "cifar10"}


def main(argv):
  del argv
  from configs import gan
  from tlgan import reporting
  from tlgan.errors import UserError
  from tlgan.trainers import export

  def work() -> int:
    if bool(FLAGS.samples) == bool(FLAGS.workdir):
      raise UserError("pass either --samples=FILE.npz --dataset=NAME, or --workdir=RUN")
    if FLAGS.samples:
      if FLAGS.dataset not in VARIANTS:
        raise UserError(f"--dataset={FLAGS.dataset}: use one of {', '.join(VARIANTS)}")
      config = gan.get_config(VARIANTS[FLAGS.dataset])
      config.eval.feature_weights = FLAGS.feature_weights
      config.eval.cache_dir = FLAGS.cache_dir or config.eval.cache_dir
      if FLAGS.feature_weights:
        config.eval.domain_network = True
      result = export.score_samples(FLAGS.samples, config, FLAGS.split)
      print(json.dumps(result, sort_keys=True))
      return 0
    result = export.evaluate_run(FLAGS.workdir, FLAGS.feature_weights, FLAGS.num, FLAGS.which, FLAGS.cache_dir,
                                 defaults=gan.get_config())
    reporting.write_json(os.path.join(FLAGS.workdir, f"eval_{result['network']}.json"), result)
    print(json.dumps(result, indent=1))
    return 0

  return cli.guarded(work)


if __name__ == "__main__":
  cli.run(main)
