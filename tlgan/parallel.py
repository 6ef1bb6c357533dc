"""Device mesh, batch-size bookkeeping, and compiling a pure step for all devices.

`jit` mode: the state is replicated (`NamedSharding(mesh, P())`), the batch is sharded along the mesh's
'data' axis, and each process contributes its local batch to a global array
(`jax.make_array_from_process_local_data`). XLA inserts the collectives, so BatchNorm and the loss see the
global batch exactly as on one device.
"""

import dataclasses
import logging
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tlgan.errors import ConfigError

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class BatchSizes:
  global_: int
  per_process: int
  per_device: int


def batch_sizes(global_batch: int) -> BatchSizes:
  """Splits the GLOBAL batch over processes and devices; fails with the numbers when it does not split."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch <= 0:
    raise ConfigError(f"batch_size must be positive, got {global_batch}: set --config.batch_size")
  if global_batch % devices:
    raise ConfigError(f"batch_size {global_batch} is not divisible by the {devices} devices: "
                      f"set --config.batch_size to a multiple of {devices}")
  sizes = BatchSizes(global_batch, global_batch // processes, global_batch // devices)
  logging.info("Batch: global %d, per process %d (%d processes), per device %d (%d devices)",
               sizes.global_, sizes.per_process, processes, sizes.per_device, devices)
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
  return jax.device_put(tree, replicated(mesh))


def global_batch(local_batch, mesh: Mesh):
  """This process's numpy batch -> global arrays sharded along the data axis."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def compile_step(step_fn: Callable, mesh: Mesh) -> Callable:
  """jit with donated state; the state and metrics come out replicated."""
  return jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated(mesh), replicated(mesh)))
