"""Private feature preconditioning for the ScatterNet models (model.precondition=channels): the Gaussian release
of the features' channel second moment (`privacy.noisy_second_moment`), its sensitivity bound on adversarial
inputs, the whitening (`scattering.channel_whitening`) against its defining equation in float64, the model
applying W, the accounting that composes the release with the steps, the config's refusals, and a run on real
digits that resumes without releasing again."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlgan import privacy
from tlgan.errors import ConfigError
from tlgan.models import scattering
from tlgan.pretrained import IMAGENET_MEAN, IMAGENET_STD


def _exact_moment(features, bound):
  """The definition, one example at a time in float64: each example scaled to squared norm <= bound."""
  n, c = len(features), features.shape[-1]
  total = np.zeros((c, c))
  for x in np.asarray(features, np.float64):
    z = x.reshape(-1, c)
    z = z * min(1.0, np.sqrt(bound / np.sum(z * z)))
    for row in z:
      total += np.outer(row, row)
  return total, n * z.shape[0]


def test_without_noise_the_release_is_the_clipped_second_moment():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(9, 3, 2, 5)).astype(np.float32)
  features[4] *= 10.0  # far above the bound: scaled down to it
  bound = 30.0
  assert np.sum(features[4].astype(np.float64) ** 2) > 10 * bound
  total, count = _exact_moment(features, bound)
  ours = privacy.noisy_second_moment(features, norm_bound_sq=bound, noise_multiplier=0.0, seed=0, chunk=4)
  np.testing.assert_allclose(ours, total / count, rtol=1e-12, atol=1e-12)


def _adversarial_images(size=28):
  """Images a GroupNorm bound could fail on: constant (zero variance), black, white, one bright pixel, a
  checkerboard, values far outside [0, 1], noise; in tlgan's normalised input units."""
  rng = np.random.default_rng(1)
  pixels = [np.zeros((size, size)), np.ones((size, size)), np.full((size, size), 0.5),
            np.pad(np.ones((1, 1)), ((13, size - 14), (13, size - 14))),
            np.indices((size, size)).sum(0) % 2, 1e6 * (np.indices((size, size)).sum(0) % 2),
            -1e3 * rng.random((size, size)), rng.random((size, size)), 1e-30 * rng.random((size, size))]
  pixels = np.stack(pixels)[..., None].astype(np.float32)
  return (pixels - IMAGENET_MEAN[0]) / IMAGENET_STD[0]


def test_one_example_moves_the_released_sum_by_at_most_the_feature_count():
  """The sensitivity the accounting assumes: GroupNorm'd scattering features of any image have squared norm at
  most their count (the analytic bound, not the data's), and adding one example to a dataset moves the
  un-noised sum S by at most that in Frobenius norm, even for features the bound does not hold for."""
  model = scattering.ScatterLinear()
  features = np.asarray(jax.jit(model.fixed_features)(jnp.asarray(_adversarial_images())))
  count = features[0].size  # 7 x 7 x 81
  norms = np.sum(features.astype(np.float64) ** 2, axis=(1, 2, 3))
  assert np.all(norms <= count * (1 + 1e-5)), norms / count
  assert norms.max() > 0.5 * count  # the bound is nearly reached: it is the right scale
  base = np.random.default_rng(2).normal(size=(5, *features.shape[1:])).astype(np.float32)
  s = lambda f: privacy.noisy_second_moment(f, norm_bound_sq=count, noise_multiplier=0.0, seed=0) * (
      len(f) * 49)
  for extra in [*features, 50.0 * features[-3]]:  # the last: 2500x the bound before scaling
    moved = s(np.concatenate([base, extra[None]])) - s(base)
    assert np.linalg.norm(moved) <= count * (1 + 1e-9)


