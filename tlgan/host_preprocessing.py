"""The classifier's preprocessing (`tlgan.preprocessing.classifier_map_fn`) in NumPy, equal to it bit for bit:
what the streaming path applies to the batches it reads, without TensorFlow.

Two pieces of TensorFlow are re-implemented, and the tests hold each to TensorFlow's own op:
  * its stateless random numbers on CPU: Philox-4x32-10 (Salmon et al. 2011) keyed by TF's scrambling of the
    seed (`StatelessRandomGetKeyCounter`: one Philox block of the seed under a fixed key gives the key and the
    counter), then `stateless_random_uniform` (float: 23 random mantissa bits; int: `lo + bits % range`; full
    64-bit ints: two words), `stateless_split` and `stateless_fold_in`;
  * `tf.image.crop_and_resize`'s CPU kernel (bilinear, the box ends on the first and last output pixels), in the
    kernel's float32 operations and order.
`source_size` (area downsampling first) has no port: `classifier_fn` refuses it.
"""

import dataclasses
from typing import Dict, Sequence, Tuple

import numpy as np

from tlgan.errors import ConfigError

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LOW = np.uint64(0xFFFFFFFF)
_SCRAMBLE_KEY = 0x02461E293EC8F720  # the key TF scrambles a seed with
_U64 = (1 << 64) - 1


def philox(counters: np.ndarray, key: Tuple[int, int]) -> np.ndarray:
  """Philox-4x32-10 of (n, 4) uint32 counter words under a key of two 32-bit words: (n, 4) uint32."""
  c = counters.astype(np.uint64)
  k0, k1 = key
  for _ in range(10):
    p0, p1 = _M0 * c[:, 0], _M1 * c[:, 2]
    c = np.stack([(p1 >> np.uint64(32)) ^ c[:, 1] ^ np.uint64(k0), p1 & _LOW,
                  (p0 >> np.uint64(32)) ^ c[:, 3] ^ np.uint64(k1), p0 & _LOW], 1)
    k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
  return c.astype(np.uint32)


