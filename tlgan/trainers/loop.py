"""The training loop shared by the trainers: compile once, step, log, sample, checkpoint, stop cleanly.

Metrics stay on the device until a log step; there they are fetched in one transfer, checked for NaN/Inf
(naming the first bad step and metric) and averaged. A checkpoint is only written after the metrics of every
step up to it were checked, so a diverged state is never saved. SIGTERM and Ctrl-C finish the current step,
save a checkpoint there and return with status 'preempted'; a second Ctrl-C kills at once.
"""

import dataclasses
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
from tqdm import tqdm

from tlgan import data, parallel, reporting
from tlgan.errors import NonFiniteError, UserError


@dataclasses.dataclass
class LoopResult:
  status: str  # 'completed' or 'preempted'
  step: int
  state: Any
  history: List[Dict[str, float]]
  last_metrics: Dict[str, float]
  train_seconds: float
  compile_seconds: float
  images_per_second: float


def check_workdir(workdir: str) -> None:
  """Fails early when the workdir cannot be written or another run holds it, without creating anything."""
  if not workdir or not workdir.strip():
    raise UserError("--workdir is empty: give the folder the run writes into, e.g. --workdir=runs/gan")
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  problem = None if os.path.isdir(path) else "is not a folder"
  if problem is None:
    try:  # try it for real: access() says yes to root everywhere, even on read-only mounts and /proc
      os.rmdir(tempfile.mkdtemp(prefix=".tlgan-write-test-", dir=path))
    except OSError as e:
      problem = f"cannot be written: {e.strerror}"
  if problem:
    raise UserError(f"workdir {workdir} is not writable ({path} {problem}): choose another --workdir")
  if os.path.isdir(workdir):
    claim_workdir(workdir, create=False)


_CLAIMED: Dict[str, int] = {}  # workdir -> the descriptor whose flock this process holds until it exits
LOCK_INFO = ".lock"