def test_the_release_noise_has_the_stated_std_is_symmetric_and_a_function_of_the_seed():
  n, positions, c, r, bound = 10, 4, 120, 3.0, 7.0
  zeros = np.zeros((n, 2, 2, c), np.float32)
  noise = privacy.noisy_second_moment(zeros, norm_bound_sq=bound, noise_multiplier=r, seed=5) * n * positions
  np.testing.assert_array_equal(noise, noise.T)
  upper = noise[np.triu_indices(c, 1)]  # 7,140 independent entries
  assert np.std(upper) == pytest.approx(r * bound, rel=0.03)
  assert abs(np.mean(upper)) < 4 * r * bound / np.sqrt(len(upper))
  assert np.std(np.diag(noise)) == pytest.approx(r * bound, rel=0.25)  # the diagonal is noised too
  assert abs(np.corrcoef(upper[:-1], upper[1:])[0, 1]) < 0.05  # independent entries
  # the same seed, the same noise, whatever the data; another seed, other noise
  data = np.random.default_rng(3).normal(size=zeros.shape).astype(np.float32)
  with_data = privacy.noisy_second_moment(data, norm_bound_sq=1e9, noise_multiplier=r, seed=5) * n * positions
  exact = privacy.noisy_second_moment(data, norm_bound_sq=1e9, noise_multiplier=0.0, seed=5) * n * positions
  np.testing.assert_allclose(with_data - exact, noise * 1e9 / bound, rtol=1e-6)
  other = privacy.noisy_second_moment(zeros, norm_bound_sq=bound, noise_multiplier=r, seed=6)
  assert not np.allclose(other * n * positions, noise)


@pytest.mark.parametrize("kwargs,message", [
    (dict(norm_bound_sq=0.0), "norm_bound_sq=0.0 must be a finite number > 0"),
    (dict(norm_bound_sq=float("inf")), "norm_bound_sq=inf must be"),
    (dict(noise_multiplier=-1.0), "noise_multiplier=-1.0 must be a finite number >= 0"),
    (dict(noise_multiplier=float("nan")), "noise_multiplier=nan must be"),
])
def test_a_release_refuses_a_bound_or_noise_it_cannot_honour(kwargs, message):
  args = {**dict(norm_bound_sq=1.0, noise_multiplier=1.0, seed=0), **kwargs}
  with pytest.raises(ValueError, match=message):
    privacy.noisy_second_moment(np.ones((2, 1, 1, 3), np.float32), **args)
  with pytest.raises(ValueError, match="NaN or inf"):
    privacy.noisy_second_moment(np.full((2, 1, 1, 3), np.nan, np.float32), norm_bound_sq=1.0, noise_multiplier=1.0,
                                seed=0)


def test_whitening_solves_its_defining_equation_in_float64():
  """W^2 (M+ + m I) = 2m I with M+ the matrix with negative eigenvalues set to 0 and m their mean; W is
  symmetric; W's eigenvalues lie in (0, sqrt(2)]."""
  rng = np.random.default_rng(4)
  a = rng.normal(size=(12, 5))
  m = a @ a.T - 2.0 * np.eye(12)  # rank 5, then shifted: 7 negative eigenvalues
  lam, u = np.linalg.eigh(m)
  assert (lam < 0).sum() == 7
  m_plus = (u * np.maximum(lam, 0)) @ u.T
  shrink = np.trace(m_plus) / 12
  w = scattering.channel_whitening(m).astype(np.float64)
  np.testing.assert_allclose(w, w.T, atol=1e-6)
  np.testing.assert_allclose(w @ w @ (m_plus + shrink * np.eye(12)), 2 * shrink * np.eye(12), atol=2e-5 * shrink)
  eig = np.linalg.eigvalsh(w)
  assert eig.min() > 0 and eig.max() <= np.sqrt(2) + 1e-6
  np.testing.assert_array_equal(scattering.channel_whitening(-np.eye(4)), np.eye(4))  # nothing left: identity
  with pytest.raises(ValueError, match="finite square matrix"):
    scattering.channel_whitening(np.full((3, 3), np.nan))
  with pytest.raises(ValueError, match="finite square matrix"):
    scattering.channel_whitening(np.ones((3, 4)))