def _words(key: int, counter: Tuple[int, int], n: int) -> np.ndarray:
  """The first `n` 32-bit words of Philox's stream from a 64-bit key and a 128-bit counter (low, high)."""
  blocks = -(-n // 4)
  low = np.uint64(counter[0]) + np.arange(blocks, dtype=np.uint64)  # the counter counts blocks; carries up
  high = np.uint64(counter[1]) + (low < np.uint64(counter[0])).astype(np.uint64)
  ctr = np.stack([low & _LOW, low >> np.uint64(32), high & _LOW, high >> np.uint64(32)], 1).astype(np.uint32)
  return philox(ctr, (key & 0xFFFFFFFF, key >> 32)).reshape(-1)[:n]


def _key_counter(seed) -> Tuple[int, Tuple[int, int]]:
  """TF's key and counter for a shape-[2] seed (int32 or int64 values, taken modulo 2^64 as C++ casts them)."""
  s0, s1 = (int(v) & _U64 for v in seed)
  mix = _words(_SCRAMBLE_KEY, (s0, s1), 4).astype(np.uint64)
  return int(mix[0] | (mix[1] << np.uint64(32))), (0, int(mix[2] | (mix[3] << np.uint64(32))))


def _bits(seed, n: int) -> np.ndarray:
  key, counter = _key_counter(seed)
  return _words(key, counter, n)


def uniform_float32(seed, n: int) -> np.ndarray:
  """`tf.random.stateless_uniform([n], seed)` in [0, 1)."""
  bits = (_bits(seed, n) & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)
  return bits.view(np.float32) - np.float32(1.0)


def uniform_int32(seed, n: int, low: int, high: int) -> np.ndarray:
  """`tf.random.stateless_uniform([n], seed, low, high, dtype=tf.int32)`."""
  return (low + (_bits(seed, n) % np.uint32(high - low)).astype(np.int64)).astype(np.int32)


def full_ints(seed, n: int, dtype) -> np.ndarray:
  """`stateless_random_uniform([n], seed, dtype=int32|int64)` without bounds: every bit random."""
  if np.dtype(dtype) == np.int32:
    return _bits(seed, n).view(np.int32)
  w = _bits(seed, 2 * n).astype(np.uint64)
  return (w[0::2] | (w[1::2] << np.uint64(32))).view(np.int64)


def split(seed: np.ndarray, num: int = 2) -> np.ndarray:
  """`tf.random.experimental.stateless_split(seed, num)`: (num, 2) seeds of the seed's dtype."""
  return full_ints(seed, 2 * num, seed.dtype).reshape(num, 2)


def fold_in(seed: np.ndarray, data: int) -> np.ndarray:
  """`tf.random.experimental.stateless_fold_in(seed, data)` for a Python int `data` (TF makes it int32)."""
  return np.array([full_ints(seed, 1, np.int32)[0], data], np.int32)


def crop_and_resize(images: np.ndarray, boxes: np.ndarray, size: int, extrapolation: float = 0.0) -> np.ndarray:
  """`tf.image.crop_and_resize(images, boxes, range(n), (size, size))` of float32 NHWC images, one box
  [y1, x1, y2, x2] (float32, normalised) per image."""
  f = np.float32
  n, h, w, _ = images.shape
  y1, x1, y2, x2 = (boxes[:, i].astype(f) for i in range(4))
  steps = np.arange(size, dtype=f)[None, :]
  if size > 1:
    in_y = y1[:, None] * f(h - 1) + steps * ((y2 - y1) * f(h - 1) / f(size - 1))[:, None]
    in_x = x1[:, None] * f(w - 1) + steps * ((x2 - x1) * f(w - 1) / f(size - 1))[:, None]
  else:
    in_y = (f(0.5) * (y1 + y2) * f(h - 1))[:, None]
    in_x = (f(0.5) * (x1 + x2) * f(w - 1))[:, None]
  valid = ((in_y >= 0) & (in_y <= h - 1))[:, :, None] & ((in_x >= 0) & (in_x <= w - 1))[:, None, :]
  top, left = np.floor(in_y), np.floor(in_x)
  y_lerp, x_lerp = (in_y - top)[:, :, None, None], (in_x - left)[:, None, :, None]
  top_i, bottom_i = top.clip(0, h - 1).astype(np.int64), np.ceil(in_y).clip(0, h - 1).astype(np.int64)
  left_i, right_i = left.clip(0, w - 1).astype(np.int64), np.ceil(in_x).clip(0, w - 1).astype(np.int64)
  b = np.arange(n)[:, None, None]

  def at(rows, cols):
    return images[b, rows[:, :, None], cols[:, None, :]]

  top_left, top_right = at(top_i, left_i), at(top_i, right_i)
  bottom_left, bottom_right = at(bottom_i, left_i), at(bottom_i, right_i)
  upper = top_left + (top_right - top_left) * x_lerp
  lower = bottom_left + (bottom_right - bottom_left) * x_lerp
  out = upper + (lower - upper) * y_lerp
  out[~valid] = f(extrapolation)
  return out


def classifier_fn(*, image_size: int, channels: int = 3, mean: Sequence[float], std: Sequence[float],
                  train: bool = False, crop_padding: int = 0, flip: bool = False, seed: int = 0,
                  source_size: int = 0) -> "ClassifierPreprocessing":
  """`classifier_map_fn` with the same arguments, on NumPy batches:
  fn({'image': uint8 NHWC, 'label'}, step, stream=0) -> {'image': float32 normalised, 'label'}."""
  if source_size:
    raise ConfigError("data.source_size (area downsampling) has no TensorFlow-free port: read such a dataset "
                      "from memory (data.pipeline=memory)")
  return ClassifierPreprocessing(image_size, channels, tuple(mean[:channels]), tuple(std[:channels]), train,
                                 crop_padding, flip, seed)


@dataclasses.dataclass(frozen=True)
class ClassifierPreprocessing:
  """A picklable preprocessing function (Grain sends it to its worker processes); see `classifier_fn`."""
  image_size: int
  channels: int
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  train: bool
  crop_padding: int
  flip: bool
  seed: int

  def __call__(self, batch: Dict[str, np.ndarray], step: int, stream: int = 0) -> Dict[str, np.ndarray]:
    f = np.float32
    images = batch["image"].astype(f) / f(255.0)
    if images.shape[-1] == 1 and self.channels == 3:
      images = np.repeat(images, 3, axis=-1)
    n, h, w = images.shape[:3]
    size = self.image_size
    shifts = np.zeros((n, 2), f)
    flips = None
    if self.train and (self.crop_padding > 0 or self.flip):
      seeds = np.array([self.seed, step], np.int64)
      if stream:
        seeds = fold_in(seeds, stream)
      crop_seed, flip_seed = split(seeds, 2)
      if self.crop_padding > 0:
        p = self.crop_padding
        shifts = uniform_int32(crop_seed, 2 * n, -p, p + 1).reshape(n, 2).astype(f)
      if self.flip:
        flips = uniform_float32(flip_seed, n) < f(0.5)
    sy, sx = h / size, w / size  # as classifier_map_fn: Python floats, then float32 constants
    y0 = (f(0.5 * sy - 0.5) + shifts[:, 0] * f(sy)) / f(max(h - 1, 1))
    x0 = (f(0.5 * sx - 0.5) + shifts[:, 1] * f(sx)) / f(max(w - 1, 1))
    y1 = y0 + f((size - 1) * sy / max(h - 1, 1))
    x1 = x0 + f((size - 1) * sx / max(w - 1, 1))
    images = crop_and_resize(images, np.stack([y0, x0, y1, x1], axis=1), size)
    if flips is not None:
      images = np.where(flips[:, None, None, None], images[:, :, ::-1, :], images)
    mean, std = np.asarray(self.mean, f), np.asarray(self.std, f)
    return {"image": (images - mean) / std, "label": batch["label"]}
