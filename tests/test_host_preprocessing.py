"""tlgan.host_preprocessing against TensorFlow's own ops: the stateless random numbers (Philox, seed scrambling,
split, fold_in), crop_and_resize, and the whole classifier preprocessing, bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

from tlgan import host_preprocessing as hp
from tlgan.errors import ConfigError
from tlgan.preprocessing import IMAGENET_MEAN, IMAGENET_STD, classifier_map_fn

SEEDS = [(0, 0), (3, 17), (123456789, -5), (2**40 + 7, 99), (-(2**63), 2**63 - 1)]


@pytest.mark.parametrize("seed", SEEDS)
def test_stateless_random_numbers_equal_tensorflows(seed):
  s64 = tf.constant(seed, tf.int64)
  np.testing.assert_array_equal(hp.uniform_float32(seed, 11), tf.random.stateless_uniform([11], s64).numpy())
  np.testing.assert_array_equal(hp.uniform_int32(seed, 13, -4, 5),
                                tf.random.stateless_uniform([13], s64, -4, 5, dtype=tf.int32).numpy())
  split = tf.random.experimental.stateless_split(s64, 2).numpy()
  np.testing.assert_array_equal(hp.split(np.array(seed, np.int64)), split)
  folded = tf.random.experimental.stateless_fold_in(s64, 3).numpy()
  np.testing.assert_array_equal(hp.fold_in(np.array(seed, np.int64), 3), folded)
  assert folded.dtype == np.int32  # then split on int32 seeds (possibly negative)
  np.testing.assert_array_equal(hp.split(folded), tf.random.experimental.stateless_split(folded, 2).numpy())
  for child in tf.random.experimental.stateless_split(folded, 2).numpy():
    np.testing.assert_array_equal(hp.uniform_float32(child, 9), tf.random.stateless_uniform([9], child).numpy())


@pytest.mark.parametrize("size", [1, 17, 32])
def test_crop_and_resize_equals_tensorflows(size):
  rng = np.random.default_rng(size)
  images = rng.random((12, 28, 23, 3), dtype=np.float32)
  boxes = rng.uniform(-0.3, 1.3, (12, 4)).astype(np.float32)  # some boxes reach outside: extrapolation
  expected = tf.image.crop_and_resize(images, boxes, tf.range(12), (size, size), extrapolation_value=0.0).numpy()
  np.testing.assert_array_equal(hp.crop_and_resize(images, boxes, size), expected)


@pytest.mark.parametrize("shape, kwargs", [
    ((28, 28, 1), dict(image_size=32, channels=3, train=True, crop_padding=2, flip=True, seed=0)),
    ((32, 32, 3), dict(image_size=32, channels=3, train=True, crop_padding=4, flip=True, seed=5)),
    ((8, 8, 1), dict(image_size=32, channels=1, train=True, crop_padding=2, flip=False, seed=1)),
    ((28, 28, 1), dict(image_size=32, channels=3, train=False)),
])
def test_classifier_preprocessing_equals_tensorflows(shape, kwargs):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  kwargs = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs)
  ours, theirs = hp.classifier_fn(**kwargs), classifier_map_fn(**kwargs)
  for step, stream in ((0, 0), (7, 0), (123457, 0), (3, 1), (3, 5)):
    expected = theirs({"image": tf.constant(images), "label": tf.constant(labels)}, tf.constant(step, tf.int64),
                      stream)
    got = ours({"image": images, "label": labels}, step, stream)
    np.testing.assert_array_equal(got["image"], expected["image"].numpy())
    np.testing.assert_array_equal(got["label"], labels)


def test_area_downsampling_is_refused_in_one_line():
  with pytest.raises(ConfigError, match="source_size.*data.pipeline=memory"):
    hp.classifier_fn(image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, source_size=8)
