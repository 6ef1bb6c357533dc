"""A discriminator on a frozen pretrained trunk (after Projected GANs, Sauer et al., NeurIPS 2021).

The image goes through a pretrained ResNet18 (fed exactly as its classifier was trained,
`pretrained.classifier_input`), whose weights and BatchNorm statistics stay fixed; small
trainable heads read several of its stages (each: a 3x3 convolution, BatchNorm, LeakyReLU, a 1x1 convolution to
one logit per position, averaged over positions) and their logits are summed. The real/fake decision is thus
made in a feature space learned on real data, and only the heads learn.

Simplified from the paper: no random cross-channel / cross-scale mixing layers, no differentiable augmentation,
plain BatchNorm heads instead of spectrally normalised ones. With norm='group' the heads normalise each example
on its own (GroupNorm) and the trunk runs in inference mode: nothing mixes examples, so the heads can be trained
with DP-SGD (`tlgan.steps.private_gan`) while the trunk, trained on public data, stays as it is.

The trunk's parameters enter through `stop_gradient`, so no weight gradient of the trunk is ever computed
(gradients still flow through it to the image, for G's update); the trainer also excludes them from the
optimiser. Load the weights with `load_trunk`.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlgan import pretrained
from tlgan.models.dcgan import _batch_norm, dcgan_init
from tlgan.models.layers import Conv, GroupNorm
from tlgan.models.resnet import ResNet

TRUNK = "trunk"  # the projected D's pretrained feature network: its module name, frozen in every kind of training


class ProjectedDiscriminator(nn.Module):
  """images (N, H, W, C) in [-1, 1] -> logits (N,)."""
  image_shape: Sequence[int] = (28, 28, 1)
  features: int = 64  # each head's width
  stages: Sequence[str] = ("layer1", "layer2", "layer3")
  trunk: pretrained.WeightsMeta = pretrained.WeightsMeta("resnet18", num_classes=1, image_size=32)  # its file's record
  conv_impl: str = "auto"
  dtype: Any = None
  axis_name: Optional[str] = None
  norm: str = "batch"  # the heads' normalisation: 'batch' or 'group' (per example: private heads)

  @nn.compact
  def __call__(self, x, train: bool = True, *, features_only: bool = False, stage_features=None):
    """Logits of images `x`; `features_only`: the trunk's stage features instead ({stage: (N, h, w, c)}), and
    `stage_features` (such a dict; `x` unused): the heads' logits on them, without running the trunk again
    (a private step computes the real images' features once, outside its per-example gradients)."""
    if stage_features is None:
      x = pretrained.classifier_input((x.astype(jnp.float32) + 1.0) / 2.0, self.trunk)
      frozen = nn.map_variables(ResNet, "params", trans_in_fn=jax.lax.stop_gradient, init=self.is_initializing(),
                                mutable=self.is_initializing())
      trunk = frozen(stage_sizes=(2, 2, 2, 2), num_classes=1, stem=self.trunk.stem, width=self.trunk.width,
                     conv_impl=self.conv_impl, dtype=self.dtype, name=TRUNK)
      feats = trunk(x, train=False, stages=tuple(self.stages))  # inference BatchNorm: the trunk never changes
      if features_only:
        return feats
    else:
      feats = stage_features
    logits = jnp.zeros((feats[self.stages[0]].shape[0],), jnp.float32)
    for name in self.stages:
      h = Conv(self.features, (3, 3), (1, 1), (1, 1), use_bias=False, impl=self.conv_impl,
               kernel_init=dcgan_init, dtype=self.dtype, name=f"head_{name}_conv")(feats[name])
      if self.norm == "group":
        h = GroupNorm(num_groups=max(1, min(32, self.features // 4)), dtype=self.dtype, name=f"head_{name}_gn")(h)
      else:
        h = _batch_norm(train, self.axis_name, self.dtype, name=f"head_{name}_bn")(h)
      h = nn.leaky_relu(h, 0.2)
      h = Conv(1, (1, 1), (1, 1), (0, 0), use_bias=True, impl=self.conv_impl, kernel_init=dcgan_init,
               dtype=self.dtype, name=f"head_{name}_out")(h)
      logits = logits + jnp.mean(h.astype(jnp.float32), axis=(1, 2, 3))
    return logits


def load_trunk(d_params, d_batch_stats, weights):
  """(params, batch_stats) with the trunk replaced by `weights` (a tlgan weights file's variables, e.g. a
  classifier trained on the source data); every trunk variable must be there with its shape."""
  fresh = {"params": d_params[TRUNK], "batch_stats": d_batch_stats[TRUNK]}
  merged, _ = pretrained.merge_pretrained(fresh, weights, ())
  merged = jax.tree.map(jnp.asarray, merged)
  return {**d_params, TRUNK: merged["params"]}, {**d_batch_stats, TRUNK: merged["batch_stats"]}
