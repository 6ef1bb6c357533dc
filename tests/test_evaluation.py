"""FD, KID and IS against peer implementations (pytorch-fid, torch-fidelity) and float64 formulas."""

import numpy as np
import pytest

from tlgan import evaluation


def _random_stats(rng, d, n=400):
  a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
  return a.mean(0), np.cov(a, rowvar=False)


def test_streaming_stats_equal_numpy():
  rng = np.random.default_rng(0)
  feats = rng.normal(3.0, 2.0, size=(1000, 7)).astype(np.float32)
  stats = evaluation.FeatureStats(7)
  for chunk in np.array_split(feats, 13):
    stats.update(chunk)
  np.testing.assert_allclose(stats.mean, feats.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


def test_frechet_distance_equals_pytorch_fid(monkeypatch):
  fid_score = pytest.importorskip("pytorch_fid.fid_score")
  import inspect
  from scipy import linalg
  if "disp" not in inspect.signature(linalg.sqrtm).parameters:
    # pytorch-fid 0.3.0 calls sqrtm(..., disp=False), which SciPy 1.18 removed; the old call returned
    # (root, error estimate), and pytorch-fid ignores the estimate.
    sqrtm = linalg.sqrtm
    monkeypatch.setattr(fid_score.linalg, "sqrtm", lambda a, disp=True, **kw: (sqrtm(a, **kw), 0.0) if not disp
                        else sqrtm(a, **kw))
  rng = np.random.default_rng(1)
  for d in (2, 16, 64):
    mu1, s1 = _random_stats(rng, d)
    mu2, s2 = _random_stats(rng, d)
    ours = evaluation.frechet_distance(mu1, s1, mu2, s2)
    theirs = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - theirs) <= 1e-6 * abs(theirs)
    assert abs(evaluation.frechet_distance(mu1, s1, mu1, s1)) < 1e-6 * np.trace(s1)


def test_frechet_distance_of_gaussians_closed_form():
  # Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
  expected = 9.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
  assert evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_refuses_a_large_imaginary_part():
  bad = np.array([[1.0, 0.0], [0.0, -1.0]])  # not a covariance
  with pytest.raises(ValueError, match="imaginary part"):
    evaluation.frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2))


@pytest.mark.parametrize("which", ["mu1", "sigma1", "mu2", "sigma2"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_frechet_distance_refuses_non_finite_statistics_before_any_linear_algebra(monkeypatch, which, value):
  def no_linear_algebra(*args, **kwargs):
    raise AssertionError("the matrix square root was reached")

  monkeypatch.setattr(evaluation.linalg, "sqrtm", no_linear_algebra)
  stats = {"mu1": np.zeros(3), "sigma1": np.eye(3), "mu2": np.ones(3), "sigma2": 2 * np.eye(3)}
  stats[which] = stats[which].copy()
  stats[which].flat[0] = value
  with pytest.raises(evaluation.NonFiniteError, match="NaN or Inf"):
    evaluation.frechet_distance(stats["mu1"], stats["sigma1"], stats["mu2"], stats["sigma2"])


def test_kid_equals_torch_fidelity():
  torch = pytest.importorskip("torch")
  metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
  rng = np.random.default_rng(2)
  f1 = rng.normal(size=(300, 32)).astype(np.float32)
  f2 = (rng.normal(size=(250, 32)) * 1.5 + 0.3).astype(np.float32)
  theirs = metric_kid.kid_features_to_metric(
      torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=20, kid_subset_size=100, verbose=False,
      rng_seed=7, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
      kid_kernel_poly_coef0=1)
  mean, std = evaluation.kernel_distance(f1, f2, num_subsets=20, subset_size=100, seed=7)
  assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5)
  assert std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-4)
  f3 = rng.normal(size=(300, 32)).astype(np.float32)  # an independent sample of f1's distribution
  same, _ = evaluation.kernel_distance(f1, f3, num_subsets=20, subset_size=100, seed=7)
  assert abs(same) < 0.1 * mean


def test_inception_score_float64_reference():
  rng = np.random.default_rng(3)
  logits = rng.normal(0, 3, size=(1000, 10))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  scores = []
  for part in np.array_split(p, 10):
    py = part.mean(0)
    scores.append(np.exp(np.mean(np.sum(part * np.log(part / py), axis=1))))
  mean, std = evaluation.inception_score(logits, splits=10)
  assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(np.std(scores), rel=1e-8)
  one_class = np.tile(np.array([[20.0] + [0.0] * 9]), (100, 1))  # confident and never diverse: IS = 1
  assert evaluation.inception_score(one_class, splits=2)[0] == pytest.approx(1.0, abs=1e-6)