@pytest.mark.parametrize("arch", ["scatter_linear", "scatter_cnn"])
def test_the_model_applies_w_at_every_position_and_weights_holding_w_are_never_applied_without_it(arch):
  """On images the model multiplies every position's fixed features by W (by hand in float64: the same logits);
  a model built without the flag applies the W its variables hold; with precomputed=True the input is the
  front end's output, W included (the DP trainer applies W once per image)."""
  cls = {"scatter_linear": scattering.ScatterLinear, "scatter_cnn": scattering.ScatterCNN}[arch]
  model = cls(num_classes=4, precondition=True)
  images = jnp.asarray(_adversarial_images()[-3:])  # noise-like images, 28x28x1
  variables = jax.jit(model.init)(jax.random.key(0), images)
  np.testing.assert_array_equal(variables["batch_stats"][scattering.PRECONDITION], np.eye(81))
  rng = np.random.default_rng(5)
  a = rng.normal(size=(81, 81)) / 9
  w = (a + a.T).astype(np.float32)
  with_w = {"params": variables["params"], "batch_stats": {scattering.PRECONDITION: jnp.asarray(w)}}
  logits = jax.jit(model.apply)(with_w, images)
  fixed = np.asarray(jax.jit(model.fixed_features)(images), np.float64)
  by_hand = np.einsum("nhwc,cd->nhwd", fixed, w).astype(np.float32)  # W applied by hand
  pre = model.clone(precomputed=True)
  np.testing.assert_allclose(logits, pre.apply(with_w, jnp.asarray(by_hand)), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(pre.apply(with_w, jnp.asarray(by_hand)), pre.apply(variables, jnp.asarray(by_hand)))
  assert not np.allclose(logits, jax.jit(model.apply)(variables, images), atol=1e-3)  # W matters
  # a model built without the flag (e.g. from exported weights' arch alone) still applies the W it is given
  plain = cls(num_classes=4)
  np.testing.assert_array_equal(jax.jit(plain.apply)(with_w, images), logits)
  assert "batch_stats" not in jax.jit(plain.init)(jax.random.key(0), images)
  np.testing.assert_array_equal(jax.jit(pre.init)(jax.random.key(0), jnp.zeros((1, 7, 7, 81)))["batch_stats"][
      scattering.PRECONDITION], np.eye(81))  # a precomputed model declares W too (the trainer's state holds it)


# --- the config and the accounting ---------------------------------------------------------------------------

def _config(variants="digits,scatternet,whitened", **fields):
  from configs import private as private_config
  from tests.helpers import override
  return override(private_config.get_config(variants), **fields)


@pytest.mark.parametrize("variants,fields,message", [
    ("digits,smoke,whitened", {},
     r"model.precondition=channels whitens scattering features: it applies to "
     r"model.arch=scatter_linear or scatter_cnn, not resnet18; set model.precondition=none"),
    ("digits,scatternet,whitened", {"dp.enabled": False}, r"model.precondition=channels is computed by the DP "
                                                          r"trainer: set dp.enabled=True"),
    ("digits,scatternet,whitened", {"augment.flip": True}, r"needs the features computed once per image, without "
                                                           r"augmentation: set augment.crop_padding=0"),
    ("digits,scatternet,whitened", {"augment.crop_padding": 2}, r"set augment.crop_padding=0"),
    ("digits,scatternet,whitened", {"model.precondition_noise": 0.0},
     r"model.precondition_noise=0 releases the private features' second moment without noise in a private run"),
    ("digits,scatternet,whitened", {"model.precondition_noise": 1e-3},
     r"model.precondition_noise=0.001 is outside \[0.1, 10000\]"),
    ("digits,scatternet,whitened,nonprivate", {"dp.noise_multiplier": 1e5},
     r"dp.noise_multiplier=100000 is outside \[0.1, 10000\]"),
    ("digits,scatternet,whitened,eps1", {"model.precondition_noise": 0.0, "dp.target_epsilon": 0.0,
                                         "dp.noise_multiplier": 1.0}, r"model.precondition_noise=0 releases"),
])
def test_a_whitened_config_refuses_what_it_cannot_do_in_one_line(variants, fields, message):
  from tlgan.trainers import classifier
  config = _config(variants, **fields)
  with pytest.raises(ConfigError, match=message) as e:
    classifier.check_config(config)
  assert "\n" not in str(e.value)


def test_the_plan_composes_the_release_with_the_steps():
  from tlgan.trainers import classifier, private
  config = _config(batch_size=128)
  classifier.check_config(config)
  kw = dict(dataset_size=1258, total_steps=30, largest_trainable=1000)
  whitened = private.plan(config, **kw)
  plain = private.plan(_config("digits,scatternet", batch_size=128), **kw)
  assert whitened.dp.releases == (20.0,) and plain.dp.releases == ()
  assert whitened.dp.epsilon(30) == pytest.approx(3.0, rel=2e-3) and whitened.dp.epsilon(30) <= 3.0
  assert whitened.dp.noise_multiplier > plain.dp.noise_multiplier  # the steps get what the release leaves
  alone = privacy.DpSgd(**{**whitened.dp.__dict__, "releases": ()})
  assert alone.epsilon(30) < 3.0 - 1e-3  # the release is counted
  assert whitened.summary(30)["releases_before_training"] == [20.0]
  # the non-private column: exact statistics, no release, epsilon infinite
  nonprivate = _config("digits,scatternet,whitened,nonprivate", batch_size=128)
  classifier.check_config(nonprivate)
  p = private.plan(nonprivate, **kw)
  assert p.dp.releases == () and p.summary(30)["epsilon"] is None


# --- a run ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_whitened_dp_run_releases_once_exports_w_and_resumes_bit_exact(tmp_path, monkeypatch):
  """configs/private.py:digits,scatternet,whitened, 4 steps on real digits: W is the release of the training
  features (computed once), the exported weights hold it, epsilon counts it; a run resumed from step 2 takes W
  from the checkpoint (releasing nothing again) and ends with the same weights, bit for bit."""
  from tlgan import pretrained
  from tlgan.trainers import classifier, private
  config = _config(**{"batch_size": 128, "num_steps": 4, "eval_every_epochs": 1000.0, "log_every": 2,
                      "checkpoint_every": 2, "keep_checkpoints": 5, "eval_batch_size": 256})
  released = []
  original = private.channel_preconditioner
  monkeypatch.setattr(private, "channel_preconditioner",
                      lambda features, **k: released.append((features.copy(), k)) or original(features, **k))
  ref = str(tmp_path / "reference")
  summary = classifier.train_and_evaluate(config, ref)
  assert summary["status"] == "completed" and len(released) == 1
  features, kwargs = released[0]
  assert features.shape == (1258, 7, 7, 81) and kwargs == {"noise_multiplier": 20.0, "seed": 0}
  assert summary["privacy"]["releases_before_training"] == [20.0]
  assert summary["privacy"]["epsilon"] == pytest.approx(3.0, rel=0.02)
  weights, _ = pretrained.load(os.path.join(ref, "model.msgpack"))
  w = weights["batch_stats"][scattering.PRECONDITION]
  expected = scattering.channel_whitening(privacy.noisy_second_moment(features, norm_bound_sq=3969.0,
                                                                      noise_multiplier=20.0, seed=0))
  np.testing.assert_array_equal(w, expected)
  assert not np.allclose(w, np.eye(81), atol=0.05)

  resumed = str(tmp_path / "resumed")
  shutil.copytree(ref, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
  for name in ("summary.json", "model.msgpack"):
    os.remove(os.path.join(resumed, name))
  monkeypatch.setattr(private, "channel_preconditioner", lambda *a, **k: pytest.fail("released twice"))
  summary = classifier.train_and_evaluate(config, resumed)
  assert summary["resumed_from_step"] == 2 and summary["status"] == "completed"
  again, _ = pretrained.load(os.path.join(resumed, "model.msgpack"))
  for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(resumed, "summary.json")) as f:
    assert json.load(f)["privacy"]["epsilon"] == summary["privacy"]["epsilon"]
