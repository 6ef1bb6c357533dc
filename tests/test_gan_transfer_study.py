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
