"""Style transfer: Gram matrices, SWAG and losses against float64 NumPy; the optimisation lowers the style loss
by a large factor; the run writes images of the right shape and range; bad image paths get one-line errors."""

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


@pytest.fixture(scope="module")
def images():
  content = style.load_image("skimage:chelsea", 48)
  style_image = style.load_image("skimage:immunohistochemistry", 48)
  return content, style_image


@pytest.mark.parametrize("smoothing", ["none", "swag"])
def test_style_loss_falls_by_a_large_factor(images, smoothing):
  content, style_image = images
  model = ResNet18(num_classes=10, width=16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
  variables = style.calibrate_batch_stats(model, variables, [content, style_image])
  loss = style.make_loss(style.resnet_features(model, variables), content, style_image,
                         content_layers=("layer2",), style_layers=("stem", "layer1", "layer2"),
                         content_weight=1.0, style_weight=1000.0, tv_weight=10.0, smoothing=smoothing)
  tx = style.make_optimizer("lbfgs", 0.0)
  step = style.make_step(loss, tx)
  x = style.initial_image("content", content, 0)
  before = float(loss(x)[1]["style"])
  state = tx.init(x)
  for _ in range(40):
    x, state, _, parts = step(x, state)
  after = float(parts["style"])
  assert after < before / 10, (before, after)


def test_cli_writes_stylized_side_by_side_and_curve(tmp_path):
  from tests.conftest import run_cli
  workdir = tmp_path / "style"
  result = run_cli("--config=configs/style.py:smoke", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(workdir / "summary.json"))
  content = style.load_image("skimage:chelsea", 64)
  out = np.asarray(Image.open(workdir / "stylized.png"))
  assert out.shape == content.shape and out.dtype == np.uint8 and out.std() > 0
  side = np.asarray(Image.open(workdir / "side_by_side.png"))
  assert side.shape[1] > 3 * side.shape[0] - 64  # content, style and two results in a row
  assert os.path.getsize(workdir / "loss_curve.png") > 0
  for run in summary["runs"].values():
    assert run["style_loss_reduction"] > 1.0 and np.isfinite(run["final"]["content"])
  assert summary["features"].startswith("resnet18")


def test_image_paths_are_checked(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    style.load_image(str(tmp_path / "none.png"), 64)
  (tmp_path / "text.png").write_text("not an image")
  with pytest.raises(UserError, match="is not an image that Pillow can read"):
    style.load_image(str(tmp_path / "text.png"), 64)
  with pytest.raises(UserError, match="has no image 'nope'"):
    style.load_image("skimage:nope", 64)
