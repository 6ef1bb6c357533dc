"""tlgan's entry point: `python -m experiments.main --config=configs/gan.py --workdir=runs/gan`.

Parses flags, logs the devices, and hands the config to the trainer named by `config.experiment`. Problems
with the input (an unknown config field, a bad value, missing data, a workdir that does not fit) end the run
with one line on stderr and exit status 2 (`--verbose` shows the traceback). Exit statuses:

  0    done: the training, its final evaluation and summary.json are complete (a rerun does nothing)
  2    an input error (one `error:` line)
  3    stopped by SIGTERM, SIGINT (Ctrl-C) or SIGHUP in any phase, with every checkpoint already written kept
       (a checkpoint is saved at the step training was at): more to do, run the same command to continue
  128+N  a second stop signal N exited at once (130 for a second Ctrl-C), without saving anything more
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tlgan uses TensorFlow for tf.data only. `import tensorflow` otherwise imports Keras 3 eagerly (and scikit-learn
# through it): 2 of its 5 seconds on a 2-core CPU, in every run. With this set it looks for the legacy tf_keras
# package instead, and goes on without it when it is not installed; tf.keras is then unavailable in this process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import logging as py_logging

from tlgan import stopping  # noqa: E402  (first: it imports nothing heavy)
from experiments import cli  # noqa: E402

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/gan.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs, PNGs and summary.json go.")
flags.DEFINE_bool("verbose", False, "Show tracebacks of input errors.")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir even though fields that shape the training "
                  "trajectory (seed, batch size, loss, model, ...) differ from its checkpoint's config; each "
                  "difference is logged. Without it such a resume is refused (see tlgan/run_config.py).")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, 0 .. num_processes - 1.")
flags.DEFINE_integer("heartbeat_timeout", 100, "Multi-process runs: seconds after which a silent process is "
                     "declared dead and the others stop with an error instead of waiting forever.")
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables by which clusters announce a multi-process job that jax.distributed.initialize() can
# configure itself from (Cloud TPU pods, SLURM, Open MPI, an explicit JAX_COORDINATOR_ADDRESS).
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS",
                  "OMPI_COMM_WORLD_SIZE")


TRAINERS = {"gan": "tlgan.trainers.gan", "classifier": "tlgan.trainers.classifier",
            "transfer_study": "tlgan.trainers.transfer_study",
            "private_study": "tlgan.trainers.private_study", "style": "tlgan.trainers.style"}


def trainer(experiment: str):
  """The experiment's train_and_evaluate, importing only its own trainer (a GAN run on ArrayRecord data needs
  no TensorFlow; the classifier's augmentations do)."""
  import importlib
  return importlib.import_module(TRAINERS[experiment]).train_and_evaluate


class _QuietLibraries:
  """Drops INFO records of chatty libraries (Orbax logs every save in detail); warnings still pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "jax"))


def initialize_distributed() -> None:
  """Joins a multi-process run: explicitly from the flags, or from the cluster's environment (TPU pods,
  SLURM, MPI); a lone process on a laptop does neither."""
  import jax
  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  slurm_multi = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_multi = len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  env_multi = slurm_multi or tpu_multi or any(os.environ.get(k) for k in _CLUSTER_HINTS[1:])
  if not any(v is not None for v in explicit) and not env_multi:
    return
  # CPU processes exchange collectives through gloo (GPUs and TPUs use their own interconnect).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together: give all three")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  from tlgan import stopping
  stopping.reclaim()  # initialize put JAX's SIGTERM notifier over ours: the loop's vote needs every signal


def _quiet_unraisable(unraisable) -> None:
  # Orbax leaves coroutines of a failed restore (a damaged checkpoint it then skips) to the garbage collector,
  # which would print their tracebacks after the run's own last line. Logged, not printed, unless --verbose.
  logging.debug("ignored in %r: %s", unraisable.object, unraisable.exc_value)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if not FLAGS.verbose:
    sys.unraisablehook = _quiet_unraisable
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  initialize_distributed()
  import jax
  from tlgan.errors import UserError

  config = FLAGS.config
  logging.info("JAX %s, backend %s, process %d of %d, devices: %s", jax.__version__, jax.default_backend(),
               jax.process_index(), jax.process_count(), jax.devices())
  if jax.default_backend() == "cpu":
    from tlgan import reporting
    from tlgan.models import layers
    logging.info("CPU %s: %s", reporting.cpu_model(), layers.describe_cpu_gemms())
  logging.info("Config:\n%s", config)

  def work() -> int:
    if config.experiment not in TRAINERS:
      raise UserError(f"unknown experiment {config.experiment!r} in the config: use one of {sorted(TRAINERS)}")
    summary = trainer(config.experiment)(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    return stopping.EXIT_STOPPED if summary.get("status") == "preempted" else 0

  return cli.guarded(work, verbose=FLAGS.verbose)


def _parse_or_exit(argv):
  """Parses the flags and loads the config; a bad flag, config file, variant or override is one line on stderr
  and exit status 2. The config file, its variants and the override names are checked here, against the
  config itself; what absl and ml_collections still refuse (a value of the wrong type) is their first line."""
  verbose = "--verbose" in argv or "--verbose=true" in argv
  try:
    problem = _check_config_args(argv)
    if problem:
      raise ValueError(problem)
    remaining = FLAGS(argv)
    FLAGS.config.experiment  # a config file that failed to load raises here
    return remaining
  except Exception as e:  # our checks, absl flag errors, ml_collections' errors for values
    if verbose:
      raise
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    print(f"error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
    sys.exit(2)


def _check_config_args(argv):
  """The problem with --config=FILE[:VARIANTS] and the --config.FIELD=VALUE names, or None: the file exists,
  its get_config(VARIANTS) runs, and every overridden field exists in the config it returns."""
  import difflib
  import importlib.util
  import ml_collections
  spec_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec_arg is None:
    return None  # absl reports the missing flag
  path, _, variant_arg = spec_arg.partition(":")
  if not os.path.isfile(path):
    return f"--config={spec_arg}: no such config file"
  module_spec = importlib.util.spec_from_file_location("_tlgan_config_check", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    config = module.get_config(variant_arg or None)
  except ValueError as e:  # configs.variants.VariantError and the files' own checks
    return f"--config={spec_arg}: {e}"
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    name = arg[2:].split("=", 1)[0]
    node = config
    for key in name.split(".")[1:]:
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(key, fields, n=1)
        return (f"--{name}: the config has no field '{key}'"
                + (f" (did you mean {close[0]}?)" if close else "; check the spelling in the config file"))
      node = node[key]
  return None


if __name__ == "__main__":
  stopping.install()  # from the first moment: a stop while flags are parsed or JAX starts is clean too
  parsed = _parse_or_exit(sys.argv)
  cli.run(main, flags_parser=lambda _: parsed)
