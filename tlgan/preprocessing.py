"""Classifier preprocessing in tf.data: resize, channels, normalisation, and (seed, step)-determined
augmentation (random crop from a padded image, horizontal flip), vectorised over the batch.

The crop is done by `tf.image.crop_and_resize` with boxes on whole pixels, which samples exactly the pixels of
an integer crop and resizes in the same op.
"""

from typing import Callable, Dict, Sequence

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classifier_map_fn(*, image_size: int, channels: int = 3, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD, train: bool = False, crop_padding: int = 0,
                      flip: bool = False, seed: int = 0) -> Callable:
  """Returns fn({'image': uint8 NHWC, 'label'}, step) -> {'image': float32 normalised, 'label'}."""
  mean_t = tf.constant(mean[:channels], tf.float32)
  std_t = tf.constant(std[:channels], tf.float32)

  def fn(batch: Dict[str, tf.Tensor], step) -> Dict[str, tf.Tensor]:
    images = tf.cast(batch["image"], tf.float32) / 255.0
    if images.shape[-1] == 1 and channels == 3:
      images = tf.repeat(images, 3, axis=-1)  # grayscale -> 3 channels for ImageNet-shaped stems
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    if train and (crop_padding > 0 or flip):
      seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
      crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
      p = crop_padding
      padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]]) if p > 0 else images
      offsets = tf.random.stateless_uniform((n, 2), crop_seed, 0, 2 * p + 1, dtype=tf.int32)
      oy, ox = tf.cast(offsets[:, 0], tf.float32), tf.cast(offsets[:, 1], tf.float32)
      hp, wp = float(h + 2 * p - 1), float(w + 2 * p - 1)
      boxes = tf.stack([oy / hp, ox / wp, (oy + h - 1) / hp, (ox + w - 1) / wp], axis=1)
      images = tf.image.crop_and_resize(padded, boxes, tf.range(n), (image_size, image_size))
      if flip:
        do_flip = tf.random.stateless_uniform((n, 1, 1, 1), flip_seed) < 0.5
        images = tf.where(do_flip, images[:, :, ::-1, :], images)
    elif (h, w) != (image_size, image_size):
      images = tf.image.resize(images, (image_size, image_size), method="bilinear")
    return {"image": (images - mean_t) / std_t, "label": batch["label"]}

  return fn
