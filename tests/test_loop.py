"""The training loop's queue: JAX dispatches steps asynchronously, and the loop keeps at most `IN_FLIGHT` of them
queued ahead of the device, so that a stop signal or a checkpoint waits for two steps, not a log window."""

import jax
import jax.numpy as jnp
import ml_collections

from tlgan import parallel
from tlgan.trainers import loop


class _NoCheckpoints:
  def save(self, step, state, metrics=None):
    self.saved = step

  def poll(self):
    pass

  def close(self):
    pass


def queued_at_each_dispatch(tmp_path, monkeypatch, steps=12):
  """Runs the loop over a step of ~tens of ms and returns, for each dispatch, how many earlier steps' outputs
  were not ready yet (steps still queued or running on the device)."""
  def step_fn(state, batch, rng):
    del rng
    for _ in range(6):
      state = jnp.tanh(state @ state + batch["x"])
    return state, {"loss": jnp.mean(state)}

  par = parallel.Parallel("jit")
  outputs, queued = [], []
  real_compile = par.compile

  def compile_and_watch(fn, state, batch, rng):
    compiled = real_compile(fn, state, batch, rng)

    def call(state, batch, rng):
      queued.append(sum(not m["loss"].is_ready() for m in outputs))
      state, metrics = compiled(state, batch, rng)
      outputs.append(metrics)
      return state, metrics
    return call
  monkeypatch.setattr(par, "compile", compile_and_watch)
  config = ml_collections.ConfigDict({"experiment": "queue", "num_steps": steps, "log_every": 1000,
                                      "checkpoint_every": 1000})
  batches = iter([{"x": jnp.full((384, 384), 0.01)}] * (steps + 1))
  result = loop.run(state=jnp.eye(384) * 0.5, step_fn=step_fn, batches=batches, rng=jax.random.key(0), par=par,
                    config=config, workdir=str(tmp_path), checkpointer=_NoCheckpoints(), start_step=0,
                    global_batch=1)
  assert result.status == "completed" and result.step == steps
  return queued


def test_at_most_two_steps_are_queued_ahead_of_the_device(tmp_path, monkeypatch):
  assert max(queued_at_each_dispatch(tmp_path / "bounded", monkeypatch)) <= loop.IN_FLIGHT == 2
  # the control: without the bound, asynchronous dispatch runs far ahead (so the check above can fail)
  monkeypatch.setattr(loop, "IN_FLIGHT", 10**6)
  assert max(queued_at_each_dispatch(tmp_path / "unbounded", monkeypatch)) > 4
