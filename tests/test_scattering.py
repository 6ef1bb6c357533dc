"""The scattering transform (tlgan.models.scattering) equals kymatio's Scattering2D (the oracle, the
implementation Tramer & Boneh used), and the ScatterNet + linear classifier trains with DP-SGD on features
computed once per image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlgan.models import scattering
from tlgan.models import initializers

kymatio_numpy = pytest.importorskip("kymatio.scattering2d.frontend.numpy_frontend")


@pytest.mark.parametrize("shape,J,max_order,channels", [((28, 28), 2, 2, 1), ((32, 32), 2, 2, 3),
                                                        ((28, 28), 3, 2, 1), ((30, 26), 2, 1, 2)])
def test_equals_kymatio(shape, J, max_order, channels):
  x = np.random.default_rng(J + channels).uniform(0, 1, (3, channels, *shape)).astype(np.float32)
  theirs = kymatio_numpy.ScatteringNumPy2D(J=J, shape=shape, max_order=max_order)(x)  # (n, c, K, h', w')
  theirs = theirs.reshape(3, -1, *theirs.shape[-2:]).transpose(0, 2, 3, 1)
  transform = jax.jit(scattering.scattering2d, static_argnames=("J", "max_order"))
  ours = np.asarray(transform(jnp.asarray(x.transpose(0, 2, 3, 1)), J=J, max_order=max_order))
  assert ours.shape == theirs.shape == (3, shape[0] // 2**J, shape[1] // 2**J,
                                        channels * scattering.num_paths(J, max_order=max_order))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6 * np.abs(theirs).max())


def test_too_small_an_image_is_refused():
  with pytest.raises(ValueError, match="smaller than the scattering scale"):
    scattering.scattering2d(jnp.zeros((1, 3, 3, 1)), J=2)


def test_group_normalise_equals_torch_group_norm():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(2.0, 3.0, (4, 7, 7, 81)).astype(np.float32)
  ours = np.asarray(scattering.group_normalise(jnp.asarray(x), 27))
  theirs = torch.nn.GroupNorm(27, 81, affine=False)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=1e-5, rtol=0)


HEADS = {  # model: its parameters' shapes on 28x28 grayscale images
    "scatter_linear": (scattering.ScatterLinear, {"fc": {"bias": (10,), "kernel": (3969, 10)}}),
    "scatter_cnn": (scattering.ScatterCNN, {"conv1": {"bias": (16,), "kernel": (3, 3, 81, 16)},
                                            "conv2": {"bias": (32,), "kernel": (3, 3, 16, 32)},
                                            "dense": {"bias": (32,), "kernel": (512, 32)},
                                            "fc": {"bias": (10,), "kernel": (32, 10)}}),
}


@pytest.mark.parametrize("arch", HEADS)
def test_scatternet_features_are_per_example_and_precomputing_them_changes_nothing(arch):
  module, shapes = HEADS[arch]
  model = module(num_classes=10)
  x = initializers.normal(jax.random.key(0), (5, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x[:1])
  assert jax.tree.map(np.shape, variables) == {"params": shapes}
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  features = jax.jit(model.fixed_features)(x)
  np.testing.assert_allclose(jax.jit(model.clone(precomputed=True).apply)(variables, features), logits,
                             rtol=0, atol=1e-6)
  # Nothing mixes examples (a DP-SGD requirement): changing example 0 leaves the others' logits unchanged.
  changed = apply(variables, x.at[0].multiply(-3.0))
  np.testing.assert_allclose(changed[1:], logits[1:], rtol=0, atol=1e-6)
  assert not np.allclose(changed[0], logits[0])


def test_scatter_cnn_equals_tramer_and_bonehs_network_in_pytorch():
  """Their ScatterNet + CNN for (Fashion-)MNIST, written in PyTorch as in their code (NCHW, GroupNorm(27) of the
  scattering features, flattening channel-major), holding our weights: the same logits."""
  torch = pytest.importorskip("torch")
  nn = torch.nn
  model = scattering.ScatterCNN(num_classes=10, precomputed=True)
  params = jax.jit(model.init)(jax.random.key(2), jnp.zeros((1, 7, 7, 81)))["params"]
  params = jax.tree.map(lambda a: np.asarray(a) * 3.0, params)  # tanh away from its linear part
  raw = np.random.default_rng(3).gamma(2.0, 1.0, (4, 7, 7, 81)).astype(np.float32)  # scattering-like, positive
  features = np.asarray(scattering.group_normalise(jnp.asarray(raw), 27))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(features)))
  net = nn.Sequential(nn.GroupNorm(27, 81, affine=False), nn.Conv2d(81, 16, 3, stride=2, padding=1), nn.Tanh(),
                      nn.Conv2d(16, 32, 3, stride=1, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32 * 4 * 4, 32),
                      nn.Tanh(), nn.Linear(32, 10))
  dense = params["dense"]["kernel"].reshape(4, 4, 32, 32).transpose(2, 0, 1, 3).reshape(512, 32)  # (h,w,c) -> (c,h,w)
  weights = {"1.weight": params["conv1"]["kernel"].transpose(3, 2, 0, 1), "1.bias": params["conv1"]["bias"],
             "3.weight": params["conv2"]["kernel"].transpose(3, 2, 0, 1), "3.bias": params["conv2"]["bias"],
             "6.weight": dense.T, "6.bias": params["dense"]["bias"],
             "8.weight": params["fc"]["kernel"].T, "8.bias": params["fc"]["bias"]}
  net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
  with torch.no_grad():
    theirs = net.eval()(torch.from_numpy(raw.transpose(0, 3, 1, 2))).numpy()
  assert np.abs(theirs).max() > 0.5  # logits, not a collapsed network
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)


def test_the_fixed_features_read_the_pixels_behind_the_normalisation():
  """The classifier pipeline feeds ImageNet-normalised images; the transform sees [0, 1] pixels, as in the paper."""
  from tlgan.pretrained import IMAGENET_MEAN, IMAGENET_STD
  pixels = np.random.default_rng(1).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
  normalised = (pixels - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
  ours = jax.jit(scattering.ScatterLinear().fixed_features)(jnp.asarray(normalised))
  expected = jax.jit(lambda p: scattering.group_normalise(scattering.scattering2d(p), 27))(jnp.asarray(pixels))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant,arch", [("scatternet", "scatter_linear"), ("scatter_cnn", "scatter_cnn")])
def test_a_dp_run_precomputes_the_features_and_trains_the_head(tmp_path, variant, arch):
  """configs/private.py:scatternet (and :scatter_cnn) on scikit-learn's real digits, a few steps: the features
  are computed once per image, the run ends at its epsilon and the exported model holds only the trained layers
  (the transform has no parameters)."""
  from configs import private
  from tlgan import pretrained
  from tlgan.trainers import classifier
  config = private.get_config(f"digits,{variant}")
  config.batch_size, config.num_steps, config.eval_every_epochs = 128, 4, 1000.0
  config.log_every, config.checkpoint_every, config.eval_batch_size = 2, 4, 256
  with pytest.MonkeyPatch.context() as mp:
    calls = []
    original = classifier.fixed_features
    mp.setattr(classifier, "fixed_features", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    summary = classifier.train_and_evaluate(config, str(tmp_path / "run"))
  assert calls == ["train", "test"]  # once per split, not per step
  assert summary["status"] == "completed" and summary["step"] == 4
  assert summary["privacy"]["epsilon"] == pytest.approx(3.0, rel=0.02)
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  weights, meta = pretrained.load(str(tmp_path / "run" / "model.msgpack"))
  assert meta.arch == arch
  assert jax.tree.map(np.shape, weights["params"]) == HEADS[arch][1]
