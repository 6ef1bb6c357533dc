"""Devices, batch-size bookkeeping, and compiling a pure step for all devices of all processes.

Two modes (`config.parallel.mode`), one training trajectory (that of one device with the same global batch,
up to float32 reduction order):

* ``'jit'`` (default): the state is replicated (`NamedSharding(mesh, P())`), the batch is sharded along the
  mesh's 'data' axis, and each process contributes its local batch to a global array
  (`jax.make_array_from_process_local_data`). XLA inserts the collectives, so BatchNorm and the loss see the
  global batch exactly as on one device.
* ``'pmap'``: per-device programs with explicit collectives. The step is called with
  `axis_name=PMAP_AXIS` (gradients and metrics `pmean`-ed over it; models built with the same `axis_name`
  synchronise BatchNorm statistics through it); the state carries a leading local-device axis and the local
  batch is reshaped to `[local_devices, per_device, ...]`.

Trainers hold a `Parallel` and never look at the mode: `put_state`/`put_batch` move host values in,
`compile` compiles the step, and `host_state` turns the training state into replicated global arrays for
checkpoints, evaluation and sampling (the identity in jit mode).
"""

import dataclasses
import functools
import logging
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tlgan.errors import ConfigError

DATA_AXIS = "data"
PMAP_AXIS = "devices"
MODES = ("jit", "pmap")


@dataclasses.dataclass(frozen=True)
class BatchSizes:
  global_: int
  per_process: int
  per_device: int


def batch_sizes(global_batch: int, accum_steps: int = 1) -> BatchSizes:
  """Splits the GLOBAL batch over processes and devices; fails with the numbers when it does not split.

  With gradient accumulation every device must also split its share into `accum_steps` equal micro-batches.
  """
  devices, processes = jax.device_count(), jax.process_count()
  local = jax.local_device_count()
  if global_batch <= 0:
    raise ConfigError(f"batch_size must be positive, got {global_batch}: set --config.batch_size")
  if accum_steps <= 0:
    raise ConfigError(f"grad_accum_steps must be positive, got {accum_steps}")
  if global_batch % devices:
    raise ConfigError(f"batch_size {global_batch} is not divisible by the {devices} devices: "
                      f"set --config.batch_size to a multiple of {devices}")
  if global_batch % processes or (global_batch // processes) % local:
    raise ConfigError(f"batch_size {global_batch} does not split into {processes} processes x {local} local "
                      f"devices: set --config.batch_size to a multiple of {processes * local}")
  per_device = global_batch // devices
  if per_device % accum_steps:
    raise ConfigError(f"the per-device batch {per_device} (batch_size {global_batch} / {devices} devices) does "
                      f"not split into grad_accum_steps={accum_steps} micro-batches: choose a batch_size that "
                      f"is a multiple of {devices * accum_steps}")
  sizes = BatchSizes(global_batch, global_batch // processes, per_device)
  logging.info("Batch: global %d, per process %d (%d processes), per device %d (%d devices)%s",
               sizes.global_, sizes.per_process, processes, sizes.per_device, devices,
               f", {accum_steps} micro-batches of {per_device // accum_steps} per device" if accum_steps > 1 else "")
  return sizes


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates the shardings (recent JAX makes `make_mesh` axes Explicit by default, which
  # would ask every contraction over the batch for an output sharding).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Host (or single-device) values, equal in every process -> replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def global_batch(local_batch, mesh: Mesh):
  """This process's numpy batch -> global arrays sharded along the data axis."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def compile_step(step_fn: Callable, mesh: Mesh) -> Callable:
  """jit with donated state; the state and metrics come out replicated."""
  return jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated(mesh), replicated(mesh)))


class Parallel:
  """The chosen mode's way of placing states and batches and of compiling a step `(state, batch, rng)`."""

  def __init__(self, mode: str = "jit"):
    if mode not in MODES:
      raise ConfigError(f"parallel.mode must be one of {MODES}, got {mode!r}")
    self.mode = mode
    self.mesh = make_mesh()
    self.local_devices = jax.local_device_count()

  @property
  def axis_name(self) -> Optional[str]:
    """What models (BatchNorm) and steps need to be told: PMAP_AXIS under pmap, else None."""
    return PMAP_AXIS if self.mode == "pmap" else None

  def put_state(self, state):
    """A host (or replicated) state -> the training placement."""
    if self.mode == "jit":
      return replicate(state, self.mesh)
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (self.local_devices, *np.shape(x))), state)
    return jax.pmap(lambda s: s, axis_name=PMAP_AXIS)(stacked)

  def put_batch(self, local_batch):
    if self.mode == "jit":
      return global_batch(local_batch, self.mesh)
    return jax.tree.map(lambda x: np.asarray(x).reshape(self.local_devices, -1, *np.shape(x)[1:]), local_batch)

  def compile(self, step_fn: Callable, state, batch, rng) -> Callable:
    """Compiles `step_fn` for these arguments (ahead of time, so the caller can time it)."""
    if self.mode == "jit":
      return compile_step(step_fn, self.mesh).lower(state, batch, rng).compile()
    pmapped = jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                       in_axes=(0, 0, None), donate_argnums=0)
    return pmapped.lower(state, batch, rng).compile()

  def host_state(self, state):
    """The training state as replicated global arrays (for checkpoints, evaluation, sampling)."""
    if self.mode == "jit":
      return state
    return replicate(jax.tree.map(lambda x: x[0], state), self.mesh)


def describe() -> str:
  return (f"{jax.process_count()} process(es), this is process {jax.process_index()}; "
          f"{jax.local_device_count()} local / {jax.device_count()} global {jax.default_backend()} devices")
