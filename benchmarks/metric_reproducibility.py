"""Same samples, same numbers? One sample file scored under several of XLA's CPU code paths.

    python -m benchmarks.metric_reproducibility --samples=samples.npz --dataset=fashion_mnist \
        [--xla_flags=--xla_cpu_max_isa=AVX2,--xla_cpu_max_isa=SSE4_2]   # (the default list)

Runs `python -m experiments.evaluate --samples=... --dataset=...` once with the default XLA flags and once per
entry of --xla_flags, each in a fresh process with its own reference-feature cache (so every process computes
the real data's features itself too), plus the features of the samples, and prints a table: each metric under
each code path, its relative difference to the default, and how far the features themselves moved (max abs
difference). The issue's bar: FD and KID equal to 0.1% relative.
"""

import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import numpy as np

flags.DEFINE_string("samples", None, "An .npz of uint8 images (experiments.sample writes one).")
flags.DEFINE_string("dataset", "fashion_mnist", "The dataset the samples imitate.")
flags.DEFINE_list("xla_flags", ["--xla_cpu_max_isa=AVX2", "--xla_cpu_max_isa=SSE4_2"],
                  "Other code paths, one XLA_FLAGS value each.")
flags.DEFINE_string("features_out", "", "(internal) write the samples' features here and exit.")
flags.mark_flags_as_required(["samples"])
FLAGS = flags.FLAGS


def _features(samples: str, dataset: str, out: str) -> None:
  from tlgan import feature_networks
  from tlgan.trainers import export
  from tlgan import data
  net = feature_networks.domain_resnet(feature_networks.shipped_weights(dataset), dataset)
  images = export.read_samples(samples, data.spec(dataset).image_shape)
  np.save(out, net(images)[0])


def _run(xla_flags: str, folder: str):
  env = {**os.environ, "XLA_FLAGS": xla_flags} if xla_flags else {k: v for k, v in os.environ.items()
                                                                    if k != "XLA_FLAGS"}
  cache = tempfile.mkdtemp(dir=folder)
  result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--samples={FLAGS.samples}",
                           f"--dataset={FLAGS.dataset}", f"--cache_dir={cache}"], env=env, capture_output=True,
                          text=True, check=False)
  if result.returncode:
    sys.exit(result.stderr.strip().splitlines()[-1])
  feats = os.path.join(cache, "features.npy")
  subprocess.run([sys.executable, "-m", "benchmarks.metric_reproducibility", f"--samples={FLAGS.samples}",
                  f"--dataset={FLAGS.dataset}", f"--features_out={feats}"], env=env, check=True)
  return json.loads(result.stdout), np.load(feats)


def main(argv):
  del argv
  if FLAGS.features_out:
    return _features(FLAGS.samples, FLAGS.dataset, FLAGS.features_out)
  from tlgan.reporting import cpu_model
  with tempfile.TemporaryDirectory() as folder:
    paths = [""] + FLAGS.xla_flags
    runs = [_run(p, folder) for p in paths]
  base, base_feats = runs[0]
  print(f"{base['num_samples']} samples of {FLAGS.samples} vs {base['reference']}; networks {base['networks']}; "
        f"CPU: {cpu_model()}")
  keys = [k for k in sorted(base["metrics"]) if not k.startswith("KID_std")]
  print("| code path | " + " | ".join(keys) + " | max rel. diff FD, KID | max abs feature diff |")
  print("|---" * (len(keys) + 3) + "|")
  for path, (result, feats) in zip(paths, runs):
    m = result["metrics"]
    rel = max(abs(m[k] / base["metrics"][k] - 1) for k in keys if k.startswith(("FD", "KID")))
    print(f"| {path or 'default'} | " + " | ".join(f"{m[k]:.6g}" for k in keys) +
          f" | {rel:.2e} | {np.max(np.abs(feats - base_feats)):.2e} |")


if __name__ == "__main__":
  app.run(main)
