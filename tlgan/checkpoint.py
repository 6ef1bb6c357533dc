"""Orbax checkpoints of a training state: save every N steps, keep the last K, resume from the latest good one.

A checkpoint holds two items: `state` (the state's arrays, `ocp.args.StandardSave`) and `meta` (JSON: the
experiment, dataset and image shape). Before anything is restored, both are compared with the current run;
a checkpoint of another experiment or with other shapes raises `CheckpointMismatchError` naming the
difference, and nothing in the workdir is changed. A checkpoint that fails to load (truncated or missing
files) is reported with its step and skipped in favour of the one before it; when training reaches that step
again, the damaged folder is moved to `<directory>_damaged/` first. Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a write killed halfway never looks finished (and the
leftover folder is removed by the next save of that step); in an object store (gs://), which cannot rename,
it writes `commit_success.txt` last and ignores a step folder without it. The directory may be a local path or
a URL (`tlgan.files`).

With `best_metric` (e.g. 'fd', lower is better), checkpoints saved with that metric compete: besides the
last `max_to_keep`, the best one is kept (Orbax's preservation policies: LatestN or BestN), and
`restore(state, which='best')` reads it. The metric is stored by Orbax with the checkpoint, so a resumed run
keeps comparing against the best of the runs before it.
"""

import contextlib
import gc
import logging
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from flax import serialization

from tlgan import files, run_config
from tlgan.errors import CheckpointMismatchError, CheckpointWriteError, UserError, first_line


def _shapes(tree) -> Dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


class _NoMetricsNoise(logging.Filter):
  """Orbax warns at every save without metrics when a best metric is tracked; most saves have none."""

  def filter(self, record):
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsNoise())


def _chain(error: Optional[BaseException]):
  """`error` and the errors it was raised from (its cause, else its context), each once."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _from_orbax(error: Optional[BaseException]) -> bool:
  """Whether `error` (or an error it was raised from) passed through Orbax or TensorStore code."""
  for e in _chain(error):
    tb = e.__traceback__
    while tb is not None:
      filename = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
      if "/orbax/" in filename or "/tensorstore/" in filename:
        return True
      tb = tb.tb_next
  return False


class _OrbaxTaskNoise(logging.Filter):
  """A restore of a damaged checkpoint fails on its first unreadable array; Orbax leaves the reads of the other
  arrays running, and when they fail too asyncio logs each ('Task/_GatheringFuture exception was never
  retrieved') whenever it collects them, possibly after the run's closing error line. We have already reported
  that checkpoint."""

  def filter(self, record):
    if "exception was never retrieved" not in record.getMessage().split("\n", 1)[0]:  # a Task or a gather
      return True
    return not (record.exc_info and _from_orbax(record.exc_info[1]))


logging.getLogger("asyncio").addFilter(_OrbaxTaskNoise())


class _OrbaxTracebacks(logging.Filter):
  """A failed background write (a full disk, a read-only folder) makes Orbax log the same traceback from each
  of its threads; `Checkpointer` reports the failure as one error naming the step. Orbax's records keep their
  first line."""

  def filter(self, record):
    if record.exc_info and "/orbax/" in record.pathname.replace(os.sep, "/"):
      record.msg, record.args = first_line(record.getMessage()), None
      record.exc_info, record.exc_text = None, None
    return True


logging.getLogger("absl").addFilter(_OrbaxTracebacks())


def _os_reason(error: BaseException) -> str:
  """The operating system's words for a failed write ('No space left on device'), else the error's first line."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
  text = str(error)
  for words in ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
                "Operation not permitted", "Input/output error"):
    if words in text:
      return words
  return first_line(error, 200)


