"""Metrics that reproduce: the shipped metric networks (pinned, never trained behind the user's back), the same
numbers under another CPU code path, uint8 scoring of any sample file, precision/recall/density/coverage against
the `prdc` package, and the best checkpoint by FD."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import REPO, override, run_cli
from tlgan import data, evaluation, feature_networks, pretrained
from tlgan.errors import UserError

CACHE_DIR = os.path.join(tempfile.gettempdir(), f"tlgan-test-metrics-{os.getpid()}")


@pytest.mark.parametrize("dataset", sorted(feature_networks.SHIPPED))
def test_shipped_networks_match_their_pins(dataset):
  path = feature_networks.shipped_weights(dataset)  # checks the sha256
  _, meta = pretrained.load(path)
  net = feature_networks.domain_resnet(path, dataset)
  assert net.name == feature_networks.SHIPPED[dataset][0] == meta.name and "@" not in net.name
  assert os.path.getsize(path) < 5 * 2**20  # small enough to version


def test_missing_or_altered_shipped_network_is_an_error(tmp_path, monkeypatch):
  dataset = "fashion_mnist"
  net = feature_networks.domain_resnet(feature_networks.shipped_weights(dataset), dataset)
  with pytest.raises(TypeError, match="uint8"):  # the protocol: samples are quantised before scoring
    net(np.zeros((2, 28, 28, 1), np.float32))
  monkeypatch.setattr(feature_networks, "SHIPPED_DIR", str(tmp_path))
  with pytest.raises(UserError, match="is missing: restore it"):
    feature_networks.shipped_weights(dataset)
  name, _ = feature_networks.SHIPPED[dataset]
  with open(os.path.join(tmp_path, f"{name}.msgpack"), "wb") as f:
    f.write(b"not the network")
  with pytest.raises(UserError, match="was altered"):
    feature_networks.shipped_weights(dataset)
  with pytest.raises(UserError, match="ships no metric network for cifar10"):
    feature_networks.shipped_weights("cifar10")


@pytest.mark.slow
def test_a_mistyped_feature_weights_path_fails_instead_of_training(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/gan.py:smoke", f"--workdir={workdir}",
                   f"--config.eval.feature_weights={tmp_path}/typo.msgpack")
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: eval.feature_weights=") and "does not exist" in last, last
  assert "Traceback" not in result.stderr and not workdir.exists() and not (tmp_path / "typo.msgpack").exists()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_density_coverage_equal_the_prdc_package(k):
  prdc = pytest.importorskip("prdc")
  rng = np.random.default_rng(k)
  real = rng.normal(size=(700, 16))
  fake = rng.normal(0.3, 1.2, size=(500, 16))  # shifted and wider: none of the four is 0 or 1
  ours = evaluation.precision_recall_density_coverage(real, fake, k=k, block=128)  # several blocks
  theirs = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
  for name in ("precision", "recall", "density", "coverage"):
    assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-12), name
    assert 0.0 < ours[name] < 1.5
  radii = evaluation.nearest_neighbour_radii(real, k)
  assert evaluation.precision_recall_density_coverage(real, fake, k=k, real_radii=radii) == ours


def _digits_npz(path, images):
  np.savez(path, images=images)
  return str(path)


def _evaluate_cli(npz, dataset, cache_dir, env=None):
  result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--samples={npz}", f"--dataset={dataset}",
                           f"--cache_dir={cache_dir}"],
                          cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout  # one JSON line, as pytorch-fid prints one number
  return json.loads(lines[0])


@pytest.mark.slow
def test_same_samples_same_numbers_under_another_cpu_code_path(tmp_path):
  """Real digits (blurred, so that every metric is away from its floor) scored by the CLI under XLA's default
  CPU code and under XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 (an old CPU's instructions: on an AVX-512 machine the
  features then differ by ~1e-6; AVX2 gave identical bits there): FD and KID agree to 0.1%."""
  from scipy import ndimage
  images, _ = data.load_split("digits28", "train")
  blurred = np.clip(np.rint(ndimage.gaussian_filter(images[:600].astype(np.float32), (0, 1, 1, 0))), 0, 255)
  npz = _digits_npz(tmp_path / "samples.npz", blurred.astype(np.uint8))
  # separate caches: each process computes the reference features itself
  default = _evaluate_cli(npz, "digits28", tmp_path / "cache_default")
  other = _evaluate_cli(npz, "digits28", tmp_path / "cache_sse", {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"})
  name = feature_networks.SHIPPED["digits28"][0]
  assert default["num_samples"] == 600 and default["networks"] == {name: feature_networks.SHIPPED["digits28"][1]}
  assert default["reference"] == "digits28[test] (539 images)"
  metrics = default["metrics"]
  assert set(metrics) >= {f"{m}[{name}]" for m in ("FD", "KID", "IS", "precision", "recall", "density", "coverage")}
  assert metrics[f"FD[{name}]"] > 1.0 and metrics[f"KID[{name}]"] > 0.0
  for key in (f"FD[{name}]", f"KID[{name}]"):
    assert other["metrics"][key] == pytest.approx(metrics[key], rel=1e-3), key


@pytest.mark.slow
def test_bad_sample_files_are_one_line_errors(tmp_path):
  from configs import gan
  from tlgan.trainers import export
  config = gan.get_config("digits")
  cases = {
      "missing.npz": (None, "does not exist"),
      "garbage.npz": (b"garbage", "is not a readable .npz"),
      "floats.npz": (dict(images=np.zeros((4, 28, 28, 1), np.float32)), "not uint8"),
      "shape.npz": (dict(images=np.zeros((4, 32, 32, 3), np.uint8)), "expected (N >= 2, 28, 28, 1)"),
      "nokey.npz": (dict(x=np.zeros((4, 28, 28, 1), np.uint8)), "has no 'images' array"),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / name
    if isinstance(content, bytes):
      path.write_bytes(content)
    elif content is not None:
      np.savez(path, **content)
    with pytest.raises(UserError, match=re.escape(message)):
      export.score_samples(str(path), config)


def _smoke(**overrides):
  from configs import gan
  config = gan.get_config("smoke")
  config.data.manual_dir = "/nonexistent"  # mock data only
  config.eval.cache_dir = CACHE_DIR
  return override(config, **overrides)


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
  """8 steps, evaluated every 2, checkpoints every 100 and only the last one kept: the best by FD is kept too."""
  from tlgan.trainers import gan as gan_trainer
  workdir = str(tmp_path_factory.mktemp("best"))
  config = _smoke(**{"num_steps": 8, "eval.every": 2, "checkpoint_every": 100, "keep_checkpoints": 1,
                     "sample_every": 100, "log_every": 2})
  with tfds.testing.mock_data(num_examples=64):
    summary = gan_trainer.train_and_evaluate(config, workdir)
  return config, workdir, summary


@pytest.mark.slow
def test_best_checkpoint_is_kept_and_sampled(best_run, tmp_path):
  from tlgan.trainers import export
  config, workdir, summary = best_run
  name = feature_networks.SHIPPED["fashion_mnist"][0]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  fds = {r["step"]: r[f"FD[{name}]"] for r in rows if f"FD[{name}]" in r}
  assert sorted(fds) == [2, 4, 6, 8]
  best = min(fds, key=lambda s: (fds[s], s))
  kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert kept == sorted({best, 8})  # the last one, and the best
  assert summary["best_checkpoint"] == {"step": best, f"FD[{name}]": pytest.approx(fds[best])}
  for which, step in (("best", best), ("latest", 8)):
    out = str(tmp_path / f"{which}.npz")
    export.export_samples(workdir, 6, out, which=which)
    with np.load(out) as f:
      assert int(f["step"]) == step


@pytest.mark.slow
def test_summary_numbers_equal_scoring_the_exported_samples(best_run, tmp_path):
  """The final evaluation in memory == experiments.sample's export of the same samples scored from the file."""
  from tlgan.trainers import export
  config, workdir, summary = best_run
  final = summary["final_eval"]
  out = str(tmp_path / "samples.npz")
  export.export_samples(workdir, final["num_samples"], out)
  run_config = export.load_run_config(workdir)
  with tfds.testing.mock_data(num_examples=64):
    scored = export.score_samples(out, run_config)
  assert scored["num_samples"] == final["num_samples"] and scored["reference"] == final["reference"]
  assert scored["networks"] == final["networks"]
  assert scored["metrics"] == pytest.approx(final["generated"], rel=1e-9)
  assert {k.split("[")[0] for k in scored["metrics"]} >= {"FD", "KID", "precision", "recall", "density", "coverage"}


def teardown_module():
  shutil.rmtree(CACHE_DIR, ignore_errors=True)
