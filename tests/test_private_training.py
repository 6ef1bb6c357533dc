"""DP-SGD runs end to end (configs/private.py on scikit-learn's real digits, offline): epsilon as it trains,
resume after kill -9 bit-exact with epsilon continuing, linear probes of pretrained weights."""

import json
import os

import jax
import numpy as np
import pytest

from tests.helpers import checkpoint_steps, compile_fast_env, start, wait_for
from tlgan import pretrained, privacy

# The small tanh CNN (the smoke ResNet18's per-example DP step compiles for ~40 s per process; the private study's
# end-to-end test trains that one): these runs are about the accountant, kills and resuming.
DP = ["--config=configs/private.py:digits,smoke", "--config.num_steps=40", "--config.checkpoint_every=5",
      "--config.log_every=5", "--config.eval_every_epochs=1000", "--config.model.arch=tanh_cnn",
      "--config.model.image_size=16"]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dp") / "reference")
  assert start(workdir, DP).wait(timeout=600) == 0, open(workdir + ".log").read()[-3000:]
  return workdir


def test_a_dp_run_logs_epsilon_as_it_trains_and_ends_at_its_target(reference):
  with open(os.path.join(reference, "summary.json")) as f:
    summary = json.load(f)
  p = summary["privacy"]
  assert summary["status"] == "completed" and p["private"] and p["noise_calibrated_to_target"]
  assert p["dataset_size"] == 1258 and p["delta"] == 1e-4 and p["steps"] == 40
  assert 2.95 < p["epsilon"] <= 3.0  # calibrated to the target, never above it
  dp = privacy.DpSgd(dataset_size=1258, expected_batch=16.0, max_batch=p["max_batch"],
                     noise_multiplier=p["noise_multiplier"], delta=1e-4)
  logged = {m["step"]: m["epsilon"] for m in _metrics(reference) if "epsilon" in m}
  assert sorted(logged) == list(range(5, 41, 5))
  for step, eps in logged.items():
    assert eps == pytest.approx(dp.epsilon(step), rel=1e-9)
  assert all(a < b for a, b in zip(list(logged.values()), list(logged.values())[1:]))  # grows with the steps
  assert np.isfinite(summary["test_accuracy"])


@pytest.mark.slow
def test_kill9_then_resume_is_bit_exact_and_epsilon_continues(reference, tmp_path):
  workdir = str(tmp_path / "run")
  proc = start(workdir, DP)
  wait_for(lambda: len(checkpoint_steps(workdir)) >= 2, proc)  # mid-run, past a checkpoint
  proc.kill()
  proc.wait()
  assert checkpoint_steps(workdir)[-1] < 40
  assert start(workdir, DP).wait(timeout=600) == 0
  a, _ = pretrained.load(os.path.join(workdir, "model.msgpack"))
  b, _ = pretrained.load(os.path.join(reference, "model.msgpack"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # the same batches and the same noise at every step
  ours = {m["step"]: m["epsilon"] for m in _metrics(workdir) if "epsilon" in m}
  theirs = {m["step"]: m["epsilon"] for m in _metrics(reference) if "epsilon" in m}
  assert ours == theirs  # continued, not restarted at the resumed step
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["privacy"]["epsilon"] == theirs[40]


def test_a_private_gan_run_accounts_for_its_discriminator_and_writes_samples(tmp_path):
  workdir = str(tmp_path / "gan")
  args = ["--config=configs/gan.py:private,smoke", "--config.data.name=digits", "--config.num_steps=6",
          "--config.eval.enabled=false"]
  assert start(workdir, args, env=compile_fast_env()).wait(timeout=600) == 0, open(workdir + ".log").read()[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  p = summary["privacy"]
  assert p["private"] and p["dataset_size"] == 1258 and p["steps"] == 6 and 9.9 < p["epsilon"] <= 10.0
  assert os.path.getsize(os.path.join(workdir, "samples.png")) > 0
  logged = [m["epsilon"] for m in _metrics(workdir) if "epsilon" in m]
  assert len(logged) == 3 and logged[-1] == p["epsilon"]
