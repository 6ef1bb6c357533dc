"""Per-example gradient norms from one batched backward pass (tlgan.steps.ghost_norms) against jax_privacy's
per-example gradients (a peer library's vmap), on every model DP-SGD trains, and the refusals that make the DP
step fall back to vmapped gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlgan import pretrained
from tlgan.models import dcgan, layers
from tlgan.models.projected import ProjectedDiscriminator
from tlgan.models.resnet import ResNet
from tlgan.models.scattering import ScatterCNN, ScatterLinear
from tlgan.models.small_cnn import TanhCNN
from tlgan.steps import ghost_norms, private


def oracle_norms(apply, params, x, y):
  """jax_privacy's per-example gradient norms of the cross-entropy of `apply(params, x)` (one example at a time)."""
  from jax_privacy import clipping

  def loss(p, xi, yi):
    logits = apply(p, xi)
    return -jax.nn.log_softmax(logits.reshape(1, -1))[0, yi[0]] if logits.ndim == 2 else -logits[0], ()
  fn = clipping.clipped_grad(loss, has_aux=True, l2_clip_norm=1e9, batch_argnums=(1, 2), return_grad_norms=True)
  return jax.jit(lambda p, x, y: fn(p, x, y)[1].grad_norms)(params, x, y)


def losses_of(apply):
  def example_losses(p, inp):
    logits = apply(p, inp["x"])
    if logits.ndim == 1:  # a discriminator's logit per example
      return -logits, None
    return -jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), inp["y"]], None
  return example_losses


def check(apply, params, shape, n=5, rtol=2e-5):
  x = jax.random.normal(jax.random.key(0), (n, *shape))
  y = jnp.arange(n) % 3
  ghost = jax.jit(lambda p, x, y: ghost_norms.per_example_grad_norms(losses_of(apply), p, {"x": x, "y": y}))
  got, want = ghost(params, x, y), oracle_norms(apply, params, x, y)
  assert np.all(np.asarray(want) > 0)
  np.testing.assert_allclose(got, want, rtol=rtol)


def init(model, shape, **kwargs):
  return jax.jit(lambda key: model.init(key, jnp.zeros(shape), **kwargs))(jax.random.key(1))


def resnet(norm, stem):
  return ResNet(stage_sizes=(1, 1), num_classes=3, width=8, norm=norm, norm_groups=4, stem=stem)


MODELS = {  # name: (model, input shape, apply kwargs)
    "tanh_cnn": (TanhCNN(num_classes=3), (28, 28, 1), {}),
    "scatter_linear on features": (ScatterLinear(num_classes=3, precomputed=True), (7, 7, 81), {}),
    "scatter_cnn on features": (ScatterCNN(num_classes=3, precomputed=True), (7, 7, 81), {}),
    "GroupNorm ResNet, cifar stem": (resnet("group", "cifar"), (8, 8, 3), {}),
    "frozen-BatchNorm ResNet": (resnet("frozen_batch", "imagenet"), (16, 16, 3), {}),
    "GroupNorm DCGAN D": (dcgan.Discriminator(image_shape=(16, 16, 1), features=8, norm="group"), (16, 16, 1),
                          {"train": True}),
}


@pytest.mark.parametrize("name", MODELS)
def test_ghost_norms_equal_jax_privacys_per_example_gradient_norms(name):
  model, shape, kwargs = MODELS[name]
  variables = init(model, (1, *shape), **kwargs)
  rest = {k: v for k, v in variables.items() if k != "params"}
  if "batch_stats" in rest:  # statistics other than the initial ones: x-hat is not x
    rest["batch_stats"] = jax.tree.map(lambda s: s + 0.3 * jax.random.uniform(jax.random.key(2), s.shape),
                                       rest["batch_stats"])
  params = variables["params"]
  if name == "frozen-BatchNorm ResNet":  # scales away from 1, one of them zero (zero-init residual)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 0.0 if "bn2" in jax.tree_util.keystr(p) and "scale" in jax.tree_util.keystr(p) else
        v * 1.5 if "scale" in jax.tree_util.keystr(p) else v, params)
  apply = lambda p, x: model.apply({"params": p, **rest}, x, **kwargs)
  check(apply, params, shape)


