"""ResNet (He et al., 2016) equal to torchvision's, as a pure Flax linen module on NHWC images.

What makes the outputs equal torchvision's, not merely similar:
  * explicit symmetric padding wherever torchvision pads (XLA's 'SAME' pads the high side only and breaks
    equivalence at stride 2 on even sizes);
  * max-pool 3x3/2 padded with -inf, as torch pads max-pooling;
  * BatchNorm eps 1e-5, torch momentum 0.1 (= 0.9 here) and, in train mode, the running variance updated
    with the *unbiased* batch variance, as torch does (see `BatchNorm`);
  * stride on the 3x3 conv of the bottleneck (torchvision's "ResNet v1.5");
  * global average pooling, then the linear head.
`norm='group'` equals torchvision's `resnet18(norm_layer=lambda c: nn.GroupNorm(32, c))` the same way;
`norm='frozen_batch'` is BatchNorm that never leaves inference mode (see NORMS).

Module names follow torchvision's state_dict keys (`conv1`, `bn1`, `layer1_0/conv1`, `layer2_0/downsample_conv`,
..., `fc`), so `tlgan.pretrained.from_torchvision` is a rename and a transpose.

    model = ResNet18(num_classes=10)
    variables = model.init(key, images, train=False)
    logits = model.apply(variables, images, train=False)
    features = model.apply(variables, images, method=model.features)  # pooled, (N, 512)
"""

from functools import partial
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from tlgan.models import initializers
from tlgan.models.layers import Conv, GroupNorm, max_pool2d

STEMS = ("imagenet", "cifar")
# Normalisation layers: 'batch' (torchvision's; batch statistics in training), 'frozen_batch' (BatchNorm always in
# inference mode: pretrained or initial statistics, trainable scale and bias) and 'group' (GroupNorm, torch's
# nn.GroupNorm semantics). The last two never mix examples, as per-example (differentially private) training needs.
NORMS = ("batch", "frozen_batch", "group")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # outputs a caller can ask for (ResNet18/34/50)

# torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu') for convolutions.
conv_init = initializers.variance_scaling(2.0, "fan_out", "normal")


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d semantics on NHWC (channels last).

  Normalises with the biased batch variance (as torch does) but updates the running variance with the
  unbiased one, `var * n / (n - 1)` (as torch does and flax.linen.BatchNorm does not). Under `pmap`,
  `axis_name` makes the statistics those of the global batch.
  """
  use_running_average: bool = False
  momentum: float = 0.9  # flax convention: running = momentum * running + (1 - momentum) * batch
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  scale_init: Callable = nn.initializers.ones
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      n = x.size // c
      mean = jnp.mean(xf, axes)
      if self.axis_name is not None:
        mean = lax.pmean(mean, self.axis_name)
      var = jnp.mean(jnp.square(xf - mean), axes)  # centred: more accurate than E[x^2] - mean^2
      if self.axis_name is not None:
        var = lax.pmean(var, self.axis_name)
        n = n * lax.psum(1, self.axis_name)
      if not self.is_initializing():
        unbiased = var * (n / jnp.maximum(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
    y = (x.astype(jnp.float32) - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype or x.dtype)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  conv: Callable = Conv
  norm: Callable = BatchNorm
  zero_init_residual: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x):
    out = self.conv(self.features, (3, 3), (self.stride,) * 2, (1, 1), name="conv1")(x)
    out = nn.relu(self.norm(name="bn1")(out))
    out = self.conv(self.features, (3, 3), (1, 1), (1, 1), name="conv2")(out)
    out = self.norm(name="bn2", **self._last_bn_init())(out)
    return nn.relu(out + self._shortcut(x))

  def _last_bn_init(self):
    return {"scale_init": nn.initializers.zeros} if self.zero_init_residual else {}

  def _shortcut(self, x):
    out_features = self.features * self.expansion
    if self.stride == 1 and x.shape[-1] == out_features:
      return x
    x = self.conv(out_features, (1, 1), (self.stride,) * 2, (0, 0), name="downsample_conv")(x)
    return self.norm(name="downsample_bn")(x)


class Bottleneck(BasicBlock):
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.conv(self.features, (1, 1), (1, 1), (0, 0), name="conv1")(x)
    out = nn.relu(self.norm(name="bn1")(out))
    out = self.conv(self.features, (3, 3), (self.stride,) * 2, (1, 1), name="conv2")(out)
    out = nn.relu(self.norm(name="bn2")(out))
    out = self.conv(self.features * 4, (1, 1), (1, 1), (0, 0), name="conv3")(out)
    out = self.norm(name="bn3", **self._last_bn_init())(out)
    return nn.relu(out + self._shortcut(x))


class ResNet(nn.Module):
  """A torchvision ResNet. `stem='cifar'` swaps the 7x7/2 conv + max-pool for one 3x3/1 conv (32x32 inputs);
  its stem then has another shape than ImageNet checkpoints and is not loaded from them."""
  stage_sizes: Sequence[int]
  block: Any = BasicBlock
  num_classes: int = 1000
  stem: str = "imagenet"
  width: int = 64
  zero_init_residual: bool = False
  dtype: Any = None  # compute dtype (e.g. jnp.bfloat16); parameters stay float32
  conv_impl: str = "auto"
  axis_name: Optional[str] = None
  norm: str = "batch"  # one of NORMS
  norm_groups: int = 32  # GroupNorm: groups per layer (fewer where a layer has fewer channels)

  def _modules(self, train: bool):
    conv = partial(Conv, use_bias=False, impl=self.conv_impl, dtype=self.dtype, kernel_init=conv_init)
    if self.norm == "group":
      return conv, partial(GroupNorm, num_groups=self.norm_groups, dtype=self.dtype)
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
    frozen = self.norm == "frozen_batch"
    norm = partial(BatchNorm, use_running_average=frozen or not train, axis_name=self.axis_name, dtype=self.dtype)
    return conv, norm

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False, stages: Sequence[str] = ()):
    """Logits (N, num_classes); with `features_only`, the pooled features before the head; with `stages`
    (names from 'stem', 'layer1', ...), a dict of those stage outputs, computed no deeper than needed (the
    model then has no parameters beyond the deepest stage named)."""
    if self.stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
    conv, norm = self._modules(train)
    x = x.astype(self.dtype or x.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), (3, 3), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      self.sow("intermediates", "stem", x)
      outputs = {"stem": x}
      x = max_pool2d(x, 3, 2, 1, impl=self.conv_impl)  # torch.nn.MaxPool2d(3, 2, 1)
    else:
      x = conv(self.width, (3, 3), (1, 1), (1, 1), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      self.sow("intermediates", "stem", x)
      outputs = {"stem": x}
    for i, num_blocks in enumerate(self.stage_sizes):
      if stages and all(name in outputs for name in stages):
        break
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block(self.width * 2**i, stride, conv=conv, norm=norm,
                       zero_init_residual=self.zero_init_residual, name=f"layer{i + 1}_{j}")(x)
      # Stage outputs, collected with apply(..., mutable=['intermediates']) (style transfer); free otherwise.
      self.sow("intermediates", f"layer{i + 1}", x)
      outputs[f"layer{i + 1}"] = x
    if stages:
      unknown = [name for name in stages if name not in outputs]
      if unknown:
        raise ValueError(f"unknown stages {unknown}: choose from {sorted(outputs)}")
      return {name: outputs[name] for name in stages}
    feats = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if features_only:
      return feats
    # torchvision's Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1.0 / feats.shape[-1] ** 0.5
    uniform = lambda key, shape, dtype=jnp.float32: initializers.uniform(key, shape, dtype, -bound, bound)
    return nn.Dense(self.num_classes, kernel_init=uniform, bias_init=uniform, name="fc")(feats)

  def features(self, x, train: bool = False):
    """Globally average-pooled features: (N, 512) for ResNet18/34, (N, 2048) for ResNet50."""
    return self(x, train, features_only=True)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
