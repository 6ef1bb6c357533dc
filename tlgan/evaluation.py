"""Sample-quality metrics: Fréchet distance, kernel (inception) distance, Inception Score, and precision,
recall, density and coverage.

Every number names its feature network: `FD[resnet18-fashion_mnist]` is the Fréchet distance in the feature
space of our ResNet18 trained on Fashion-MNIST, comparable only with numbers from the same network and
weights; `FID` is reserved for pytorch-fid's Inception-v3.

Statistics are streamed: `FeatureStats` accumulates the sum and the sum of outer products in float64 over
batches, so 50k x 2048 features never sit in memory at once.
"""

from typing import Dict, Optional, Tuple

import numpy as np
from scipy import linalg

from tlgan.errors import NonFiniteError


def require_finite(what: str, array) -> None:
  """Raises NonFiniteError naming `what` when `array` holds NaN or Inf: refused before any linear algebra
  (scipy's matrix square root of a NaN matrix can spin for minutes)."""
  array = np.asarray(array)
  bad = ~np.isfinite(array)
  if bad.any():
    rows = int(bad.reshape(len(array), -1).any(axis=1).sum()) if array.ndim > 1 else int(bad.sum())
    raise NonFiniteError(f"{what} hold NaN or Inf ({rows} of {len(array)} rows): the metric network or the "
                         "images scored are broken; check the weights file (or the generator's samples)")

class FeatureStats:
  """Streaming mean and covariance (unbiased, like np.cov) of feature vectors, in float64."""

  def __init__(self, dim: int):
    self.n = 0
    self._sum = np.zeros(dim, np.float64)
    self._outer = np.zeros((dim, dim), np.float64)

  def update(self, features) -> None:
    f = np.asarray(features, np.float64).reshape(-1, self._sum.shape[0])
    self.n += len(f)
    self._sum += f.sum(0)
    self._outer += f.T @ f

  @property
  def mean(self) -> np.ndarray:
    return self._sum / self.n

  @property
  def cov(self) -> np.ndarray:
    if self.n < 2:
      raise ValueError("a covariance needs at least 2 feature vectors")
    mean = self.mean
    return (self._outer - self.n * np.outer(mean, mean)) / (self.n - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64 (Dowson & Landau, 1982).

  The matrix square root is scipy's; when it is not finite, eps is added to both diagonals (the product was
  near singular); an imaginary part beyond numerical noise is an error, not silently dropped.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
  for what, array in (("the first mean", mu1), ("the first covariance", s1), ("the second mean", mu2),
                      ("the second covariance", s2)):
    require_finite(f"Fréchet distance: {what}'s entries", array)
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.all(np.isfinite(covmean)):
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Fréchet distance: the matrix square root has an imaginary part of "
                       f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are not positive semi-definite "
                       "(too few samples for the feature dimension?)")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _polynomial_kernel(x, y, degree=3, coef0=1.0):
  return (x @ y.T / x.shape[1] + coef0) ** degree


def _mmd2(k_xx, k_xy, k_yy) -> float:
  """MMD^2 with the diagonal terms of K_XX and K_YY left out (the estimator torch-fidelity calls
  'unbiased', and Bińkowski et al. use for KID)."""
  m = k_xx.shape[0]
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_distance(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0, degree: int = 3, coef0: float = 1.0) -> Tuple[float, float]:
  """KID (Bińkowski et al., 2018): MMD^2 with the kernel (x.y / d + 1)^3, averaged over random subsets.

  Subsets are drawn as torch-fidelity draws them (numpy RandomState(seed), without replacement, set 1 then
  set 2), so the numbers agree with it for the same features and seed. Returns (mean, std) over subsets.
  """
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  subset_size = min(subset_size, len(f1), len(f2))
  if subset_size < 2:
    raise ValueError("KID needs at least 2 feature vectors in each set")
  rng = np.random.RandomState(seed)
  mmds = np.empty(num_subsets)
  for i in range(num_subsets):
    x = f1[rng.choice(len(f1), subset_size, replace=False)]
    y = f2[rng.choice(len(f2), subset_size, replace=False)]
    mmds[i] = _mmd2(_polynomial_kernel(x, x, degree, coef0), _polynomial_kernel(x, y, degree, coef0),
                    _polynomial_kernel(y, y, degree, coef0))
  return float(mmds.mean()), float(mmds.std())


def inception_score(logits, splits: int = 10) -> Tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) per split of the samples (Salimans et al., 2016): (mean, std) over splits."""
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, splits):
    log_py = np.log(np.mean(np.exp(part), axis=0))
    kl = np.sum(np.exp(part) * (part - log_py), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al., 2019) and density and coverage (Naeem et al., 2020): each set's
# manifold is the union of balls around its points, of radius the distance to the k-th nearest neighbour in
# the same set. FD mixes fidelity and diversity in one number; these separate them (blur lowers precision,
# mode dropping lowers recall and coverage). Distances in float64, blockwise (10,000 x 10,000 never in memory).

def _distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
  return np.sqrt(np.maximum(d2, 0.0))


def nearest_neighbour_radii(features, k: int = 3, block: int = 2048) -> np.ndarray:
  """Distance of each row to its k-th nearest other row (the row itself, at distance 0, is not counted)."""
  f = np.asarray(features, np.float64)
  if not 0 < k < len(f):
    raise ValueError(f"k-nearest-neighbour radii need 0 < k < the number of points, got k={k} for {len(f)}")
  radii = np.empty(len(f))
  for i in range(0, len(f), block):
    radii[i:i + block] = np.partition(_distances(f[i:i + block], f), k, axis=1)[:, k]
  return radii


def precision_recall_density_coverage(real, fake, k: int = 3, real_radii: Optional[np.ndarray] = None,
                                      block: int = 2048) -> Dict[str, float]:
  """{precision, recall, density, coverage} of `fake` against `real` features, as the `prdc` package defines
  them (strict inequalities, k-th neighbour radii); `real_radii` may be passed to reuse them."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if real_radii is None:
    real_radii = nearest_neighbour_radii(real, k, block)
  fake_radii = nearest_neighbour_radii(fake, k, block)
  in_real_balls = np.zeros(len(fake), np.int64)  # per fake sample: how many real balls hold it
  recall_hit = np.zeros(len(real), bool)
  covered = np.zeros(len(real), bool)
  for i in range(0, len(real), block):
    d = _distances(real[i:i + block], fake)
    in_real_balls += (d < real_radii[i:i + block, None]).sum(0)
    recall_hit[i:i + block] = (d < fake_radii[None, :]).any(1)
    covered[i:i + block] = d.min(1) < real_radii[i:i + block]
  return {"precision": float(np.mean(in_real_balls > 0)), "recall": float(recall_hit.mean()),
          "density": float(in_real_balls.mean() / k), "coverage": float(covered.mean())}
