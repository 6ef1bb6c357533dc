"""The training data order without TensorFlow: TF's `RandomIndexShuffle` re-implemented in NumPy.

tlgan's batch `s` of shard `j` holds the examples at positions `s * B ... s * B + B - 1` of an endless stream of
per-epoch permutations, each the stateless `tf.raw_ops.RandomIndexShuffle` of (seed, epoch, shard)
(`tlgan.data.stream_indices`). A reader that imports no TensorFlow (the streaming path, accelerator images)
must produce the same indices, bit for bit; the tests hold this module to TF's op.

The permutation (TF's `tensorflow/core/kernels/random_index_shuffle.cc`, described in its header): a Simon
block cipher (Beaulieu et al. 2013) on a block of B bits, B the even number of bits that holds the largest
index (at least 16), with `rounds` Feistel rounds and a key of three 32-bit words; an index whose ciphertext
falls outside [0, max_index] is encrypted again until it falls inside (cycle walking, Black & Rogaway 2002),
which makes a bijection of [0, max_index].
"""

import math

import numpy as np

from tlgan.errors import ConfigError

_Z = 0x7369F885192C0EF5  # Simon's constant sequence z (one bit per round)
_C = 0xFFFFFFFC


def _mask(bits: int) -> int:
  return (1 << bits) - 1


def _rotl(x, r: int, w: int, mask):
  return ((x << np.uint64(r)) | (x >> np.uint64(w - r))) & mask


def _rotr(x, r: int, w: int, mask):
  return ((x >> np.uint64(r)) | (x << np.uint64(w - r))) & mask


def _block_bits(max_index: int) -> int:
  bits = math.ceil(math.log2(max_index))
  return max(bits + bits % 2, 16)


def _round_keys(key, rounds: int, w: int) -> list:
  """Simon's key schedule on words of `w` bits, started from the three key words."""
  m = np.uint64(_mask(w))
  keys = [np.uint64(k) & m for k in key]
  c, z = np.uint64(_C) & m, _Z & _mask(w)
  for i in range(3, rounds):
    keys.append(c ^ np.uint64(z & 1) ^ keys[i - 3] ^ _rotr(keys[i - 1], 3, w, m) ^ _rotr(keys[i - 1], 4, w, m))
    z >>= 1
  return keys


def _encrypt(values: np.ndarray, keys: list, w: int) -> np.ndarray:
  m = np.uint64(_mask(w))
  left, right = (values >> np.uint64(w)) & m, values & m
  f = lambda x: (_rotl(x, 1, w, m) & _rotl(x, 8, w, m)) ^ _rotl(x, 2, w, m)
  for k1, k2 in zip(keys[0::2], keys[1::2]):
    left = left ^ f(right) ^ k1
    right = right ^ f(left) ^ k2
  return (left << np.uint64(w)) | right


def index_shuffle(index, key, max_index: int, rounds: int = 4) -> np.ndarray:
  """The position of each `index` (array, in [0, max_index]) in the permutation of [0, max_index] that `key`
  (three integers; each is taken modulo 2**32, as TF takes int64 seeds) chooses. Equals
  `tf.raw_ops.RandomIndexShuffle(index, seed=key, max_index=max_index, rounds=rounds)`."""
  if rounds < 4 or rounds % 2:
    raise ValueError(f"rounds must be an even number >= 4, got {rounds}")
  index = np.asarray(index, np.int64)
  if np.any(index < 0) or np.any(index > max_index):
    raise ValueError(f"indices must lie in [0, {max_index}]")
  if max_index == 0:
    return np.zeros_like(index)
  w = _block_bits(max_index) // 2
  keys = _round_keys([int(k) % 2**32 for k in key], rounds, w)
  encrypt = lambda x: _encrypt(x, keys, w)
  if (1 << 2 * w) > 16 * (max_index + 1):
    # A range much smaller than the 16-bit minimum block (max_index 1 walks ~32,768 times on average): encrypt
    # the whole block once, and walk by table look-ups.
    table = _encrypt(np.arange(1 << 2 * w, dtype=np.uint64), keys, w)
    encrypt = lambda x: table[x]
  out = encrypt(index.astype(np.uint64))
  outside = out > np.uint64(max_index)
  while outside.any():  # cycle walking: a few times per index when the block is < 4x the range
    out[outside] = encrypt(out[outside])
    outside = out > np.uint64(max_index)
  return out.astype(np.int64)


def stream_indices(step: int, batch_size: int, num_examples: int, seed: int, stream: int = 0) -> np.ndarray:
  """`tlgan.data.stream_indices` without TensorFlow: the example indices of batch `step` of shard `stream`."""
  positions = np.arange(batch_size, dtype=np.int64) + np.int64(step) * batch_size
  epochs = positions // num_examples
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):  # a batch spans at most two epochs (one permutation each)
    rows = epochs == epoch
    out[rows] = index_shuffle(positions[rows] % num_examples, (seed, int(epoch), stream), num_examples - 1)
  return out


def process_shards(num_shards: int, process_index: int, process_count: int) -> range:
  """The shards process `process_index` owns: a contiguous, equal share."""
  num_shards = num_shards or process_count
  if num_shards % process_count:
    raise ConfigError(f"data.num_shards={num_shards} does not split over {process_count} processes: set it to "
                      f"a multiple of {process_count} (or 0: one shard per process)")
  k = num_shards // process_count
  return range(process_index * k, (process_index + 1) * k)
