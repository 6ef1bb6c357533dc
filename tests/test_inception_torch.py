"""tlgan's Inception-v3 FID network equals pytorch-fid's own module (random weights), at 299 and resized."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
inception_mod = pytest.importorskip("pytorch_fid.inception")

import jax.numpy as jnp

from tlgan import pretrained
from tlgan.models.inception import InceptionV3FID


@pytest.fixture(scope="module")
def torch_fid_net():
  """pytorch-fid's own InceptionV3 module with random weights: its loader would download the FID weights,
  so the download and the load are stubbed out while it is built (the layers keep torch's random init)."""
  torch.manual_seed(0)
  real_loader, real_load = inception_mod.load_state_dict_from_url, torch.nn.Module.load_state_dict
  inception_mod.load_state_dict_from_url = lambda *args, **kwargs: None
  torch.nn.Module.load_state_dict = lambda self, *args, **kwargs: None
  try:
    net = inception_mod.InceptionV3([3], resize_input=True, normalize_input=True)
  finally:
    inception_mod.load_state_dict_from_url, torch.nn.Module.load_state_dict = real_loader, real_load
  with torch.no_grad():  # BatchNorm that is not the identity
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=gen))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
  return net.eval()


# pytorch-fid's InceptionV3 puts torchvision's layers, in this order, into four nn.Sequential blocks.
BLOCK_LAYERS = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
]


def _state_dict_with_fc(net):
  """The state dict as the FID weights file names it (torchvision's layer names), plus the
  1008-way fc that the file has (pytorch-fid's module leaves it out)."""
  sd = {}
  for key, value in net.state_dict().items():
    _, block, index, *rest = key.split(".")  # 'blocks.<block>.<index in the block>.<rest>'
    sd[".".join([BLOCK_LAYERS[int(block)][int(index)], *rest])] = value
  gen = torch.Generator().manual_seed(2)
  sd["fc.weight"] = torch.randn(1008, 2048, generator=gen) * 0.01
  sd["fc.bias"] = torch.randn(1008, generator=gen) * 0.01
  return sd


@pytest.mark.slow
@pytest.mark.parametrize("size", [299, 64])
def test_features_equal_pytorch_fid(torch_fid_net, size):
  variables = pretrained.from_torchvision(_state_dict_with_fc(torch_fid_net), pretrained.INCEPTION_FID)
  x = np.random.default_rng(size).uniform(0, 1, (2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    ref = torch_fid_net(torch.from_numpy(x))[0].flatten(1).numpy()
  feats, logits = InceptionV3FID().apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.abs(np.asarray(feats) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
