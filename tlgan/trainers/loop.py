"""The training loop shared by the trainers: compile once, step, log, sample, checkpoint, stop cleanly.

Metrics stay on the device until a log step; there they are fetched in one transfer, checked for NaN/Inf
(naming the first bad step and metric) and averaged. A checkpoint is only written after the metrics of every
step up to it were checked, so a diverged state is never saved. SIGTERM, SIGHUP and Ctrl-C finish the current
step (or abandon a hook: evaluation, samples), save a checkpoint there and return with status 'preempted'
(`tlgan.stopping` holds the whole signal policy). A run resumed at its last step trains nothing: it runs that
step's hooks again (the end of a run that was stopped there) and returns 'completed'.
"""

import dataclasses
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from tlgan import data, files, parallel, reporting, stopping
from tlgan.errors import NonFiniteError, UserError, first_line


@dataclasses.dataclass
class LoopResult:
  status: str  # 'completed' or 'preempted'
  step: int
  state: Any
  history: List[Dict[str, float]]
  last_metrics: Dict[str, float]
  train_seconds: Optional[float]  # None: this session trained nothing (it redid the end of a run)
  compile_seconds: Optional[float]
  images_per_second: Optional[float]

  def timing(self) -> Dict[str, Optional[float]]:
    """This session's times and rate, for a summary (None where it trained nothing)."""
    def rounded(value, digits):
      return None if value is None else round(value, digits)
    return {"train_time_s": rounded(self.train_seconds, 2), "compile_time_s": rounded(self.compile_seconds, 2),
            "train_images_per_s": rounded(self.images_per_second, 1)}


def check_workdir(workdir: str) -> None:
  """Fails early when the workdir cannot be written or another run holds it, without creating anything. A URL
  (gs://bucket/run) is checked by writing and deleting one empty object in it."""
  if not workdir or not workdir.strip():
    raise UserError("--workdir is empty: give the folder the run writes into, e.g. --workdir=runs/gan")
  try:
    files.check_url(workdir, "workdir")
  except ValueError as e:
    raise UserError(str(e)) from None
  if files.is_remote(workdir):
    _check_remote_workdir(workdir)
    return
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


def _check_remote_workdir(workdir: str) -> None:
  if not reporting.is_writer():
    return  # only process 0 writes the run's files (Orbax checks its own writes on every process)
  try:
    files.check_remote_writable(workdir)
  except ImportError as e:
    raise UserError(f"workdir {workdir} needs a client library for its scheme ({first_line(e, 120)}): pip install "
                    "-e .[cloud] (gcsfs)") from None
  except FileNotFoundError:
    raise UserError(f"workdir {workdir} cannot be written: its bucket does not exist (create it, or check the "
                    "name)") from None
  except Exception as e:  # noqa: BLE001 - no credentials, no permission: whatever the client says
    raise UserError(f"workdir {workdir} cannot be written ({type(e).__name__}: {first_line(e, 160)}): check the "
                    "bucket's name and your credentials (gcloud auth application-default login)") from None


_CLAIMED: Dict[str, int] = {}  # workdir -> the descriptor whose flock this process holds until it exits
LOCK_INFO = ".lock"


def claim_workdir(workdir: str, create: bool = True) -> None:
  """Takes this process's exclusive lock on the workdir (the writer's only: the other processes of a
  multi-process run share it), so that a second run on the same workdir stops with one line naming the holder
  instead of both writing the same checkpoints. The lock is an flock on the folder itself, which the kernel
  releases when the process ends however it ends (kill -9 too): a lock is never stale. The holder's host and
  PID go into `.lock` for the message. A workdir in an object store is not locked (no lock there ends with
  the process that took it): start one run per gs:// workdir."""
  if not reporting.is_writer():
    return
  if files.is_remote(workdir):
    if create and workdir not in _CLAIMED:
      logging.info("workdir %s is in an object store: not locked against a second run", workdir)
      _CLAIMED[workdir] = -1
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
    files.atomic_write(os.path.join(workdir, LOCK_INFO),
                       lambda f: f.write(f"{socket.gethostname()} pid {os.getpid()}\n".encode()))


def read_summary(workdir: str) -> Dict[str, Any]:
  """summary.json, or {} when there is none or it cannot be read (a rerun then writes it again)."""
  try:
    summary = json.loads(files.read_text(files.join(workdir, "summary.json")))
  except (OSError, ValueError):
    return {}
  return summary if isinstance(summary, dict) else {}


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


