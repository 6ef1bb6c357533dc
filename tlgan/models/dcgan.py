"""DCGAN generator and discriminator (Radford et al., 2016), shaped for 28x28 and 32x32 images.

Conventions from the paper: transposed convolutions with BatchNorm + ReLU in G and a tanh output; strided
convolutions with LeakyReLU(0.2) in D, BatchNorm on every D layer but the first; weights drawn from N(0, 0.02)
(BatchNorm scales from N(1, 0.02)).

The spatial plan comes from the image size: the image is halved while it stays even and at least 4 pixels
(28 -> 14 -> 7, 32 -> 16 -> 8 -> 4). With `features=64`, 28x28 gives G: z -> 256@7x7 -> 128@14x14 -> 1@28x28
(the pytorch/examples DCGAN adapted to 28x28) and D mirrors it.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from tlgan.models import initializers
from tlgan.models.layers import Conv, ConvTranspose, GroupNorm

dcgan_init = initializers.normal_init(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * initializers.normal(key, shape, dtype)


def num_upsamplings(image_size: int) -> int:
  """How many stride-2 stages between the smallest feature map and the image."""
  n, size = 0, image_size
  while size % 2 == 0 and size // 2 >= 4:
    size //= 2
    n += 1
  if n == 0:
    raise ValueError(f"image_size {image_size} cannot be halved to a >= 4 pixel map; use e.g. 28 or 32")
  return n


def stage_widths(image_size: int, features: int) -> Tuple[int, ...]:
  """Channel widths from the image side inwards, one per stride-2 stage: features * (2, 4, 8, ...).

  This is the pytorch/examples DCGAN (ngf = ndf = 64) cut to the stages a small image has.
  """
  return tuple(features * 2**(i + 1) for i in range(num_upsamplings(image_size)))


def _batch_norm(train: bool, axis_name: Optional[str], dtype: Any, name: Optional[str] = None):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name,
                      scale_init=bn_scale_init, dtype=dtype, name=name)


class _DCGANModule(nn.Module):
  image_shape: Sequence[int] = (28, 28, 1)
  features: int = 64
  conv_impl: str = "auto"  # see tlgan.models.layers
  dtype: Any = None  # compute dtype; parameters stay float32
  axis_name: Optional[str] = None  # under pmap: BatchNorm statistics over this axis


class Generator(_DCGANModule):
  """z (N, latent_dim) -> images (N, H, W, C) in [-1, 1]."""

  @nn.compact
  def __call__(self, z, train: bool = True):
    h, w, c = self.image_shape
    widths = stage_widths(h, self.features)
    n_up = len(widths)
    h0, w0 = h // 2**n_up, w // 2**n_up
    x = nn.Dense(h0 * w0 * widths[-1], use_bias=False, kernel_init=dcgan_init, dtype=self.dtype)(z)
    x = x.reshape(z.shape[0], h0, w0, widths[-1])
    x = nn.relu(_batch_norm(train, self.axis_name, self.dtype)(x))
    for width in reversed(widths[:-1]):
      x = ConvTranspose(width, (4, 4), (2, 2), (1, 1), use_bias=False, impl=self.conv_impl,
                        kernel_init=dcgan_init, dtype=self.dtype)(x)
      x = nn.relu(_batch_norm(train, self.axis_name, self.dtype)(x))
    x = ConvTranspose(c, (4, 4), (2, 2), (1, 1), use_bias=True, impl=self.conv_impl,
                      kernel_init=dcgan_init, dtype=self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


D_NORMS = ("batch", "group")  # 'group': GroupNorm, which never mixes examples (a private D)


def d_block_layers(num_blocks: int, norm: str = "batch") -> Tuple[str, ...]:
  """The names of the layers in D's first `num_blocks` blocks from the image side (block i: its convolution
  `Conv_i` and, but for the first, the normalisation after it, `BatchNorm_{i-1}` or, with norm='group',
  `GroupNorm_{i-1}`): what FreezeD freezes."""
  kind = {"batch": "BatchNorm", "group": "GroupNorm"}[norm]
  return tuple(f"Conv_{i}" for i in range(num_blocks)) + tuple(f"{kind}_{i - 1}" for i in range(1, num_blocks))


class Discriminator(_DCGANModule):
  """images (N, H, W, C) in [-1, 1] -> logits (N,).

  Its layers are named explicitly (`d_block_layers` and checkpoints depend on the names); the names are the
  ones flax gave them automatically before, so older checkpoints load and initialisation is unchanged."""

  norm: str = "batch"  # or 'group' (see D_NORMS)

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.norm not in D_NORMS:
      raise ValueError(f"norm must be one of {D_NORMS}, got {self.norm!r}")
    widths = stage_widths(self.image_shape[0], self.features)
    for i, width in enumerate(widths):
      x = Conv(width, (4, 4), (2, 2), (1, 1), use_bias=(i == 0), impl=self.conv_impl,
               kernel_init=dcgan_init, dtype=self.dtype, name=f"Conv_{i}")(x)
      if i > 0 and self.norm == "group":
        x = GroupNorm(num_groups=min(32, width // 4), dtype=self.dtype, name=f"GroupNorm_{i - 1}")(x)
      elif i > 0:
        x = _batch_norm(train, self.axis_name, self.dtype, name=f"BatchNorm_{i - 1}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(1, kernel_init=dcgan_init, dtype=self.dtype, name="Dense_0")(x)[:, 0].astype(jnp.float32)
