"""Runs that survive SIGTERM, kill -9 (also mid-checkpoint-write) and damaged checkpoints bit-exactly, stop on
NaN without saving it, end with one line on filesystem faults (a full disk, a read-only folder), refuse a second
run on their workdir, and apply the changed-config policy on resume. (Bad input: test_bad_input.py.)

They run the real CLI in subprocesses on the real (offline) Fashion-MNIST with the smoke-sized GAN.
"""

import errno
import fcntl
import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from tests.helpers import (EVERY, GAN, STEPS, checkpoint_steps, damage, kill_then_finish, reference_run, run_cli,
                           start, wait_for, with_config)

pytestmark = pytest.mark.slow  # real CLI runs in subprocesses: kills, signals, faults


def gan_config():
  from configs import gan
  config = gan.get_config("smoke")
  config.num_steps, config.checkpoint_every = STEPS, EVERY
  return config


def final_state(workdir):
  from tlgan.checkpoint import Checkpointer
  from tlgan.trainers import gan as gan_trainer
  state = gan_trainer.build_state(gan_config(), (28, 28, 1))
  return Checkpointer(os.path.join(workdir, "checkpoints"), {}).restore_latest(state)


def assert_same_state(workdir_a, workdir_b):
  (a, step_a), (b, step_b) = final_state(workdir_a), final_state(workdir_b)
  assert step_a == step_b == STEPS
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bit for bit


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run every interrupted one must end equal to."""
  return reference_run(tmp_path_factory)


@pytest.mark.slow
def test_sigterm_then_resume_is_exact(reference, tmp_path):
  workdir = str(tmp_path / "run")
  proc = start(workdir, GAN)
  wait_for(lambda: checkpoint_steps(workdir), proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 3  # preempted: saved, resumable
  log = open(workdir + ".log").read()
  assert "SIGTERM received: checkpoint saved at step" in log
  stopped_at = checkpoint_steps(workdir)[-1]
  assert 0 < stopped_at < STEPS
  assert start(workdir, GAN).wait(timeout=300) == 0
  assert_same_state(workdir, reference)


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_is_exact(reference, tmp_path):
  workdir = str(tmp_path / "run")
  kill_then_finish(workdir, GAN, STEPS)
  assert_same_state(workdir, reference)


@pytest.mark.slow
def test_kill9_while_a_checkpoint_is_written_then_resume_is_exact(reference, tmp_path):
  workdir = str(tmp_path / "run")
  folder = os.path.join(workdir, "checkpoints")
  proc = start(workdir, GAN, env={"TLGAN_TEST_CHECKPOINT_DELAY_S": "120"})  # every write stalls before its commit
  in_progress = lambda: os.path.isdir(folder) and any("tmp" in d for d in os.listdir(folder))
  wait_for(in_progress, proc)
  time.sleep(0.5)
  proc.kill()
  proc.wait()
  assert in_progress() and checkpoint_steps(workdir) == []  # half-written, never committed
  assert start(workdir, GAN).wait(timeout=300) == 0
  assert_same_state(workdir, reference)


def test_a_second_run_on_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  long_run = with_config(GAN, num_steps=100000)
  proc = start(workdir, long_run)  # still running whatever the second run's start-up costs; killed below
  wait_for(lambda: checkpoint_steps(workdir), proc)
  second = run_cli(f"--workdir={workdir}", *long_run)
  assert second.returncode == 2, second.stderr[-2000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: workdir {workdir} is in use by ") and f"pid {proc.pid}" in last, last
  assert "Traceback" not in second.stderr and proc.poll() is None  # the first run goes on
  proc.kill()  # kill -9: the kernel drops its lock, none is left stale (the lock the next run takes)
  proc.wait()
  fd = os.open(workdir, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while any process holds it
  finally:
    os.close(fd)


def _root_can(*command) -> bool:
  import subprocess
  return subprocess.run(list(command), capture_output=True).returncode == 0


def _fault_mid_run_then_resume(reference, workdir, inject, undo, log):
  """Starts the reference run in `workdir`, injects a filesystem fault once a checkpoint exists, and checks: one
  error line naming the failed checkpoint and the last complete one, exit 2 within seconds, no traceback, no
  partial write left, and the last complete checkpoint restores (resuming from one is tested above). stderr goes
  to `log`."""
  proc = start(workdir, GAN, log=log)
  wait_for(lambda: checkpoint_steps(workdir), proc)
  inject()
  try:
    t = time.time()
    status = proc.wait(timeout=120)
    seconds = time.time() - t
    kept = checkpoint_steps(workdir)
  finally:
    undo()
  with open(log) as f:
    text = f.read()
  last = text.strip().splitlines()[-1]
  assert status == 2 and seconds < 60, (status, seconds, last)
  assert "Traceback" not in text
  assert last.startswith("error: could not write checkpoint ") and (
      f"the last complete checkpoint is step {kept[-1]}, kept: free space or make the folder writable" in last), last
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]  # partial write removed
  _, step = final_state(workdir)
  assert step == kept[-1]


def test_a_checkpoint_folder_that_turns_read_only_ends_the_run_with_one_line(reference, tmp_path):
  workdir = str(tmp_path / "run")
  folder = os.path.join(workdir, "checkpoints")
  os.makedirs(folder)
  if not _root_can("chattr", "+i", folder) or not _root_can("chattr", "-i", folder):
    pytest.skip("needs chattr +i (root on a filesystem with attributes)")
  # (it used to hang until killed: Orbax's writer threads wait minutes for a folder that never appears)
  _fault_mid_run_then_resume(reference, workdir, lambda: _root_can("chattr", "+i", folder),
                             lambda: _root_can("chattr", "-i", folder), log=str(tmp_path / "run.log"))


def test_a_full_disk_while_a_checkpoint_is_written_ends_the_run_with_one_line(reference, tmp_path):
  disk = str(tmp_path / "disk")
  os.makedirs(disk)
  if not _root_can("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", disk):
    pytest.skip("needs to mount a tmpfs (root)")
  filler = os.path.join(disk, "filler")

  def fill():
    # Unbuffered writes until ENOSPC: a buffered file would keep the bytes that did not fit and raise ENOSPC
    # again when closed.
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
      while True:
        os.write(fd, b"\0" * 65536)
    except OSError as e:
      assert e.errno == errno.ENOSPC, e  # the disk is full
    finally:
      os.close(fd)

  try:
    _fault_mid_run_then_resume(reference, os.path.join(disk, "run"), fill, lambda: os.remove(filler),
                               log=str(tmp_path / "run.log"))  # (not on the full disk)
  finally:
    _root_can("umount", "-l", disk)


def test_resuming_with_a_changed_config_logs_free_and_trajectory_changes_and_the_flag_continues(reference,
                                                                                                 tmp_path):
  """One resume with a free change (num_steps) and a trajectory change (batch_size) under --allow_config_change:
  both logged, only the second flagged, and the new values become the checkpoint's config. (Without the flag:
  refused, test_bad_input.)"""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  result = run_cli(f"--workdir={workdir}", *with_config(GAN, num_steps=STEPS + 20, batch_size=16),
                   "--allow_config_change")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stderr.splitlines()
  free = [l for l in lines if f"config change on resume: num_steps = {STEPS + 20} (was {STEPS})" in l]
  bound = [l for l in lines if "config change on resume: batch_size = 16 (was 8)" in l]
  assert len(free) == 1 and "[changes the trajectory]" not in free[0]
  assert len(bound) == 1 and bound[0].endswith("[changes the trajectory]")
  assert "with 1 changed field(s) that alter the trajectory (--allow_config_change): batch_size" in result.stderr
  with open(os.path.join(workdir, "checkpoints", str(STEPS + 20), "meta", "metadata")) as f:
    assert json.load(f)["config"]["batch_size"] == 16  # the same command now resumes without the flag


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_latest_checkpoint_is_reported_and_skipped(reference, tmp_path, how):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  damage(workdir, STEPS, how)
  result = run_cli(f"--workdir={workdir}", *GAN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint {STEPS} in" in result.stderr and "trying the one before it" in result.stderr
  assert f"Restored checkpoint {STEPS - EVERY}" in result.stderr
  assert_same_state(workdir, reference)  # retrained from the predecessor to the same parameters


@pytest.mark.slow
def test_nan_injection_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  result = run_cli(f"--workdir={workdir}", *GAN, "--config.inject_nan_at_step=1200")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: training diverged: d_loss = nan at step 1200; no checkpoint of it was written"), last
  assert "Traceback" not in result.stderr
  assert checkpoint_steps(workdir) == [875, 1000, 1125]  # the last 3 before step 1200 (EVERY = 125)


# ------------------------------------------------------------------------------------------ bad input table