def test_a_linear_probe_the_head_only():
  model = resnet("group", "cifar")
  params = init(model, (1, 8, 8, 3))["params"]
  head = {k: v for k, v in params.items() if k == "fc"}
  body = {k: v for k, v in params.items() if k != "fc"}
  check(lambda p, x: model.apply({"params": {**body, **p}}, x), head, (8, 8, 3))


def test_projected_discriminator_heads_on_frozen_trunk_features():
  trunk_meta = pretrained.WeightsMeta("resnet18", num_classes=1, image_size=16, width=8, stem="cifar")
  d = ProjectedDiscriminator(image_shape=(16, 16, 3), features=8, norm="group", trunk=trunk_meta)
  variables = init(d, (1, 16, 16, 3), train=True)
  feats = jax.jit(lambda v, x: d.apply(v, x, train=True, features_only=True))(
      variables, jax.random.normal(jax.random.key(3), (5, 16, 16, 3)))
  heads = {k: v for k, v in variables["params"].items() if k != "trunk"}
  trunk = {k: v for k, v in variables["params"].items() if k == "trunk"}
  fixed = {k: v for k, v in variables.items() if k != "params"}
  apply = lambda p, f: d.apply({"params": {**p, **trunk}, **fixed}, None, train=True, stage_features=f)
  example_losses = lambda p, f: (-apply(p, f), None)
  got = jax.jit(lambda p, f: ghost_norms.per_example_grad_norms(example_losses, p, f))(heads, feats)

  def one(p, f):  # the definition: example i's gradient alone (vmapped over the examples)
    grads = jax.grad(lambda p: -apply(p, jax.tree.map(lambda a: a[None], f))[0])(p)
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  want = jax.jit(jax.vmap(one, (None, 0)))(heads, feats)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_flax_convolutions_of_every_padding_and_stride():
  class Net(nn.Module):  # four branches, one compile
    @nn.compact
    def __call__(self, x):
      branches = [nn.Conv(4, (3, 2), strides=s, padding=p)(x) for p, s in
                  (("SAME", 2), ("VALID", 1), (1, (2, 1)), (((2, 1), (0, 3)), 1))]
      return nn.Dense(3)(jnp.concatenate([jnp.tanh(b).reshape(x.shape[0], -1) for b in branches], -1))
  model = Net()
  params = init(model, (1, 9, 7, 2))["params"]
  check(lambda p, x: model.apply({"params": p}, x), params, (9, 7, 2))


@pytest.mark.parametrize("t, d, c", [(1, 5, 3), (3, 40, 50), (30, 4, 5)])
def test_both_formulas_for_a_kernel_equal_float64_outer_products(t, d, c):
  rng = np.random.default_rng(0)
  p, g = rng.normal(size=(4, t, d)), rng.normal(size=(4, t, c))
  want = np.sum(np.einsum("ntd,ntc->ndc", p, g) ** 2, (1, 2))
  got = ghost_norms.kernel_sq_norms(jnp.asarray(p, jnp.float32), jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)


class Shared(nn.Module):  # one Dense applied twice: its per-example gradient is a sum no per-layer rule sees
  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(x.shape[-1])
    return nn.Dense(3)(dense(jnp.tanh(dense(x))))


class Transposed(nn.Module):  # a trainable ConvTranspose: no rule
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(layers.ConvTranspose(2)(x).reshape(x.shape[0], -1))


def test_what_no_rule_covers_is_refused_and_the_dp_step_falls_back_to_vmap(caplog):
  for model, shape in ((Shared(), (6,)), (Transposed(), (4, 4, 2))):
    params = init(model, (1, *shape))["params"]
    apply = lambda p, x: model.apply({"params": p}, x)
    x, y = jax.random.normal(jax.random.key(0), (5, *shape)), jnp.arange(5) % 3
    with pytest.raises(ghost_norms.Unsupported):
      jax.eval_shape(lambda p: ghost_norms.per_example_grad_norms(losses_of(apply), p, {"x": x, "y": y}), params)
  got = private.per_example_grad_norms(losses_of(apply), params, {"x": x, "y": y}, jnp.ones(5, bool))
  np.testing.assert_allclose(got, oracle_norms(apply, params, x, y), rtol=2e-5)
  assert "vmapped per-example gradients" in caplog.text and "ConvTranspose" in caplog.text