class _StopVote:
  """One stop decision for all processes of a multi-process run (in a single process: its own request).

  Every step carries each device's vote (the number of the signal its process received, or 0) and returns
  their max over all devices, computed inside the step so that it adds no program and no wait of its own; the
  loop reads step k's result after dispatching step k+1 (by then step k is done or nearly), so every process
  sees the same votes at the same step and all stop after that step. JAX's preemption sync point (when
  `jax.distributed` runs its notifier) is asked at every step too; it agrees across processes by design."""

  KEY = "stop_vote"

  def __init__(self, par: parallel.Parallel):
    self.par, self.multi = par, jax.process_count() > 1
    self.previous = self.current = None  # the votes of the step before and of this one (on the device)

  def wrap(self, step_fn: Callable) -> Callable:
    if not self.multi:
      return step_fn

    def step(state, batch_and_votes, rng, **kwargs):
      batch, votes = batch_and_votes
      state, metrics = step_fn(state, batch, rng, **kwargs)
      vote = jnp.max(votes)
      if kwargs.get("axis_name"):
        vote = jax.lax.pmax(vote, kwargs["axis_name"])
      return state, {**metrics, self.KEY: vote}

    return step

  def batch(self, batch):
    """The step's batch argument, with this process's votes (one per local device) when there are others."""
    if not self.multi:
      return batch
    return batch, self.par.put_batch(np.full(self.par.local_devices, stopping.requested_number(), np.int32))

  def take(self, metrics) -> None:
    """Takes the vote out of a step's metrics (right after the step is dispatched)."""
    if self.multi:
      self.previous, self.current = self.current, metrics.pop(self.KEY)

  def decide(self, step: int) -> Optional[str]:
    """Why all processes stop after step `step` (or None): the votes of the step before it."""
    if not self.multi:
      return f"{stopping.requested()} received" if stopping.requested() else None
    number = 0 if self.previous is None else int(np.max(jax.device_get(self.previous)))
    if number:
      import signal
      mine = " (here too)" if stopping.requested_number() else ""
      return f"{signal.Signals(number).name} received by a process of this run{mine}"
    from jax.experimental import multihost_utils
    try:
      if multihost_utils.reached_preemption_sync_point(step):
        return "a preemption notice (JAX's preemption sync point)"
    except RuntimeError:  # no preemption sync manager (jax.distributed was initialised without one)
      pass
    return None


IN_FLIGHT = 2  # steps queued ahead of the device at most


