"""One trajectory on one device, many devices (jit or pmap) and many processes; data shards; failure modes.

Fake CPU devices (`--xla_force_host_platform_device_count`) and processes on 127.0.0.1 talking through gloo
stand in for GPUs, TPU pods and their interconnects.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, compile_fast_env

pytestmark = pytest.mark.slow  # 8 fake devices and 2 processes: minutes

# Parameters of different device layouts differ only by float32 reduction order (sums split over devices and
# combined by all-reduce): ~1e-7 relative per operation. After a few Adam/SGD steps that stays far below the
# parameters' own movement; we require less than 0.1% of it.
REL_TOL = 1e-3


def fake_devices_env(n: int, compile_fast: bool = False):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
  return compile_fast_env(env) if compile_fast else env


@pytest.fixture(scope="module")
def eight_devices():
  proc = subprocess.run([sys.executable, "-m", "tests.parallel_worker", "gan", "classifier", "eval"], cwd=REPO,
                        env=fake_devices_env(8, compile_fast=True), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS "))
  results = json.loads(line[len("RESULTS "):])
  assert results["devices"] == 8
  return results


@pytest.mark.parametrize("name", ["gan_jit", "gan_pmap", "classifier_full_jit", "classifier_full_pmap"])
def test_eight_devices_follow_one_device(eight_devices, name):
  r = eight_devices[name]
  assert r["max_change"] > 1e-4  # the steps did move the parameters
  assert r["max_diff"] <= REL_TOL * r["max_change"], r


def test_gradient_accumulation_equals_the_whole_batch(eight_devices):
  # pmap over 8 devices, each splitting its rows into 2 micro-batches, vs one device with the whole batch.
  r = eight_devices["classifier_linear_probe_pmap_accum2"]
  assert r["max_change"] > 1e-4 and r["max_diff"] <= REL_TOL * r["max_change"], r


def test_masked_eval_counts_every_example_once(eight_devices):
  r = eight_devices["eval"]
  assert r["count"] == 37 and r["confusion_total"] == 37
  assert r["accuracy"] == pytest.approx(r["expected_accuracy"], abs=1e-9)


def test_indivisible_batches_fail_before_compiling():
  code = ("from tlgan import parallel\n"
          "for b in (12, 8):\n"
          "  try:\n"
          "    parallel.batch_sizes(b, accum_steps=2 if b == 8 else 1)\n"
          "  except Exception as e:\n"
          "    print(type(e).__name__, e)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=fake_devices_env(8), capture_output=True,
                        text=True, timeout=120)
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith("ConfigError batch_size 12 is not divisible by the 8 devices"), proc.stdout
  assert lines[1].startswith("ConfigError the per-device batch 1"), proc.stdout
  assert "grad_accum_steps=2" in lines[1]


# ------------------------------------------------------------------------------------------ many processes


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


CLASSIFIER = ["--config=configs/transfer.py:smoke", "--config.data.name=digits", "--config.num_steps=4",
              "--config.batch_size=8", "--config.data.num_shards=2", "--config.checkpoint_every=2"]
# Tramer & Boneh's small tanh CNN: these tests are about processes (sharding, masked evaluation, DP over processes,
# stopping, a dead peer), and it compiles in ~2 s where the smoke ResNet18 takes ~30 s per process, 3 processes
# at once on 2 cores. (BatchNorm over devices: the eight-devices tests above.)
SMALL = ["--config.model.arch=tanh_cnn", "--config.model.image_size=16"]


def launch(workdir, args, devices, process_id=None, num_processes=None, port=None, log=None):
  cmd = [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *args]
  if process_id is not None:
    cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]
  return subprocess.Popen(cmd, cwd=REPO, env=fake_devices_env(devices), stdout=subprocess.DEVNULL,
                          stderr=open(log, "w") if log else subprocess.PIPE, text=True)


def shard_lines(log_text):
  return [l.split("] ", 1)[-1] for l in log_text.splitlines() if "(data shard" in l]


def two_processes_and_one(tmp_path, args, devices_each):
  """Runs `args` as two processes of `devices_each` devices (workdir two/) and as one process with all of
  them (one/); asserts the same final parameters and statistics (saved by process 0); the two logs."""
  from tlgan import pretrained
  import jax
  port = free_port()
  logs = [tmp_path / f"p{i}.log" for i in range(2)]
  procs = [launch(tmp_path / "two", args, devices_each, i, 2, port, logs[i]) for i in range(2)]
  one = launch(tmp_path / "one", args, 2 * devices_each, log=tmp_path / "one.log")
  for p in procs + [one]:
    assert p.wait(timeout=600) == 0, [open(l).read()[-3000:] for l in logs + [tmp_path / "one.log"]]
  two, _ = pretrained.load(str(tmp_path / "two" / "model.msgpack"))
  ref, _ = pretrained.load(str(tmp_path / "one" / "model.msgpack"))
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  return logs


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  from tlgan import data
  logs = two_processes_and_one(tmp_path, CLASSIFIER + SMALL, 2)
  # Each process read its own half of the training split: the shards' own fingerprints, disjoint halves.
  halves = [data.load_split("digits", "train", process_index=j, process_count=2)[0] for j in range(2)]
  for j in range(2):
    (line,) = shard_lines(open(logs[j]).read())
    assert f"process {j} reads" in line and f"(data shard {j})" in line
    assert f"{len(halves[j])} examples, fingerprint {data.fingerprint(halves[j])}" in line
  keys = [{x.tobytes() for x in h} for h in halves]
  full = data.load_split("digits", "train")[0]
  assert not keys[0] & keys[1] and len(halves[0]) + len(halves[1]) == len(full)
  # Masked evaluation over unequal test shards (270 + 269) counts each of the 539 test images once.
  for run in ("two", "one"):
    summary = json.load(open(tmp_path / run / "summary.json"))
    assert summary["test_examples"] == len(data.load_split("digits", "test")[0])
  assert json.load(open(tmp_path / "two" / "summary.json"))["processes"] == 2


PRIVATE = ["--config=configs/private.py:digits,smoke", "--config.num_steps=4", "--config.checkpoint_every=2",
           "--config.augment.crop_padding=2", "--config.augment.flip=True", *SMALL]  # per-row draws of the batch


@pytest.mark.slow
def test_a_dp_run_in_two_processes_equals_one_process_with_two_devices(tmp_path):
  """DP-SGD over processes: each holds the whole training set, draws the same Poisson batch and keeps its half
  of the rows; the clipped sums, the noise (a function of (seed, step)) and the accountant are global. Two
  processes of one device each end where one process with both devices does."""
  logs = two_processes_and_one(tmp_path, PRIVATE, 1)
  summaries = [json.load(open(tmp_path / run / "summary.json")) for run in ("two", "one")]
  assert summaries[0]["processes"] == 2 and summaries[1]["processes"] == 1
  assert summaries[0]["privacy"] == summaries[1]["privacy"] and summaries[0]["privacy"]["epsilon"] > 0
  for log in logs:  # every process read the whole training set
    (line,) = shard_lines(open(log).read())
    assert "digits[train] (data shard 0): 1258 examples" in line


@pytest.mark.slow
def test_a_dead_process_stops_the_other(tmp_path):
  port = free_port()
  args = CLASSIFIER[:2] + SMALL + ["--config.num_steps=100000", "--config.batch_size=8", "--heartbeat_timeout=5"]
  logs = [tmp_path / f"p{i}.log" for i in range(2)]
  procs = [launch(tmp_path / "run", args, 1, i, 2, port, logs[i]) for i in range(2)]
  try:
    deadline = time.time() + 300
    while "Compiled the train step" not in open(logs[1]).read():
      assert time.time() < deadline and procs[1].poll() is None, open(logs[1]).read()[-2000:]
      time.sleep(0.5)
    time.sleep(2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    code = procs[0].wait(timeout=120)
    assert code != 0
    assert time.time() - killed < 60
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step_and_resume_is_exact(tmp_path):
  """A preemption notice that reaches one host only: every process saves the same step and exits 3 (a lone
  process stopping would leave the other waiting in a collective), and the resumed run ends with parameters
  bit-identical to an uninterrupted one (on one process with the same two devices)."""
  from tlgan import pretrained
  # 150 steps (an epoch is 158): two processes talking through gloo make ~20 steps/s on 2 cores, and the signal is
  # sent once both have compiled, so it lands within the first seconds.
  steps = 150
  args = CLASSIFIER[:2] + SMALL + [f"--config.num_steps={steps}", "--config.batch_size=8",
                                   "--config.data.num_shards=2", "--config.checkpoint_every=1000",
                                   "--config.log_every=50"]

  def both(workdir, tag, signal_at_start=None):
    port = free_port()
    logs = [tmp_path / f"{tag}{i}.log" for i in range(2)]
    procs = [launch(workdir, args, 1, i, 2, port, logs[i]) for i in range(2)]
    try:
      if signal_at_start is not None:
        deadline = time.time() + 300
        while not all("Compiled the train step" in open(l).read() for l in logs):
          assert time.time() < deadline and all(p.poll() is None for p in procs), [open(l).read()[-2000:] for l in logs]
          time.sleep(0.2)
        procs[1].send_signal(signal_at_start)
        sent = time.time()
      codes = [p.wait(timeout=300) for p in procs]
      return codes, [open(l).read() for l in logs], (time.time() - sent if signal_at_start else None)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()

  codes, logs, seconds = both(tmp_path / "stopped", "s", signal.SIGTERM)
  assert codes == [3, 3], [l[-2000:] for l in logs]
  assert seconds < 90, seconds
  saved = [re.search(r"checkpoint saved at step (\d+)", l) for l in logs]
  assert all(saved), [l[-1000:] for l in logs]
  step = int(saved[0].group(1))
  assert int(saved[1].group(1)) == step and 0 < step < steps
  assert "SIGTERM received by a process of this run (here too)" in logs[1]
  ckpts = tmp_path / "stopped" / "checkpoints"
  assert sorted(os.listdir(ckpts)) == [str(step)], os.listdir(ckpts)  # complete: no temporary folder left
  assert "Traceback" not in logs[0] + logs[1]

  codes, logs, _ = both(tmp_path / "stopped", "r")
  assert codes == [0, 0], [l[-2000:] for l in logs]
  assert f"Restored checkpoint {step}" in logs[0]
  # The uninterrupted run: one process with 2 devices, the same global mesh. It gives the two processes' bits:
  # every cross-device sum has two terms, and a + b == b + a whichever transport (gloo or in-process) adds them.
  straight = launch(tmp_path / "straight", args, 2, log=tmp_path / "u.log")
  assert straight.wait(timeout=300) == 0, open(tmp_path / "u.log").read()[-2000:]
  resumed, _ = pretrained.load(str(tmp_path / "stopped" / "model.msgpack"))
  straight, _ = pretrained.load(str(tmp_path / "straight" / "model.msgpack"))
  import jax
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)

