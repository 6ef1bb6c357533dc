"""Classifier preprocessing: the resize equals tf.image.resize inside the image, shifts are whole output
pixels with zero fill, and augmentation is a function of (seed, step)."""

import numpy as np
import tensorflow as tf

from tlgan.preprocessing import classifier_map_fn

IDENTITY = dict(channels=1, mean=(0.0,), std=(1.0,))


def _images(n=4, size=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def test_resize_equals_tf_resize_away_from_the_border():
  x = _images()
  out = classifier_map_fn(image_size=32, **IDENTITY)({"image": tf.constant(x), "label": tf.zeros(4)}, 0)["image"]
  ref = tf.image.resize(x.astype(np.float32) / 255.0, (32, 32), method="bilinear").numpy()
  # Inside, both sample the same half-pixel centres; at the outer 2 pixels tf.image.resize clamps to the
  # edge while we fade to the zero padding (which is what a shifted crop must show).
  np.testing.assert_allclose(out.numpy()[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-5)


def test_same_size_is_the_identity():
  x = _images(size=32)
  out = classifier_map_fn(image_size=32, **IDENTITY)({"image": tf.constant(x), "label": tf.zeros(4)}, 0)["image"]
  np.testing.assert_allclose(out.numpy() * 255.0, x, atol=1e-3)


def test_shift_is_whole_output_pixels_with_zero_fill():
  x = _images(n=64, size=32, seed=1)
  fn = classifier_map_fn(image_size=32, train=True, crop_padding=3, **IDENTITY)
  out = fn({"image": tf.constant(x), "label": tf.zeros(64)}, 5)["image"].numpy() * 255.0
  seen = set()
  for img, src in zip(out, x.astype(np.float32)):
    for dy in range(-3, 4):  # find the shift that explains the output exactly
      for dx in range(-3, 4):
        padded = np.pad(src, ((3, 3), (3, 3), (0, 0)))
        cand = padded[3 + dy:3 + dy + 32, 3 + dx:3 + dx + 32]
        if np.allclose(img, cand, atol=1e-2):
          seen.add((dy, dx))
          break
      else:
        continue
      break
    else:
      raise AssertionError("output is not a whole-pixel shift of the input")
  assert len(seen) > 10  # shifts vary over the batch
  again = fn({"image": tf.constant(x), "label": tf.zeros(64)}, 5)["image"].numpy() * 255.0
  np.testing.assert_array_equal(out, again)  # a function of (seed, step)
  other = fn({"image": tf.constant(x), "label": tf.zeros(64)}, 6)["image"].numpy() * 255.0
  assert not np.array_equal(out, other)
