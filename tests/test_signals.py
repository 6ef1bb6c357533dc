"""Stop signals in every phase of a run, as real processes: SIGTERM while compiling, SIGHUP during an evaluation
in training, SIGTERM and then a double Ctrl-C during the final evaluation. Each ends with the documented status (3:
stopped, more to do; 130: a second Ctrl-C), one last line and no traceback, keeps what was saved, and a rerun
completes what is missing (a rerun of a complete run does nothing and exits 0).

The runs use the smoke-sized GAN on digits28 (offline, 539 reference images) so that evaluation is cheap
until a test makes it long on purpose (a huge sample count), which gives the signal a phase to land in.
"""

import json
import os
import signal
import time

import pytest

from tests.helpers import CACHE_DIR, checkpoint_steps, start, wait_for

pytestmark = pytest.mark.slow

BASE = ["--config=configs/gan.py:digits,smoke", "--config.log_every=10", "--config.sample_every=1000",
        "--config.checkpoint_every=1000", f"--config.eval.cache_dir={CACHE_DIR}"]
HUGE = 400000  # samples: minutes of evaluation, so that a signal surely lands in it


def log_of(workdir):
  with open(workdir + ".log") as f:
    return f.read()


def logged(workdir, text):
  return lambda: os.path.exists(workdir + ".log") and text in log_of(workdir)


def stop_and_wait(proc, sig, within=60):
  """Sends `sig`; returns (exit status, seconds until the process ended). A process that outlives `within` is
  killed (and the test fails)."""
  t = time.time()
  proc.send_signal(sig)
  try:
    status = proc.wait(timeout=within)
  except BaseException:
    proc.kill()
    raise
  return status, time.time() - t


def assert_clean_end(workdir, first_words):
  lines = log_of(workdir).strip().splitlines()
  assert "Traceback" not in log_of(workdir)
  assert lines[-1].startswith(first_words), lines[-3:]


def test_sigterm_while_compiling_is_a_clean_stop(tmp_path):
  workdir = str(tmp_path / "run")
  proc = start(workdir, BASE + ["--config.num_steps=200", "--config.eval.enabled=false"])
  wait_for(logged(workdir, "Compiling the train step"), proc)
  status, _ = stop_and_wait(proc, signal.SIGTERM)
  assert status == 3, log_of(workdir)[-3000:]
  # Compilation is not interruptible: the stop lands when it returns, before the first step (or, on a fast
  # machine, after it: then a checkpoint of that step).
  assert "Traceback" not in log_of(workdir)
  last = log_of(workdir).strip().splitlines()[-1]
  assert (last.startswith("stopped: SIGTERM received while compiling the train step")
          or "SIGTERM received: checkpoint saved at step" in last), last


def test_sighup_during_an_evaluation_saves_that_step_within_seconds(tmp_path):
  """SIGHUP (a closed terminal or SSH session) stops like SIGTERM; the evaluation is abandoned, not awaited."""
  workdir = str(tmp_path / "run")
  proc = start(workdir, BASE + ["--config.num_steps=200", "--config.eval.every=20",
                                f"--config.eval.num_samples={HUGE}"], terminal=True)
  wait_for(logged(workdir, f"Evaluating {HUGE} samples at step 20"), proc)
  status, seconds = stop_and_wait(proc, signal.SIGHUP)
  assert status == 3, log_of(workdir)[-3000:]
  assert seconds < 45, seconds  # not minutes: the evaluation is abandoned between batches
  assert_clean_end(workdir, "W")  # the loop's warning is the last line
  assert "SIGHUP received while generating samples: checkpoint saved at step 20" in log_of(workdir)
  assert checkpoint_steps(workdir) == [20]


def test_stops_during_the_final_evaluation_then_reruns_finish_and_then_do_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  args = BASE + ["--config.num_steps=20", "--config.eval.every=1000", "--config.eval.num_samples=50"]
  huge = args + [f"--config.eval.final_num_samples={HUGE}"]
  proc = start(workdir, huge)
  wait_for(logged(workdir, f"Final evaluation: {HUGE} samples"), proc)
  status, seconds = stop_and_wait(proc, signal.SIGTERM)
  assert status == 3 and seconds < 45, (status, seconds, log_of(workdir)[-3000:])
  assert_clean_end(workdir, "stopped: SIGTERM received while generating samples")
  assert checkpoint_steps(workdir) == [20]
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  # Again, and this time Ctrl-C twice: the second exits at once (while the first is still being honoured).
  proc = start(workdir, huge)
  wait_for(lambda: log_of(workdir).count(f"Final evaluation: {HUGE} samples") == 2, proc)
  proc.send_signal(signal.SIGINT)
  wait_for(lambda: "SIGINT received: stopping at the next safe point" in log_of(workdir), proc, timeout=30)
  status, _ = stop_and_wait(proc, signal.SIGINT, within=30)
  assert status == 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C
  assert_clean_end(workdir, "error: second stop signal (SIGINT after SIGINT): exiting at once")
  assert checkpoint_steps(workdir) == [20]  # what was saved stays

  # The rerun trains nothing: it redoes the last step's evaluation and the final one, and writes the summary
  # (a smaller final evaluation: evaluation settings may change on a rerun).
  assert start(workdir, args + ["--config.eval.final_num_samples=200"]).wait(timeout=300) == 0
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["status"] == "completed" and summary["step"] == 20
  assert summary["final_eval"]["num_samples"] == 200 and summary["train_time_s"] is None
  assert "d_loss" in summary["final_metrics"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  at_end = [key for row in rows if row["step"] == 20 for key in row if key != "step"]
  assert len(at_end) == len(set(at_end)) and "d_loss" in at_end  # each scalar once at the last step
  assert any(key.startswith("FD[") for key in at_end)

  # A fourth run finds everything done (it used to exit 3 on a stale summary: a requeue loop).
  before = os.path.getmtime(os.path.join(workdir, "summary.json"))
  assert start(workdir, args + ["--config.eval.final_num_samples=200"]).wait(timeout=300) == 0
  assert "its summary is complete: nothing to do" in log_of(workdir)
  assert os.path.getmtime(os.path.join(workdir, "summary.json")) == before
