"""tlgan's flat-drawn random numbers and initialisers equal JAX's and flax's own, bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlgan.models import initializers

SHAPES = [(5,), (3, 7), (2, 3, 5), (1, 1, 3, 2), (3, 3, 2, 4)]


def _equal(a, b):
  assert a.shape == b.shape and a.dtype == b.dtype
  np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _both(fn):
  """fn(key) -> list of (ours, theirs), all in one compiled program (eager draws would compile one by one)."""
  return jax.jit(fn)(jax.random.key(3))


def test_draws_equal_jax_random():
  def draws(key):
    out = []
    for shape in SHAPES:
      for dtype in (jnp.float32, jnp.bfloat16):
        out += [(initializers.normal(key, shape, dtype), jax.random.normal(key, shape, dtype)),
                (initializers.uniform(key, shape, dtype, -0.5, 2.0), jax.random.uniform(key, shape, dtype, -0.5, 2.0)),
                (initializers.truncated_normal(key, -2, 2, shape, dtype),
                 jax.random.truncated_normal(key, -2, 2, shape, dtype))]
    return out
  for ours, theirs in _both(draws):
    _equal(ours, theirs)


def test_initialisers_equal_flax():
  def inits(key):
    out = []
    for mode in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg"):
      for distribution in ("truncated_normal", "normal", "uniform"):
        ours, theirs = (initializers.variance_scaling(2.0, mode, distribution),
                        nn.initializers.variance_scaling(2.0, mode, distribution))
        out += [(ours(key, shape), theirs(key, shape)) for shape in SHAPES[1:]]
        out.append((ours(key, SHAPES[-1], jnp.bfloat16), theirs(key, SHAPES[-1], jnp.bfloat16)))
    out += [(initializers.normal_init(0.02)(key, shape), nn.initializers.normal(0.02)(key, shape)) for shape in SHAPES]
    out.append((initializers.lecun_normal()(key, (3, 3, 4, 8)), nn.initializers.lecun_normal()(key, (3, 3, 4, 8))))
    return out
  for ours, theirs in _both(inits):
    _equal(ours, theirs)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="invalid mode"):
    initializers.variance_scaling(1.0, "fan_sideways", "normal")
  with pytest.raises(ValueError, match="invalid distribution"):
    initializers.variance_scaling(1.0, "fan_in", "cauchy")
  with pytest.raises(ValueError, match="rank 2 or more"):
    initializers.lecun_normal()(jax.random.key(0), (5,))
