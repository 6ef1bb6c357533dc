"""tlgan's entry point: `python -m experiments.main --config=configs/gan.py --workdir=runs/gan`.

Parses flags, starts JAX's distributed runtime when asked, logs the devices, and hands the config to the
trainer named by `config.experiment`. Problems with the input end the run with one line on stderr and exit
status 2 (`--verbose` shows the traceback).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/gan.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs, PNGs and summary.json go.")
flags.DEFINE_bool("verbose", False, "Show tracebacks of input errors.")
flags.mark_flags_as_required(["config", "workdir"])


def trainers():
  from tlgan.trainers import classifier, gan, transfer_study
  return {"gan": gan.train_and_evaluate, "classifier": classifier.train_and_evaluate,
          "transfer_study": transfer_study.train_and_evaluate}


class _QuietLibraries:
  """Drops INFO records of chatty libraries (Orbax logs every save in detail); warnings still pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "jax"))


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  import jax
  from tlgan.errors import UserError

  config = FLAGS.config
  logging.info("JAX %s, backend %s, process %d of %d, devices: %s", jax.__version__, jax.default_backend(),
               jax.process_index(), jax.process_count(), jax.devices())
  logging.info("Config:\n%s", config)
  table = trainers()
  try:
    if config.experiment not in table:
      raise UserError(f"unknown experiment {config.experiment!r} in the config: use one of {sorted(table)}")
    summary = table[config.experiment](config, FLAGS.workdir)
  except UserError as e:
    if FLAGS.verbose:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if summary.get("status") == "preempted":
    sys.exit(3)


if __name__ == "__main__":
  app.run(main)
