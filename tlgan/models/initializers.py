"""Random draws and parameter initialisers equal to JAX's and flax's, bit for bit, that compile several times faster.

JAX draws an array of shape S from counters that are the elements' flat indices (both threefry modes), so a draw
of shape (prod(S),) reshaped to S is the same array. XLA does not compile the two alike: with the partitionable
threefry (JAX's default) a rank-4 draw builds its counters from a rank-4 iota, and on a 2-core CPU
`jax.random.normal(key, (4, 4, 8, 16))` compiles in ~2.3 s against ~0.3 s for the flat draw. Every conv kernel
is such a draw, and so is DP-SGD's noise on each kernel's gradient: a width-8 ResNet18's `init` compiled in 12 s
with flax's initialisers (`benchmarks`-free check: `python -m tlgan.models.initializers`).

    kernel_init = variance_scaling(2.0, "fan_out", "normal")   # == nn.initializers.variance_scaling(...)
    noise = normal(key, grad.shape)                             # == jax.random.normal(key, grad.shape)
"""

import math

import jax
import jax.numpy as jnp


def _flat(shape) -> tuple:
  return (math.prod(shape),)


def normal(key, shape, dtype=jnp.float32):
  """`jax.random.normal(key, shape, dtype)`, drawn flat."""
  return jax.random.normal(key, _flat(shape), dtype).reshape(shape)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
  """`jax.random.uniform(key, shape, dtype, minval, maxval)`, drawn flat."""
  return jax.random.uniform(key, _flat(shape), dtype, minval, maxval).reshape(shape)


def truncated_normal(key, lower, upper, shape, dtype=jnp.float32):
  """`jax.random.truncated_normal(key, lower, upper, shape, dtype)`, drawn flat."""
  return jax.random.truncated_normal(key, lower, upper, _flat(shape), dtype).reshape(shape)


def normal_init(stddev: float):
  """`nn.initializers.normal(stddev)`."""
  def init(key, shape, dtype=jnp.float32):
    return normal(key, shape, dtype) * jnp.array(stddev, dtype)
  return init


def variance_scaling(scale: float, mode: str, distribution: str):
  """`nn.initializers.variance_scaling(scale, mode, distribution)` for real dtypes, with its default axes
  (inputs -2, outputs -1, the rest the receptive field)."""
  if mode not in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg"):
    raise ValueError(f"invalid mode for variance scaling initializer: {mode}")
  if distribution not in ("truncated_normal", "normal", "uniform"):
    raise ValueError(f"invalid distribution for variance scaling initializer: {distribution}")

  def init(key, shape, dtype=jnp.float32):
    shape = tuple(shape)
    if len(shape) < 2:
      raise ValueError(f"variance_scaling needs a kernel of rank 2 or more, not shape {shape}")
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    denominator = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
                   "fan_geo_avg": (fan_in * fan_out) ** 0.5}[mode]
    variance = jnp.array(scale / denominator, dtype=dtype)
    if distribution == "truncated_normal":
      stddev = jnp.sqrt(variance) / jnp.array(.87962566103423978, dtype)  # std of N(0, 1) truncated to (-2, 2)
      return truncated_normal(key, -2, 2, shape, dtype) * stddev
    if distribution == "normal":
      return normal(key, shape, dtype) * jnp.sqrt(variance)
    return uniform(key, shape, dtype, -1) * jnp.sqrt(3 * variance)
  return init


def lecun_normal():
  """`nn.initializers.lecun_normal()`."""
  return variance_scaling(1.0, "fan_in", "truncated_normal")


if __name__ == "__main__":  # the compile times behind this module, on this machine
  import time
  import flax.linen as nn
  from tlgan import reporting
  print(reporting.machine().get("cpu", ""))
  key, shape = jax.random.key(0), (3, 3, 64, 128)
  for name, fn in (("flax lecun_normal", nn.initializers.lecun_normal()), ("tlgan lecun_normal", lecun_normal())):
    start = time.perf_counter()
    jax.jit(lambda k: fn(k, shape)).lower(key).compile()
    print(f"{name} {shape}: compiled in {time.perf_counter() - start:.2f} s")