def _meta_handler() -> ocp.JsonCheckpointHandler:
  """The handler of the `meta` item. Test hook: with $TLGAN_TEST_CHECKPOINT_DELAY_S set, it holds a finished
  write in its temporary folder for that many seconds before Orbax commits it, so that tests can kill the
  process in the middle of a checkpoint write. (The instance's `finalize` is wrapped rather than the class
  subclassed: Orbax >= 0.12.8 pairs save arguments with handler classes exactly and refuses a subclass.)"""
  handler = ocp.JsonCheckpointHandler()
  delay = os.environ.get("TLGAN_TEST_CHECKPOINT_DELAY_S")
  if delay:
    finalize = handler.finalize

    def slow_finalize(directory):
      time.sleep(float(delay))
      finalize(directory)
    handler.finalize = slow_finalize
  return handler


class Checkpointer:
  """Saves and restores `state` (any flax struct / pytree) under `directory`."""

  def __init__(self, directory: str, meta: Dict[str, Any], *, max_to_keep: int = 3,
               best_metric: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
               free_fields: Tuple[str, ...] = (), allow_config_change: bool = False):
    self.directory = files.absolute(directory)  # a local folder or a URL (gs://bucket/run/checkpoints)
    self.meta = meta
    # The run's config (flattened), saved with every checkpoint and compared on resume (`tlgan.run_config`).
    self.config = run_config.flatten(config) if config is not None else None
    self._free_fields, self._allow_config_change = free_fields, allow_config_change
    self._max_to_keep = max_to_keep
    self.best_metric = best_metric
    self._manager: Optional[ocp.CheckpointManager] = None
    self._damaged = set()  # steps skipped by restore_latest; moved aside before that step is saved again
    self._writing: Optional[int] = None  # the step whose background write may still be running
    self._failed: Optional[CheckpointWriteError] = None  # a write failed: nothing more is written

  @property
  def manager(self) -> ocp.CheckpointManager:
    # Created on first use: a workdir whose checkpoints are refused is never written to.
    if self._manager is None:
      if self.best_metric is None:
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
      else:
        policies = ocp.checkpoint_managers
        metric = self.best_metric
        options = ocp.CheckpointManagerOptions(
            create=True, best_fn=lambda m: m[metric], best_mode="min",
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=self._max_to_keep),
                # sorted by the metric, largest first; BestN keeps the last n: the lowest
                policies.BestN(get_metric_fn=lambda m: m[metric], reverse=True, n=1,
                               keep_checkpoints_without_metrics=False)]))
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": _meta_handler()})
    return self._manager

  def steps(self):
    if not files.isdir(self.directory):
      return []
    return sorted(self.manager.all_steps())

  def _check_compatible(self, step: int, target_dict) -> None:
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    for key, value in self.meta.items():
      if key in meta and meta[key] != value:
        raise CheckpointMismatchError(
            f"workdir checkpoint {step} in {self.directory} has {key}={meta[key]!r}, this run has {value!r}: "
            "use another --workdir (or delete that one)")
    saved = _shapes(self.manager.item_metadata(step)["state"])
    wanted = _shapes(target_dict)
    for key in sorted(set(saved) | set(wanted)):
      if saved.get(key) != wanted.get(key):
        raise CheckpointMismatchError(
            f"workdir checkpoint {step} in {self.directory} does not fit this config: {key} is "
            f"{saved.get(key, 'absent')} there and {wanted.get(key, 'absent')} here; use another --workdir")
    if self.config is not None and isinstance(meta.get("config"), dict):  # (checkpoints of older tlgan: none)
      run_config.check_resume(meta["config"], self.config, self._free_fields, allow=self._allow_config_change,
                              where=f"workdir checkpoint {step} in {self.directory}")

  def best_step(self) -> Optional[int]:
    """The step of the kept checkpoint with the lowest `best_metric` (None: none was saved with it)."""
    if self.best_metric is None or not self.steps():
      return None
    return self.manager.best_step()

  def restore(self, state, which: str = "latest"):
    """`restore_latest`, or with which='best' the best checkpoint (an error when there is none)."""
    if which == "latest":
      return self.restore_latest(state)
    if which != "best":
      raise UserError(f"which must be 'best' or 'latest', got {which!r}")
    step = self.best_step()
    if step is None:
      raise UserError(f"{self.directory} has no checkpoint saved with an evaluation ({self.best_metric}): use "
                      "--which=latest, or train with evaluation on")
    return self.restore_latest(state, steps=[step])

  def restore_latest(self, state, steps=None):
    """Returns (restored state, step), or (state, None) when there is no checkpoint. `steps`: only those."""
    steps = self.steps() if steps is None else steps
    if not steps:
      return state, None
    target = serialization.to_state_dict(state)
    for step in reversed(steps):
      try:
        self._check_compatible(step, target)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # unreadable metadata: a damaged checkpoint
        logging.warning("checkpoint %d in %s is damaged (%s: %s); trying the one before it",
                        step, self.directory, type(e).__name__, first_line(e))
        self._damaged.add(step)
        continue
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
      except Exception as e:
        logging.warning("checkpoint %d in %s failed to load (%s: %s); trying the one before it",
                        step, self.directory, type(e).__name__, first_line(e))
        self._damaged.add(step)
        gc.collect()  # the failed restore's abandoned reads: collected (and filtered) now, not at exit
        continue
      logging.info("Restored checkpoint %d from %s", step, self.directory)
      return serialization.from_state_dict(state, restored["state"]), step
    raise UserError(f"no loadable checkpoint in {self.directory} (steps {steps} are all damaged): "
                    "move that folder away to start over")

  def _move_aside(self, step: int) -> None:
    """A damaged checkpoint is kept for inspection in <directory>_damaged/, out of the way of a new save."""
    if jax.process_index() == 0:
      target = files.join(self.directory + "_damaged", str(step))
      while files.exists(target):
        target += "+"
      files.makedirs(self.directory + "_damaged")
      files.move(files.join(self.directory, str(step)), target)
      logging.warning("moved the damaged checkpoint %d to %s", step, target)
    multihost_utils.sync_global_devices(f"tlgan_move_aside_{step}")
    self._damaged.discard(step)
    self.manager.reload()

  def save(self, step: int, state, metrics: Optional[Dict[str, float]] = None) -> None:
    """Starts saving `state` at `step` in the background; `metrics` (with `best_metric`) make it a candidate
    for the best checkpoint. A failed write (this one's start, or the previous one's background part) raises
    `CheckpointWriteError`, and no later save is started: the checkpoints already complete stay as they are."""
    self.wait()  # the previous write must have succeeded before another starts
    if step in self._damaged:
      self._move_aside(step)
    self._writing = step
    with self._reporting_failures():
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(serialization.to_state_dict(state)),
          meta=ocp.args.JsonSave({**self.meta, **({"config": self.config} if self.config is not None else {})})),
          metrics=metrics, force=True)

  def poll(self) -> None:
    """Raises `CheckpointWriteError` when a background write has failed (cheap: it does not wait)."""
    self._check(wait=False)

  def wait(self) -> None:
    """Waits for the background write; raises `CheckpointWriteError` when it failed."""
    self._check(wait=True)

  def _check(self, wait: bool) -> None:
    if self._failed is not None:
      raise self._failed
    if self._manager is not None and self._writing is not None:
      with self._reporting_failures():
        if wait:
          self._manager.wait_until_finished()
          self._writing = None
        else:
          self._manager.check_for_errors()

  def close(self) -> None:
    """Waits for the last write (raising `CheckpointWriteError` when it failed) and releases Orbax's threads."""
    if self._manager is None:
      return
    try:
      self.wait()
    finally:
      if self._failed is None:
        self._manager.close()

  @contextlib.contextmanager
  def _reporting_failures(self):
    try:
      yield
    except Exception as e:
      step, self._writing = self._writing, None
      good = [s for s in self.steps() if s != step]
      for leftover in files.glob(self.directory, f"{step}.orbax-checkpoint-tmp*"):
        files.rmtree(leftover)  # a partial write: give its space back
      self._failed = CheckpointWriteError(
          f"could not write checkpoint {step} to {self.directory} ({_os_reason(e)}); "
          + (f"the last complete checkpoint is step {good[-1]}, kept" if good else "no checkpoint is complete yet")
          + ": free space or make the folder writable, then run the same command to resume")
      raise self._failed from e