def _limit_in_flight(pending) -> None:
  """After dispatching step k, waits until step k - IN_FLIGHT is done. JAX dispatches asynchronously: unbounded,
  a whole log window of steps queues up, and a stop signal or a checkpoint waits for all of it (2 min 46 s after
  SIGTERM for a private projected GAN at 3.5 s per step, log_every 50, on a 2-core CPU). Two in flight keep the
  device busy while Python prepares the next batch."""
  if len(pending) > IN_FLIGHT:
    jax.block_until_ready(pending[-IN_FLIGHT - 1][1])


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
  (evaluation results, say). A hook may raise `stopping.Stopped` (through `stopping.check`) to be abandoned.
  The returned state is in that form too. `best_metric` = (hook key, checkpoint metric name): at every step
  where a hook returns that key, a checkpoint is saved with the value (lower is better), so that the
  checkpointer can keep the best one.
  """
  num_steps = num_steps or config.num_steps
  with stopping.handlers():
    if start_step >= num_steps:
      return _finish(state=state, par=par, workdir=workdir, checkpointer=checkpointer, step=start_step,
                     hooks=hooks)
    stopping.check("reading the first batch")
    batch = next(batches)
    t0 = time.perf_counter()
    logging.info("Compiling the train step")
    vote = _StopVote(par)
    compiled = par.compile(vote.wrap(step_fn), state, vote.batch(batch), rng)
    compile_seconds = time.perf_counter() - t0
    logging.info("Compiled the train step in %.1f s", compile_seconds)
    stopping.check("compiling the train step")
    return _train(state=state, compiled=compiled, batch=batch, batches=batches, rng=rng, par=par, config=config,
                  workdir=workdir, checkpointer=checkpointer, start_step=start_step, num_steps=num_steps,
                  global_batch=global_batch, hooks=hooks, best_metric=best_metric,
                  compile_seconds=compile_seconds, vote=vote)


def _finish(*, state, par, workdir: str, checkpointer, step: int, hooks) -> LoopResult:
  """The end of a training that reached its last step in an earlier session: that step's hooks once more (a stop
  may have cut them short), their scalars replacing whatever was logged under the same names at that step."""
  claim_workdir(workdir)
  logging.info("Checkpoint %d is the last step: running its hooks (evaluation, samples) to finish the run", step)
  host = par.host_state(state)
  writer = reporting.MetricWriter(workdir)
  try:
    writer.truncate_after(step)
    scalars = {}
    for _, hook in hooks:
      scalars.update(hook(step, host) or {})
    writer.replace(step, scalars)
  except BaseException as e:
    _close_all(writer.close, checkpointer.close, during=e)
    raise
  _close_all(writer.close, checkpointer.close)
  last = {k: v for row in writer.history if row["step"] == step for k, v in row.items() if k != "step"}
  return LoopResult(status="completed", step=step, state=host, history=writer.history, last_metrics=last,
                    train_seconds=None, compile_seconds=None, images_per_second=None)


def _train(*, state, compiled, batch, batches, rng, par, config, workdir: str, checkpointer, start_step: int,
           num_steps: int, global_batch: int, hooks, best_metric, compile_seconds: float,
           vote: _StopVote) -> LoopResult:
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
    while step < num_steps:
      state, metrics = compiled(state, vote.batch(batch), rng)
      vote.take(metrics)
      step += 1
      window_steps += 1
      pending.append((step, metrics))
      _limit_in_flight(pending)
      progress.update(1)
      due = [hook for every, hook in hooks if step == num_steps or step % every == 0]
      if due:  # hooks read the state: make sure it is finite first (this syncs, as the hooks would)
        _check_finite(pending)
      hook_start = time.perf_counter()
      step_scalars, abandoned = {}, None
      try:
        for hook in due:  # evaluation, samples: also after the last step
          step_scalars.update(hook(step, par.host_state(state)) or {})
      except stopping.Stopped as e:  # the state is good (checked above): save it, skip the remaining hooks
        abandoned, step_scalars = e, {}
      hook_seconds += time.perf_counter() - hook_start  # kept out of the training rate
      hook_scalars.update(step_scalars)
      # A request that comes after the last step's hooks stops nothing here: training is complete (the work
      # after the loop checks it again).
      agreed = vote.decide(step)
      stop = abandoned is not None or (agreed is not None and step < num_steps)
      scored = best_metric is not None and np.isfinite(step_scalars.get(best_metric[0], np.nan))
      save = stop or scored or step == num_steps or step % config.checkpoint_every == 0
      if save or step % config.log_every == 0:
        checkpointer.poll()  # a background write that failed (full disk, read-only folder) stops the run now
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
      if stop:
        status, reason = "preempted", abandoned or agreed
        break
      if step < num_steps:
        batch = next(batches)
  except BaseException as e:  # the first error is the one to report: a failing close must not replace it
    _close_all(progress.close, writer.close, checkpointer.close, during=e)
    raise
  _close_all(progress.close, writer.close, checkpointer.close)
  if status == "preempted":  # after the progress bar's last line, so that it is the run's last line
    logging.warning("%s: checkpoint saved at step %d; run the same command to resume", reason, step)
  timed = windows[1:] or windows  # the first window includes warm-up: keep it out when there are others
  timed_steps, timed_seconds = sum(w[0] for w in timed), max(sum(w[1] for w in timed), 1e-9)
  return LoopResult(status=status, step=step, state=par.host_state(state), history=writer.history,
                    last_metrics={**last_metrics, **hook_scalars},
                    train_seconds=timed_seconds, compile_seconds=compile_seconds,
                    images_per_second=timed_steps * global_batch / timed_seconds)


def _close_all(*closers, during: Optional[BaseException] = None) -> None:
  """Calls every closer; the first failure is raised after all ran, or, `during` another error that ends the
  run (a full disk that also fails the metrics file's last flush), logged in one line."""
  first = None
  for close in closers:
    try:
      close()
    except Exception as e:
      if during is not None and e is not during:
        logging.warning("while closing after an error: %s: %s", type(e).__name__, first_line(e, 200))
      first = first or e
  if first is not None and during is None:
    raise first


def completed_summary(workdir: str, step: int) -> Optional[Dict[str, Any]]:
  """summary.json when it records a completed run ending at `step` (the checkpoint at hand), else None: a
  rerun of such a run has nothing to do; any other summary (stopped, stale, absent) means work is left."""
  summary = read_summary(workdir)
  if summary.get("status") == "completed" and summary.get("step") == step:
    return summary
  return None