def claim_workdir(workdir: str, create: bool = True) -> None:
  """Takes this process's exclusive lock on the workdir (the writer's only: the other processes of a
  multi-process run share it), so that a second run on the same workdir stops with one line naming the holder
  instead of both writing the same checkpoints. The lock is an flock on the folder itself, which the kernel
  releases when the process ends however it ends (kill -9 too): a lock is never stale. The holder's host and
  PID go into `.lock` for the message."""
  if not reporting.is_writer():
    return
  key = os.path.realpath(workdir)
  if key not in _CLAIMED:
    if create:
      os.makedirs(workdir, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      holder = "another run"
      try:
        with open(os.path.join(workdir, LOCK_INFO)) as f:
          holder = f.read().strip() or holder
      except OSError:
        pass
      raise UserError(f"workdir {workdir} is in use by {holder}: wait for it to finish or stop it, or choose "
                      "another --workdir") from None
    _CLAIMED[key] = fd
  if create:  # the run writes from now on: say who holds the workdir (checks alone never write)
    reporting.atomic_write(os.path.join(workdir, LOCK_INFO),
                           lambda f: f.write(f"{socket.gethostname()} pid {os.getpid()}\n".encode()))


def read_summary(workdir: str) -> Dict[str, Any]:
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def log_shards(dataset: str, shards) -> None:
  """Which examples this process reads (every process logs its own line)."""
  for shard in shards:
    logging.info("process %d reads %s[%s] (data shard %d): %d examples, fingerprint %s", jax.process_index(),
                 dataset, shard.split, shard.index, len(shard.images), data.fingerprint(shard.images))


def poison_batches(batches: Iterator, at_step: int, start_step: int) -> Iterator:
  """Test hook (`config.inject_nan_at_step`): the host batch that feeds step `at_step` gets NaN images."""
  for step, batch in enumerate(batches, start=start_step + 1):
    if step == at_step:
      batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
    yield batch


class StopRequest:
  """Turns SIGTERM / the first SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
        pass
    return self

  def _handle(self, signum, frame):
    self.signal_name = signal.Signals(signum).name
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _check_finite(pending) -> None:
  """Raises NonFiniteError naming the first step and metric of [(step, metrics)] that is NaN or Inf."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    for key in sorted(metrics, key=lambda k: ("loss" not in k, k)):  # name a loss first when several are bad
      value = metrics[key]
      if not np.all(np.isfinite(value)):  # (under pmap, one equal value per device)
        raise NonFiniteError(f"training diverged: {key} = {float(np.ravel(value)[0])} at step {step}; no checkpoint of it "
                             "was written (the latest checkpoint is the last good one): lower the learning "
                             "rate or change the loss, then rerun")


def _average(pending) -> Dict[str, float]:
  fetched = jax.device_get([m for _, m in pending])
  return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


def run(*, state, step_fn: Callable, batches: Iterator, rng, par: parallel.Parallel, config, workdir: str,
        checkpointer,
        start_step: int, global_batch: int, num_steps: Optional[int] = None,
        hooks: Sequence[Tuple[int, Callable]] = (),
        best_metric: Optional[Tuple[str, str]] = None) -> LoopResult:
  """Runs `step_fn` from `start_step` to `num_steps` (default `config.num_steps`).

  `state` and `batches` are placed by `par` (`par.put_state`, `par.put_batch`). `hooks` are `(every, fn)`
  pairs: `fn(step, state)` runs after every `every`-th step and after the last one, with the state as
  replicated global arrays (`par.host_state`); a dict it returns is logged as scalars at that step
  (evaluation results, say). The returned state is in that form too. `best_metric` = (hook key, checkpoint
  metric name): at every step where a hook returns that key, a checkpoint is saved with the value (lower is
  better), so that the checkpointer can keep the best one.
  """
  num_steps = num_steps or config.num_steps
  batch = next(batches)
  t0 = time.perf_counter()
  compiled = par.compile(step_fn, state, batch, rng)
  compile_seconds = time.perf_counter() - t0
  logging.info("Compiled the train step in %.1f s", compile_seconds)

  claim_workdir(workdir)
  writer = reporting.MetricWriter(workdir)
  writer.truncate_after(start_step)
  pending: list = []
  last_metrics: Dict[str, float] = {}
  hook_scalars: Dict[str, float] = {}
  step, status = start_step, "completed"
  windows: List[tuple] = []  # (steps, seconds) between log points
  window_start, window_steps, hook_seconds = time.perf_counter(), 0, 0.0
  progress = tqdm(total=num_steps, initial=start_step, unit="step", disable=not reporting.is_writer(),
                  dynamic_ncols=True, mininterval=2.0, file=sys.stderr, desc=config.experiment)
  try:
    with StopRequest() as stop:
      while step < num_steps:
        state, metrics = compiled(state, batch, rng)
        step += 1
        window_steps += 1
        pending.append((step, metrics))
        progress.update(1)
        due = [hook for every, hook in hooks if step == num_steps or step % every == 0]
        if due:  # hooks read the state: make sure it is finite first (this syncs, as the hooks would)
          _check_finite(pending)
        hook_start = time.perf_counter()
        step_scalars = {}
        for hook in due:  # evaluation, samples: also after the last step
          step_scalars.update(hook(step, par.host_state(state)) or {})
        hook_seconds += time.perf_counter() - hook_start  # kept out of the training rate
        hook_scalars.update(step_scalars)
        stopping = stop.signal_name is not None and step < num_steps
        scored = best_metric is not None and np.isfinite(step_scalars.get(best_metric[0], np.nan))
        save = stopping or scored or step == num_steps or step % config.checkpoint_every == 0
        if save or step % config.log_every == 0:
          _check_finite(pending)  # blocks on the device: the window's time is real
          last_metrics = _average(pending)
          pending.clear()
          elapsed = time.perf_counter() - window_start - hook_seconds
          windows.append((window_steps, elapsed))
          rate = window_steps * global_batch / elapsed
          writer.write(step, {**last_metrics, "images_per_s": rate, **step_scalars})
          progress.set_postfix({"img/s": f"{rate:.0f}", **{k: f"{last_metrics[k]:.3f}" for k in
                                                        ("d_loss", "g_loss", "loss") if k in last_metrics}})
          window_start, window_steps, hook_seconds = time.perf_counter(), 0, 0.0
        elif step_scalars:
          writer.write(step, step_scalars)
        if save:
          checkpointer.save(step, par.host_state(state),
                            metrics={best_metric[1]: float(step_scalars[best_metric[0]])} if scored else None)
        if stopping:
          status = "preempted"
          logging.warning("%s received: checkpoint saved at step %d; run the same command to resume",
                          stop.signal_name, step)
          break
        if step < num_steps:
          batch = next(batches)
  finally:
    progress.close()
    writer.close()
    checkpointer.close()
  timed = windows[1:] or windows  # the first window includes warm-up: keep it out when there are others
  timed_steps, timed_seconds = sum(w[0] for w in timed), max(sum(w[1] for w in timed), 1e-9)
  return LoopResult(status=status, step=step, state=par.host_state(state), history=writer.history,
                    last_metrics={**last_metrics, **hook_scalars},
                    train_seconds=timed_seconds, compile_seconds=compile_seconds,
                    images_per_second=timed_steps * global_batch / timed_seconds)
