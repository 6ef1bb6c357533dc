"""tlgan's ResNet equals torchvision's (the oracle), and the converter refuses what does not fit."""

import functools
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from benchmarks.torch_reference import perturbed  # BatchNorms that are not the identity
from tlgan import pretrained
from tlgan.errors import UserError
from tlgan.models.resnet import ResNet, ResNet18, ResNet50

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def torch_resnet18():
  torch.manual_seed(0)
  return perturbed(torchvision.models.resnet18()).eval()


@pytest.fixture(scope="module")
def converted18(torch_resnet18):
  return pretrained.from_torchvision(torch_resnet18.state_dict(), "resnet18")


def _inputs(size, n=2, seed=None):
  x = np.random.default_rng(seed if seed is not None else size).normal(size=(n, 3, size, size)).astype(np.float32)
  return x, jnp.asarray(x.transpose(0, 2, 3, 1))


def _apply(model, variables, x, **kwargs):
  """model.apply as one compiled program (eagerly, a ResNet is ~100 separately compiled operations)."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


@pytest.mark.parametrize("size,impl", [(224, "auto"), (225, "auto"), (64, "auto"), (33, "auto"),
                                       (64, "xla"), (33, "xla"), (33, "matmul")])
def test_eval_logits_and_features_equal_torchvision(torch_resnet18, converted18, size, impl):
  x_torch, x = _inputs(size)
  model = ResNet18(num_classes=1000, conv_impl=impl)
  with torch.no_grad():
    ref_logits = torch_resnet18(torch.from_numpy(x_torch)).numpy()
    trunk = torch.nn.Sequential(*list(torch_resnet18.children())[:-1])
    ref_features = trunk(torch.from_numpy(x_torch)).flatten(1).numpy()
  logits = _apply(model, converted18, x, train=False)
  features = _apply(model, converted18, x, method=model.features)
  assert np.abs(np.asarray(logits) - ref_logits).max() <= 1e-4
  assert np.abs(np.asarray(features) - ref_features).max() <= 1e-4


def test_train_mode_outputs_and_running_statistics(converted18):
  torch.manual_seed(1)
  tm = perturbed(torchvision.models.resnet18(), seed=1).train()
  variables = pretrained.from_torchvision(tm.state_dict(), "resnet18")
  x_torch, x = _inputs(64, n=4)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x_torch)).numpy()
  model = ResNet18(num_classes=1000)
  out, updated = _apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert np.abs(np.asarray(out) - ref).max() <= 1e-4
  # torch updates running_var with the unbiased batch variance; tlgan's BatchNorm does the same.
  after = pretrained.from_torchvision(tm.state_dict(), "resnet18")["batch_stats"]
  for ours, theirs in zip(jax.tree.leaves(updated["batch_stats"]), jax.tree.leaves(after)):
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-5)


def test_groupnorm_resnet_equals_torchvision_with_groupnorm_in_train_and_eval_mode():
  torch.manual_seed(3)
  tm = torchvision.models.resnet18(norm_layer=lambda c: torch.nn.GroupNorm(32, c))
  with torch.no_grad():  # affine parameters that are not the identity
    for m in tm.modules():
      if isinstance(m, torch.nn.GroupNorm):
        m.weight.normal_(1, 0.2)
        m.bias.normal_(0, 0.2)
  variables = pretrained.from_torchvision(tm.state_dict(), "resnet18", norm="group")
  assert set(variables) == {"params"}  # GroupNorm has no running statistics
  x_torch, x = _inputs(64, n=3, seed=3)
  model = ResNet18(num_classes=1000, norm="group")
  for mode in (tm.train(), tm.eval()):
    with torch.no_grad():
      ref = mode(torch.from_numpy(x_torch)).numpy()
    for train in (True, False):
      out = _apply(model, variables, x, train=train)
      assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_privacy_safe_norms_never_mix_examples_in_training_mode():
  """One example's output and gradient do not depend on the other examples of the batch (what per-example
  clipping needs); BatchNorm in training mode is the counter-example that makes the test able to fail."""
  x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 16, 16, 3)).astype(np.float32))
  other = x.at[1:].set(-x[1:] * 3.0)
  for norm, expect_equal in (("group", True), ("frozen_batch", True), ("batch", False)):
    model = ResNet(stage_sizes=(1, 1), num_classes=10, norm=norm, width=8, norm_groups=4, stem="cifar")
    variables = model.init(jax.random.key(0), x[:1])

    @jax.jit
    def first_output_and_grads(images):
      def first(params):
        out, updated = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return out[0].sum(), (out[0], updated)
      return jax.grad(first, has_aux=True)(variables["params"])

    (g1, (out1, updated)), (g2, (out2, _)) = first_output_and_grads(x), first_output_and_grads(other)
    same = np.allclose(out1, out2, atol=1e-6) and all(
        np.allclose(a, b, atol=1e-6) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
    assert same == expect_equal, norm
    if norm == "frozen_batch":  # frozen BatchNorm keeps its statistics in training mode
      for a, b in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updated["batch_stats"])):
        np.testing.assert_array_equal(a, b)


def test_groupnorm_refuses_a_width_its_groups_do_not_divide():
  with pytest.raises(ValueError, match="12 channels do not split into 8 groups"):
    ResNet18(num_classes=10, norm="group", width=12, norm_groups=8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.slow
def test_resnet50_bottleneck_equals_torchvision():
  torch.manual_seed(2)
  tm = perturbed(torchvision.models.resnet50(), seed=2).eval()
  variables = pretrained.from_torchvision(tm.state_dict(), "resnet50")
  x_torch, x = _inputs(64, n=1)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x_torch)).numpy()
  out = ResNet50(num_classes=1000).apply(variables, x, train=False)
  assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_conversion_refuses_what_does_not_fit(torch_resnet18):
  sd = torch_resnet18.state_dict()
  with pytest.raises(pretrained.ConversionError, match="layer1.2.conv1.weight' has no place"):
    pretrained.from_torchvision(torchvision.models.resnet34().state_dict(), "resnet18")
  bad = dict(sd)
  bad["layer3.0.conv1.weight"] = torch.zeros(256, 128, 5, 5)
  with pytest.raises(pretrained.ConversionError, match=r"layer3.0.conv1.weight' has shape \(256, 128, 5, 5\)"):
    pretrained.from_torchvision(bad, "resnet18")
  incomplete = {k: v for k, v in sd.items() if not k.startswith("layer4.1.bn2")}
  with pytest.raises(pretrained.ConversionError, match="nothing for .*layer4_1/bn2"):
    pretrained.from_torchvision(incomplete, "resnet18")
  with pytest.raises(pretrained.ConversionError, match="not a torchvision resnet18 state dict"):
    pretrained.from_torchvision({"weight": torch.zeros(3)}, "resnet18")


class _Payload:
  def __reduce__(self):
    return (os.system, ("echo pwned > /tmp/tlgan_pwned",))


def test_pickled_code_is_refused(tmp_path):
  path = str(tmp_path / "evil.pth")
  with open(path, "wb") as f:
    pickle.dump({"fc.weight": _Payload()}, f)
  with pytest.raises(UserError, match="refused by torch.load\\(weights_only=True\\)"):
    pretrained.load_torch_file(path)
  assert not os.path.exists("/tmp/tlgan_pwned")


def test_cli_converts_a_local_file_and_round_trips(torch_resnet18, converted18, tmp_path):
  src, out = str(tmp_path / "resnet18-local.pth"), str(tmp_path / "w" / "resnet18.msgpack")
  torch.save(torch_resnet18.state_dict(), src)
  assert pretrained.main(["--arch=resnet18", f"--output={out}", f"--torch-file={src}"]) == 0
  variables, meta = pretrained.load(out)
  assert meta.arch == "resnet18" and meta.sha256 == pretrained.sha256_of(src)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(converted18)):
    np.testing.assert_array_equal(a, b)
  assert pretrained.main(["--arch=resnet18", f"--output={out}", f"--torch-file={tmp_path}/none.pth"]) == 2


@pytest.mark.slow
def test_merge_keeps_the_new_head_and_names_mismatches(converted18):
  fresh = jax.tree.map(np.asarray, ResNet18(num_classes=10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  merged, not_loaded = pretrained.merge_pretrained(fresh, converted18, not_loaded=("fc",))
  assert not_loaded == ("params/fc/bias", "params/fc/kernel")
  np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["layer1_0"]["conv1"]["kernel"],
                                converted18["params"]["layer1_0"]["conv1"]["kernel"])
  with pytest.raises(pretrained.ConversionError, match=r"params/fc/(bias has shape \(1000,\)|kernel has shape \(512, 1000\))"):
    pretrained.merge_pretrained(fresh, converted18, not_loaded=())
  cifar = jax.tree.map(np.asarray, ResNet18(num_classes=10, stem="cifar").init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  with pytest.raises(pretrained.ConversionError, match="params/conv1/kernel"):
    pretrained.merge_pretrained(cifar, converted18, not_loaded=("fc",))
  merged, not_loaded = pretrained.merge_pretrained(cifar, converted18, not_loaded=("fc", "conv1"))
  assert "params/conv1/kernel" in not_loaded


def test_download_offline_and_checksum_errors(tmp_path, monkeypatch):
  import urllib.request

  def offline(url, filename):
    raise OSError("network is unreachable")
  monkeypatch.setattr(urllib.request, "urlretrieve", offline)
  with pytest.raises(UserError, match="could not download .*resnet18-f37072fd.pth.*pass --torch-file=PATH"):
    pretrained.download("resnet18", cache_dir=str(tmp_path))
  assert os.listdir(tmp_path) == []  # no partial file left behind
  (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"not the weights")  # a cached file with another hash
  with pytest.raises(UserError, match="expected f37072fd"):
    pretrained.download("resnet18", cache_dir=str(tmp_path))
