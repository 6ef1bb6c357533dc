"""Train a metric network for FD/KID/precision/recall on a dataset, once, and write the file tlgan ships.

    python -m experiments.metric_network --dataset=fashion_mnist   # ~8 min on a 2-core AMD EPYC
    python -m experiments.metric_network --dataset=digits28

Trains configs/metric_network.py:<dataset> with the classifier trainer in --workdir (resumable), then writes
tlgan/metric_networks/<name>.msgpack (the weights, their test accuracy and this provenance) and prints the
sha256 line to pin in `tlgan.feature_networks.SHIPPED`. The shipped files were made by this command; retraining
gives another network (XLA's CPU code differs between processors), hence other numbers: that is why a metric
network is a file with a hash, not something each machine trains.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging

from experiments import cli

flags.DEFINE_string("dataset", None, "fashion_mnist or digits28 (a variant of configs/metric_network.py).")
flags.DEFINE_string("workdir", "", "The classifier run's workdir (default: runs/metric_network/<dataset>).")
flags.DEFINE_string("output", "", "Where to write the weights (default: tlgan/metric_networks/<name>.msgpack).")
flags.mark_flags_as_required(["dataset"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from configs import metric_network
  from tlgan import feature_networks, pretrained, stopping
  from tlgan.errors import UserError
  from tlgan.trainers import classifier
  logging.set_verbosity(logging.INFO)

  def work() -> int:
    if FLAGS.dataset not in metric_network.DATASETS:
      raise UserError(f"--dataset={FLAGS.dataset}: use one of {', '.join(metric_network.DATASETS)}")
    config = metric_network.get_config(FLAGS.dataset)
    name = f"{config.model.arch}w{config.model.width}-{FLAGS.dataset}"
    workdir = FLAGS.workdir or os.path.join("runs", "metric_network", FLAGS.dataset)
    output = FLAGS.output or os.path.join(feature_networks.SHIPPED_DIR, f"{name}.msgpack")
    summary = classifier.train_and_evaluate(config, workdir)
    if summary.get("status") == "preempted":
      return stopping.EXIT_STOPPED  # (the loop said where it stopped: the same command resumes)
    if summary.get("status") != "completed":
      raise UserError(f"training in {workdir} did not complete ({summary.get('status')}): rerun to resume it")
    variables, meta = pretrained.load(os.path.join(workdir, "model.msgpack"))
    meta = dataclasses.replace(
        meta, name=name, test_accuracy=f"{summary['test_accuracy']:.4f}",
        source=f"python -m experiments.metric_network --dataset={FLAGS.dataset} (configs/metric_network.py)")
    pretrained.save(output, variables, meta)
    print(f"wrote {output}: {name}, test accuracy {summary['test_accuracy']:.4f}")
    print(f'pin in tlgan/feature_networks.py SHIPPED: "{FLAGS.dataset}": ("{name}", '
          f'"{pretrained.sha256_of(output)}"),')
    return 0

  return cli.guarded(work)


if __name__ == "__main__":
  cli.run(main)
