"""The small tanh CNN that Tramer & Boneh (2021) train end to end with DP-SGD on MNIST and Fashion-MNIST
(after Papernot et al.'s tempered-sigmoid networks): 26,010 parameters for 28x28 grayscale inputs.

    conv 16 8x8/2 (padding 2) - tanh - max-pool 2x2/1 - conv 32 4x4/2 - tanh - max-pool 2x2/1
    - dense 32 - tanh - dense (num_classes, named `fc`: the head a linear probe trains)

No normalisation layer (nothing mixes examples), so it is DP-safe as it stands. The flattening is NHWC (a
PyTorch copy of these weights permutes the first dense layer's rows; tests/test_small_cnn.py does).
"""

import flax.linen as nn
import jax.numpy as jnp

from tlgan.models import initializers
from tlgan.models.scattering import ScatterCNN, ScatterLinear

_KERNEL_INIT = initializers.lecun_normal()  # nn.Conv's default, drawn flat (compiles faster, the same values)


class TanhCNN(nn.Module):
  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm, no dropout: the same function in training and evaluation
    x = x.astype(self.dtype)
    x = nn.Conv(16, (8, 8), strides=(2, 2), padding=((2, 2), (2, 2)), dtype=self.dtype, kernel_init=_KERNEL_INIT,
                name="conv1")(x)
    x = nn.max_pool(jnp.tanh(x), (2, 2), strides=(1, 1))
    x = nn.Conv(32, (4, 4), strides=(2, 2), padding="VALID", dtype=self.dtype, kernel_init=_KERNEL_INIT,
                name="conv2")(x)
    x = nn.max_pool(jnp.tanh(x), (2, 2), strides=(1, 1))
    x = jnp.tanh(nn.Dense(32, dtype=self.dtype, name="dense")(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x).astype(jnp.float32)


# model.arch values of the small DP baselines (no layer mixes examples; stem/width/norm do not apply)
ARCHS = {"tanh_cnn": TanhCNN, "scatter_linear": ScatterLinear, "scatter_cnn": ScatterCNN}
