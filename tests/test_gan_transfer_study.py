"""experiments.gan_transfer: finished runs are reused, and the table's means and spreads are those of the runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # GAN transfer studies end to end, in subprocesses


def fake_run(folder, fd, kid, rate, wall, steps, fd_curve):
  os.makedirs(folder)
  key = "resnet18-fashion_mnist"
  summary = {"status": "completed", "step": steps, "dataset": "fashion_mnist", "train_images_per_s": rate,
             "wall_time_s": wall, "batch_size": {"global": 64},
             "final_eval": {"num_samples": 10000, "reference": "fashion_mnist[test] (10000 images)",
                            "generated": {f"FD[{key}]": fd, f"KID[{key}]": kid},
                            "floor_train_vs_reference": {f"FD[{key}]": 0.26}}}
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump(summary, f)
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    for step, value in fd_curve:
      f.write(json.dumps({"step": step, f"FD[{key}]": value}) + "\n")
  Image.fromarray(np.full((30, 30), 128, np.uint8)).save(os.path.join(folder, "samples.png"))


def test_projected_study_table_from_finished_runs(tmp_path):
  fds = {"dcgan": [17.0, 19.0], "projected": [11.0, 12.0]}
  for variant, values in fds.items():
    for seed, fd in enumerate(values):
      fake_run(tmp_path / f"{variant}_s{seed}", fd, fd / 300, 360.0 + seed, 600.0, 3000,
               [(500, 3 * fd), (3000, fd)])
  result = subprocess.run([sys.executable, "-m", "experiments.gan_transfer", "projected", f"--root={tmp_path}",
                           "--seeds=0,1"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "done already" in result.stdout and "experiments.main" not in result.stdout  # nothing was rerun
  table = (tmp_path / "results.md").read_text()
  rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
  assert f"{np.mean(fds['dcgan']):.1f} ± {np.std(fds['dcgan'], ddof=1):.1f}" in rows["dcgan"]
  assert f"{np.mean(fds['projected']):.1f} ± {np.std(fds['projected'], ddof=1):.1f}" in rows["projected"]
  assert "10.0 ± 0.0 min" in rows["dcgan"] and "| 0.26 |" in table
  assert Image.open(tmp_path / "samples.png").size[0] == 2 * 30 + 8
  assert os.path.getsize(tmp_path / "fd_vs_time.png") > 0


def _add_privacy(folder, epsilon, sigma, precision, recall):
  path = os.path.join(folder, "summary.json")
  with open(path) as f:
    summary = json.load(f)
  key = "resnet18-fashion_mnist"
  summary["final_eval"]["generated"].update({f"precision[{key}]": precision, f"recall[{key}]": recall})
  summary["privacy"] = {"epsilon": epsilon, "noise_multiplier": sigma, "delta": 1e-5}
  summary["final_eval"]["floor_train_vs_reference"] = None  # a private run releases no training-set statistics
  with open(path, "w") as f:
    json.dump(summary, f)


def test_private_study_table_from_finished_runs(tmp_path):
  """One row per epsilon and D (the projected rows only with a public trunk), with epsilon reached and sigma,
  FD, KID, precision and recall of the runs, and the literature's anchors."""
  runs = {"dcgan_eps1": (0.99, 2.1, 60.0), "dcgan_eps10": (9.98, 0.6, 30.0), "dcgan_nonprivate": (None, 0.0, 20.0),
          "projected_eps1": (0.99, 2.1, 50.0), "projected_eps10": (9.97, 0.6, 25.0),
          "projected_nonprivate": (None, 0.0, 15.0)}
  for variant, (eps, sigma, fd) in runs.items():
    for seed in (0, 1):
      folder = tmp_path / f"{variant}_s{seed}"
      fake_run(folder, fd + seed, fd / 300, 500.0, 780.0, 1200, [(400, 2 * fd), (1200, fd)])
      _add_privacy(folder, eps, sigma, 0.5 + seed / 10, 0.3)
  result = subprocess.run([sys.executable, "-m", "experiments.gan_transfer", "private", f"--root={tmp_path}",
                           "--seeds=0,1", "--private_trunk=some/public_trunk.msgpack"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "experiments.main" not in result.stdout  # every run reused
  table = (tmp_path / "results.md").read_text()
  rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
  assert set(runs) < set(rows)
  assert "| ε (noise σ) | FD[resnet18-fashion_mnist] | KID[resnet18-fashion_mnist] | " \
         "precision[resnet18-fashion_mnist] | recall[resnet18-fashion_mnist] |" in table
  assert "| 9.98 ± 0.00 (σ 0.600 ± 0.000) | 30.5 ± 0.7 |" in rows["dcgan_eps10"]
  assert "| ∞ (no noise) | 15.5 ± 0.7 |" in rows["projected_nonprivate"]
  assert f"| {np.mean([0.5, 0.6]):.3f} ± {np.std([0.5, 0.6], ddof=1):.3f} | 0.300 ± 0.000 |" in rows["dcgan_eps1"]
  assert "floor" not in table
  assert "Bie et al." in table and "DP-Sinkhorn" in table and "DPDM" in table and "GS-WGAN" in table
  assert json.loads((tmp_path / "results.json").read_text())["dcgan_eps1"]["0"]["privacy"]["epsilon"] == 0.99


@pytest.mark.parametrize("flag, message", [
    ("--epsilons=1,ten", "--epsilons=1,ten must be numbers"), ("--epsilons=10,10", "each given once"),
    ("--epsilons=-1", "must be finite numbers >= 0"), ("--seeds=0,x", "--seeds=0,x must be integers >= 0")])
def test_private_study_bad_flags_are_refused_before_any_run(tmp_path, flag, message):
  root = tmp_path / "study"
  result = subprocess.run([sys.executable, "-m", "experiments.gan_transfer", "private", f"--root={root}", flag],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1 and not root.exists()
