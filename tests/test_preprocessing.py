"""Classifier preprocessing: the resize equals tf.image.resize inside the image, shifts are whole output
pixels with zero fill, and augmentation is a function of (seed, step); and the JAX side that feeds trained
classifiers (`pretrained.classifier_input`) equals it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from tlgan import pretrained
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


# ---------------------------------------------------------------------------------------------------------
# `pretrained.classifier_input`: the JAX side (FD networks, the projected discriminator's trunk) feeds a
# classifier exactly what `classifier_map_fn` fed it in training; the oracle is that tf.data function.


@pytest.mark.parametrize("size,channels_in,image_size,channels,source_size", [
    (28, 1, 32, 3, 0),   # Fashion-MNIST -> the metric networks and the projected trunk
    (28, 1, 28, 3, 0),   # no resize
    (8, 1, 32, 3, 0),    # scikit-learn digits, upsampled 4x
    (28, 1, 32, 3, 8),   # the look of 8x8 digits: area reduction first (28 -> 8 is 3.5 pixels per pixel)
    (32, 3, 64, 3, 0),   # CIFAR-10 at 64
    (28, 1, 32, 1, 0),   # a one-channel classifier
    (40, 3, 32, 3, 0),   # downsampling
])
def test_classifier_input_equals_the_training_preprocessing(size, channels_in, image_size, channels, source_size):
  x = np.random.default_rng(size + image_size).integers(0, 256, (3, size, size, channels_in), dtype=np.uint8)
  trained = classifier_map_fn(image_size=image_size, channels=channels, source_size=source_size)(
      {"image": tf.constant(x), "label": tf.zeros(3)}, 0)["image"].numpy()
  meta = pretrained.WeightsMeta("resnet18", image_size=image_size, channels=channels, source_size=source_size)
  ours = np.asarray(pretrained.classifier_input(jnp.asarray(x, jnp.float32) / 255.0, meta))
  assert ours.shape == trained.shape
  np.testing.assert_allclose(ours, trained, atol=2e-5)  # borders included: zeros beyond the image, as trained


def test_metric_network_sees_what_its_classifier_saw(tmp_path):
  """The FD network's logits on uint8 images equal its model applied to the training pipeline's tensors."""
  from tlgan import feature_networks
  path = feature_networks.shipped_weights("fashion_mnist")
  model, variables, meta = pretrained.open_network(path)
  x = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  x[:, :, :3] = 255  # bright pixels at the border, where resizes disagree most
  trained = classifier_map_fn(image_size=meta.image_size, channels=meta.channels)(
      {"image": tf.constant(x), "label": tf.zeros(4)}, 0)["image"].numpy()
  expected = np.asarray(model.apply(variables, trained, train=False))
  _, logits = feature_networks.domain_resnet(path, "fashion_mnist")(x)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_weights_meta_round_trips_and_derives_the_shape(tmp_path):
  model = pretrained.model_for("resnet18", 7, stem="cifar", width=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)  # (only shapes matter here: no init run)
  meta = pretrained.WeightsMeta("resnet18", stem="cifar", image_size=32, channels=3, source_size=8, dataset="digits")
  pretrained.save(str(tmp_path / "w.msgpack"), variables, meta)
  _, loaded, back = pretrained.open_network(str(tmp_path / "w.msgpack"))
  assert back == dataclasses.replace(meta, width=8, num_classes=7)
  broken = jax.tree.map(np.asarray, loaded)
  del broken["params"]["layer3_1"]
  pretrained.save(str(tmp_path / "b.msgpack"), broken, meta)
  with pytest.raises(pretrained.ConversionError, match="layer3_1"):
    pretrained.open_network(str(tmp_path / "b.msgpack"))

