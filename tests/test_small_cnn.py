"""Tramer & Boneh's tanh CNN (tlgan.models.small_cnn) equals the same network written in PyTorch (the oracle),
and DP-SGD takes it as it is (no normalisation layer to refuse)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tlgan.models.small_cnn import TanhCNN

torch.set_num_threads(2)


def _torch_copy(params):
  """PyTorch's layers (as Tramer & Boneh write them: NCHW, flattening channel-major) holding flax's weights."""
  nn = torch.nn
  net = nn.Sequential(nn.Conv2d(1, 16, 8, stride=2, padding=2), nn.Tanh(), nn.MaxPool2d(2, stride=1),
                      nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, stride=1), nn.Flatten(),
                      nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 10))
  p = jax.tree.map(np.asarray, params)
  dense = p["dense"]["kernel"].reshape(4, 4, 32, 32).transpose(2, 0, 1, 3).reshape(512, 32)  # rows (h,w,c) -> (c,h,w)
  weights = {"0.weight": p["conv1"]["kernel"].transpose(3, 2, 0, 1), "0.bias": p["conv1"]["bias"],
             "3.weight": p["conv2"]["kernel"].transpose(3, 2, 0, 1), "3.bias": p["conv2"]["bias"],
             "7.weight": dense.T, "7.bias": p["dense"]["bias"],
             "9.weight": p["fc"]["kernel"].T, "9.bias": p["fc"]["bias"]}
  net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
  return net.eval()


def test_logits_equal_pytorch_and_parameter_count():
  model = TanhCNN(num_classes=10)
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  params = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"]
  params = jax.tree.map(lambda a: a * 3.0, params)  # larger weights: tanh and max-pool away from their linear part
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(x)))
  with torch.no_grad():
    theirs = _torch_copy(params)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  assert ours.shape == (4, 10)
  np.testing.assert_allclose(ours, theirs, atol=1e-5 * np.abs(theirs).max(), rtol=0)
  assert sum(a.size for a in jax.tree.leaves(params)) == 26_010  # Tramer & Boneh's count


def test_dp_step_takes_it_and_batchnorm_refusal_does_not_apply():
  from configs import private
  from tlgan.trainers import classifier
  config = private.get_config("tramer_boneh")
  config.model.norm = "batch"  # irrelevant to a network without normalisation layers: not refused
  classifier.check_config(config)
  state, _ = classifier.build_state(config, 10, total_steps=10, epoch_steps=5)
  assert not state.bn_train and not state.batch_stats
  assert sorted(state.params) == ["conv1", "conv2", "dense", "fc"]
