"""Style transfer: Gram matrices, SWAG and losses against float64 NumPy; per-channel features and the image
pyramid against direct computations; the optimisation lowers the style loss by a large factor; the run writes
images of the right shape and range; bad image paths get one-line errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tlgan import style
from tlgan.errors import UserError
from tlgan.models import ResNet18

rng = np.random.default_rng(0)


def test_gram_swag_tv_and_relative_error_vs_float64():
  f = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)
  flat = f.astype(np.float64).reshape(2, 35, 6)
  expected = np.einsum("npc,npd->ncd", flat, flat) / 35
  np.testing.assert_allclose(style.gram(jnp.asarray(f)), expected, rtol=1e-5, atol=1e-6)
  e = np.exp(flat.reshape(2, -1) - flat.reshape(2, -1).max(1, keepdims=True))
  soft = (210 * e / e.sum(1, keepdims=True)).reshape(f.shape)
  np.testing.assert_allclose(style.swag(jnp.asarray(f)), soft, rtol=1e-5)
  assert np.allclose(np.asarray(style.swag(jnp.asarray(f))).reshape(2, -1).mean(1), 1.0)  # scale-free
  x = rng.uniform(size=(1, 6, 9, 3))
  tv = np.mean((x[:, 1:] - x[:, :-1]) ** 2) + np.mean((x[:, :, 1:] - x[:, :, :-1]) ** 2)
  assert float(style.total_variation(jnp.asarray(x, jnp.float32))) == pytest.approx(tv, rel=1e-5)
  a, t = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  assert float(style.relative_sq_error(jnp.asarray(a), jnp.asarray(t))) == pytest.approx(
      np.sum((a - t) ** 2) / np.sum(t ** 2), rel=1e-5)


def test_per_channel_features_equal_each_channel_alone():
  w = rng.normal(size=(3, 5)).astype(np.float32)
  fn = lambda x: {"a": jnp.tanh(x @ w), "b": jnp.square(x[:, ::2, ::2]) @ w[:, :2]}
  x = rng.uniform(size=(2, 6, 4, 3)).astype(np.float32)
  out = style.per_channel(fn)(jnp.asarray(x))
  for name, channels in (("a", 5), ("b", 2)):
    expected = np.concatenate([np.asarray(fn(jnp.repeat(jnp.asarray(x[..., c:c + 1]), 3, -1))[name])
                               for c in range(3)], axis=-1)
    assert out[name].shape[-1] == 3 * channels
    np.testing.assert_allclose(out[name], expected, rtol=1e-6)


def test_pyramid_levels_and_render():
  levels = style.pyramid((1, 13, 20, 3), 4)
  assert [p.shape[1:3] for p in levels] == [(13, 20), (7, 10), (4, 5), (2, 3)]  # halving, rounded up
  base = jnp.asarray(rng.uniform(size=(1, 13, 20, 3)), jnp.float32)
  np.testing.assert_array_equal(style.render(base, levels), base)
  # a constant on a coarse level adds that constant everywhere; the full-size level adds itself
  fine = jnp.asarray(rng.normal(size=(1, 13, 20, 3)), jnp.float32)
  shifted = style.render(base, [fine, levels[1], jnp.full((1, 4, 5, 3), 0.25), levels[3]])
  np.testing.assert_allclose(shifted, base + fine + 0.25, rtol=1e-6, atol=1e-6)
  # the gradient reaches every level, coarse levels summing their pixels' gradients
  grads = jax.grad(lambda ls: jnp.sum(style.render(base, ls)))(levels)
  assert float(grads[0].sum()) == pytest.approx(13 * 20 * 3) and float(grads[3].sum()) == pytest.approx(13 * 20 * 3, rel=1e-4)


@pytest.fixture(scope="module")
def images():
  content = style.load_image("skimage:chelsea", 48)
  style_image = style.load_image("skimage:immunohistochemistry", 48)
  return content, style_image


@pytest.mark.parametrize("smoothing", ["none", "swag"])
@pytest.mark.slow
def test_style_loss_falls_by_a_large_factor(images, smoothing):
  content, style_image = images
  model = ResNet18(num_classes=10, width=16)
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 48, 48, 3))))(jax.random.key(0))
  variables = style.calibrate_batch_stats(model, variables, [content, style_image])
  loss = style.make_loss(style.resnet_features(model, variables), content, style_image,
                         content_layers=("layer2",), style_layers=("stem", "layer1", "layer2"),
                         content_weight=1.0, style_weight=1000.0, tv_weight=10.0, smoothing=smoothing)
  tx = style.make_optimizer("lbfgs", 0.0)
  step = style.make_step(loss, tx)
  x = style.initial_image("content", content, 0)
  before = float(jax.jit(loss)(x)[1]["style"])
  state = tx.init(x)
  for _ in range(40):
    x, state, _, parts = step(x, state)
  after = float(parts["style"])
  assert after < before / 10, (before, after)


@pytest.mark.slow
def test_cli_writes_stylized_side_by_side_and_curve(tmp_path):
  from tests.helpers import compile_fast_env, run_cli
  workdir = tmp_path / "style"
  result = run_cli("--config=configs/style.py:smoke", f"--workdir={workdir}", env=compile_fast_env())
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(workdir / "summary.json"))
  content = style.load_image("skimage:chelsea", 64)
  out = np.asarray(Image.open(workdir / "stylized.png"))
  assert out.shape == content.shape and out.dtype == np.uint8 and out.std() > 0
  side = np.asarray(Image.open(workdir / "side_by_side.png"))
  assert side.shape[1] > 2 * side.shape[0]  # content, style and the result in a row
  assert list(summary["runs"]) == ["none"] and summary["smoothing"] == "none"  # auto: random features -> none
  assert os.path.getsize(workdir / "loss_curve.png") > 0
  for run in summary["runs"].values():
    assert run["style_loss_reduction"] > 1.0 and np.isfinite(run["final"]["content"])
  assert summary["features"].startswith("resnet18") and summary["sizes"] == [32, 64]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert max(r["step"] for r in rows) == 12  # 6 steps at each of the two sizes


@pytest.mark.slow
def test_offline_features_are_the_fashion_network_per_channel(tmp_path, images):
  """features='fashion_mnist' loads the shipped Fashion-MNIST metric network and runs it per colour channel;
  'imagenet' without weights is a one-line error."""
  from configs import style as style_config
  from tlgan import feature_networks, pretrained
  from tlgan.trainers import style as trainer
  variables, meta = pretrained.load(feature_networks.shipped_weights("fashion_mnist"))
  width = variables["params"]["conv1"]["kernel"].shape[-1]
  model = pretrained.model_for("resnet18", 10, width=width, stem=meta.stem)
  config = style_config.get_config("smoke")
  config.features = "fashion_mnist"
  content, style_image = images
  features, description, kind = trainer.feature_network(config, content, style_image)
  assert kind == "fashion_mnist" and "per colour channel" in description
  out = features(jnp.asarray(content)[None])
  direct = style.resnet_features(model, variables)(jnp.repeat(jnp.asarray(content)[None, ..., 1:2], 3, -1))
  green = out["layer1"][..., width:2 * width]  # layer1 has `width` channels per colour channel
  np.testing.assert_allclose(green, direct["layer1"], rtol=1e-5, atol=1e-5)
  config.features, config.weights = "imagenet", str(tmp_path / "missing.msgpack")
  with pytest.raises(UserError, match="needs .*missing.msgpack: convert it with python -m tlgan.pretrained"):
    trainer.feature_network(config, content, style_image)


def test_image_paths_are_checked(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    style.load_image(str(tmp_path / "none.png"), 64)
  (tmp_path / "text.png").write_text("not an image")
  with pytest.raises(UserError, match="is not an image that Pillow can read"):
    style.load_image(str(tmp_path / "text.png"), 64)
  with pytest.raises(UserError, match="has no image 'nope'"):
    style.load_image("skimage:nope", 64)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_read_at_their_depth_not_clipped_to_white(tmp_path, mode):
  """A 16-bit PNG (Pillow mode I;16 or I) reads as the same picture as its 8-bit version (convert('RGB') clips
  every value above 255: an almost white image)."""
  ramp8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64
  Image.fromarray(ramp8).save(tmp_path / "ramp8.png")
  ramp16 = ramp8.astype(np.uint16) * 257  # the same levels on 0..65535
  name = "ramp16.png" if mode == "I;16" else "ramp32.tif"  # (Pillow writes 32-bit integer images as TIFF only)
  Image.fromarray(ramp16 if mode == "I;16" else ramp16.astype(np.int32)).save(tmp_path / name)
  assert Image.open(tmp_path / name).mode == mode
  eight, sixteen = style.load_image(str(tmp_path / "ramp8.png"), 64), style.load_image(str(tmp_path / name), 64)
  np.testing.assert_allclose(sixteen, eight, atol=1.0 / 255)
  assert sixteen.mean() < 0.6
