"""Classifier preprocessing in tf.data: resize, channels, normalisation, and (seed, step)-determined
augmentation (random crop from a padded image, horizontal flip), vectorised over the batch.

Resize and random shift are one `tf.image.crop_and_resize` (see `classifier_map_fn`).
"""

from typing import Callable, Dict, Sequence

import tensorflow as tf

from tlgan.pretrained import IMAGENET_MEAN, IMAGENET_STD


def classifier_map_fn(*, image_size: int, channels: int = 3, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD, train: bool = False, crop_padding: int = 0,
                      flip: bool = False, seed: int = 0, source_size: int = 0) -> Callable:
  """Returns fn({'image': uint8 NHWC, 'label'}, step, stream=0) -> {'image': float32 normalised, 'label'}.

  Resizing is bilinear with half-pixel centres (as tf.image.resize and torch's align_corners=False). The
  random crop is "pad by `crop_padding` and crop" at the *output* resolution, i.e. a random shift of up to
  `crop_padding` pixels of the `image_size` image with zero fill, whatever the source resolution (2 pixels
  of an 8x8 digit would be a quarter of the image). Resize and shift are one `tf.image.crop_and_resize`,
  which samples the source at exactly the shifted output pixel centres; evaluation uses the same op unshifted.

  `source_size` > 0 first reduces the images to that resolution (area averaging), so that a network can be
  trained on the look of a lower-resolution target domain (e.g. 8x8 digits shown at 32x32).
  """
  mean_t = tf.constant(mean[:channels], tf.float32)
  std_t = tf.constant(std[:channels], tf.float32)

  def fn(batch: Dict[str, tf.Tensor], step, stream: int = 0) -> Dict[str, tf.Tensor]:
    images = tf.cast(batch["image"], tf.float32) / 255.0
    if images.shape[-1] == 1 and channels == 3:
      images = tf.repeat(images, 3, axis=-1)  # grayscale -> 3 channels for ImageNet-shaped stems
    if source_size and images.shape[1] != source_size:
      images = tf.image.resize(images, (source_size, source_size), method="area")
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    shifts = tf.zeros((n, 2), tf.float32)
    flips = None
    if train and (crop_padding > 0 or flip):
      seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
      if stream:  # data shard j > 0 (shard 0 keeps the single-shard numbers)
        seeds = tf.random.experimental.stateless_fold_in(seeds, stream)
      crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
      if crop_padding > 0:
        shifts = tf.cast(tf.random.stateless_uniform((n, 2), crop_seed, -crop_padding, crop_padding + 1,
                                                     dtype=tf.int32), tf.float32)
      if flip:
        flips = tf.random.stateless_uniform((n, 1, 1, 1), flip_seed) < 0.5
    # Output pixel i samples source coordinate (i + 0.5) * h / S - 0.5 (half-pixel centres), shifted by
    # `shift` output pixels; crop_and_resize maps the box ends to the first and last output pixels.
    sy, sx = h / image_size, w / image_size
    y0 = (0.5 * sy - 0.5 + shifts[:, 0] * sy) / max(h - 1, 1)
    x0 = (0.5 * sx - 0.5 + shifts[:, 1] * sx) / max(w - 1, 1)
    y1 = y0 + (image_size - 1) * sy / max(h - 1, 1)
    x1 = x0 + (image_size - 1) * sx / max(w - 1, 1)
    images = tf.image.crop_and_resize(images, tf.stack([y0, x0, y1, x1], axis=1), tf.range(n),
                                      (image_size, image_size), extrapolation_value=0.0)
    if flips is not None:
      images = tf.where(flips, images[:, :, ::-1, :], images)
    return {"image": (images - mean_t) / std_t, "label": batch["label"]}

  return fn
