"""Inception-v3 as pytorch-fid uses it for FID (`pt_inception-2015-12-05-6726825d.pth`: the TF FID network).

Equal to pytorch-fid's `InceptionV3(output_blocks=[3])` (tested against that module with random weights):
bilinear resize to 299x299 (align_corners=False, no antialiasing, as torch's F.interpolate), [0, 1] inputs
scaled to [-1, 1], torchvision's Inception3 layout with BatchNorm eps 1e-3, and the FID patches: average
pools that do not count padding, and a max-pool in the last block. Output: the 2048-d pooled features, and
the 1008-way logits of its `fc` for the Inception Score.

Module names mirror the torch state dict (`Mixed_5b/branch1x1/conv`), so conversion is generic.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from tlgan.models.layers import Conv


class BasicConv(nn.Module):
  features: int
  kernel: tuple = (1, 1)
  strides: tuple = (1, 1)
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, self.kernel, self.strides, self.padding, use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def max_pool(x, window=3, stride=2, padding=0):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)


def avg_pool_exclude_pad(x, window=3):
  """3x3/1 average pool, padding 1, dividing by the number of real pixels (TF's, and FID's, convention)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  sums = lax.reduce_window(x, 0.0, lax.add, (1, window, window, 1), (1, 1, 1, 1), pad)
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  counts = lax.reduce_window(ones, 0.0, lax.add, (1, window, window, 1), (1, 1, 1, 1), pad)
  return sums / counts


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c, name="branch7x7_1")(x)
    b7 = BasicConv(c, name="branch7x7_2", **row)(b7)
    b7 = BasicConv(192, name="branch7x7_3", **col)(b7)
    bd = BasicConv(c, name="branch7x7dbl_1")(x)
    bd = BasicConv(c, name="branch7x7dbl_2", **col)(bd)
    bd = BasicConv(c, name="branch7x7dbl_3", **row)(bd)
    bd = BasicConv(c, name="branch7x7dbl_4", **col)(bd)
    bd = BasicConv(192, name="branch7x7dbl_5", **row)(bd)
    bp = BasicConv(192, name="branch_pool")(avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(320, (3, 3), (2, 2), name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool(x)], -1)


class InceptionE(nn.Module):
  pool: str = "avg"  # the FID network's last block max-pools

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = max_pool(x, 3, 1, 1) if self.pool == "max" else avg_pool_exclude_pad(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3FID(nn.Module):
  """images NHWC in [0, 1] -> (pool features (N, 2048), logits (N, 1008))."""

  @nn.compact
  def __call__(self, x):
    n = x.shape[0]
    if x.shape[1:3] != (299, 299):
      x = jax.image.resize(x, (n, 299, 299, x.shape[-1]), "linear", antialias=False)
    x = 2.0 * x - 1.0
    x = BasicConv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = max_pool(x)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    features = jnp.mean(x, axis=(1, 2))
    return features, nn.Dense(1008, name="fc")(features)
