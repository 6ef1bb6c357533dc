"""The 2-D scattering transform (Mallat 2012; Bruna & Mallat 2013) and the ScatterNet + linear classifier that
Tramer & Boneh (2021) train with DP-SGD.

A scattering transform is a fixed (not learned, data-independent) cascade of Morlet wavelet convolutions and
complex moduli, averaged by a Gaussian low-pass at scale 2^J. For 28x28 images with J = 2 and L = 8 angles it
gives 81 channels at 7x7 per input channel: the low-pass of the image (order 0), 16 first-order paths (2 scales x
8 angles) and 64 second-order paths (j1 < j2). Because nothing in it is trained, a DP-SGD model on top of it pays
privacy only for its head, which is why handcrafted features beat end-to-end networks at small epsilon.

This is the transform of kymatio's `Scattering2D` (the implementation Tramer & Boneh used), written for JAX: the
same filter bank (Morlet filters built in space, periodised over 5x5 tiles, transformed, cropped to each
resolution by aliasing), reflection padding to a multiple of 2^J plus a margin, convolutions as products in the
Fourier domain, subsampling by periodisation of the spectrum, and the same path order (order 0, then order 1,
then order 2 with j2 > j1). `tests/test_scattering.py` checks it against kymatio itself.

Inputs are NHWC; the output is NHWC with (input channel, path) flattened channel-major, like kymatio's
(N, C, K, H', W') reshaped to (N, C*K, H', W').
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tlgan.models import initializers
from tlgan.models.layers import group_standardise
from tlgan.pretrained import IMAGENET_MEAN, IMAGENET_STD


def num_paths(J: int, L: int = 8, max_order: int = 2) -> int:
  """Channels per input channel: 1 + J*L (+ L^2 * J(J-1)/2 with order 2)."""
  return 1 + J * L + (L * L * J * (J - 1) // 2 if max_order == 2 else 0)


def padded_size(size: int, J: int) -> int:
  """The side the image is reflect-padded to: the next multiple of 2^J after size + 2^J (a one-pixel margin at
  the output resolution on each side, cropped at the end)."""
  return ((size + 2**J) // 2**J + 1) * 2**J


def _gabor(M: int, N: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
  """A Gabor filter in space, periodised over the 5x5 neighbouring tiles: a Gaussian envelope of width sigma
  (elongated by 1/slant across theta) times a plane wave of frequency xi along theta."""
  c, s = np.cos(theta), np.sin(theta)
  rot = np.array([[c, -s], [s, c]])
  curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
  u0, u1 = np.mgrid[-2 * M:3 * M, -2 * N:3 * N].astype(np.float64)
  arg = -(curv[0, 0] * u0 * u0 + (curv[0, 1] + curv[1, 0]) * u0 * u1 + curv[1, 1] * u1 * u1)
  arg = arg + 1j * xi * (u0 * c + u1 * s)
  tiles = np.exp(arg).reshape(5, M, 5, N).sum(axis=(0, 2))
  # kymatio normalises with 2 * 3.1415 (not pi); kept so that the features are the published ones.
  return tiles / (2 * 3.1415 * sigma * sigma / slant)


def _morlet(M: int, N: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
  """A Gabor filter minus the multiple of its envelope that makes its mean exactly zero."""
  wave = _gabor(M, N, sigma, theta, xi, slant)
  envelope = _gabor(M, N, sigma, theta, 0.0, slant)
  return wave - wave.sum() / envelope.sum() * envelope


def _periodise(spectrum: np.ndarray, res: int) -> np.ndarray:
  """The filter at resolution 2^-res: the central (high) band of the spectrum zeroed, then folded (aliased)
  onto M/2^res x N/2^res frequencies."""
  M, N = spectrum.shape
  k = 2**res
  masked = spectrum.copy()
  masked[int(M * 2**(-res - 1)):int(M * 2**(-res - 1)) + int(M * (1 - 2**-res)), :] = 0
  masked[:, int(N * 2**(-res - 1)):int(N * 2**(-res - 1)) + int(N * (1 - 2**-res))] = 0
  return masked.reshape(k, M // k, k, N // k).sum(axis=(0, 2))


@functools.lru_cache(maxsize=None)
def filter_bank(M: int, N: int, J: int, L: int = 8):
  """(phi, psi): the low-pass at each resolution 0..J-1, a list of J arrays; the wavelets psi[j][res], each
  (L, M/2^res, N/2^res), for the resolutions a path reaches them at (res <= j). Real spectra, float32."""
  psi = []
  for j in range(J):
    spectra = [np.real(np.fft.fft2(_morlet(M, N, 0.8 * 2**j, (int(L - L / 2 - 1) - t) * np.pi / L,
                                           3.0 / 4.0 * np.pi / 2**j, 4.0 / L))) for t in range(L)]
    psi.append([np.stack([_periodise(s, res) for s in spectra]).astype(np.float32)
                for res in range(min(j + 1, max(J - 1, 1)))])
  phi_spectrum = np.real(np.fft.fft2(_gabor(M, N, 0.8 * 2**(J - 1), 0.0, 0.0)))
  phi = [_periodise(phi_spectrum, res).astype(np.float32) for res in range(J)]
  return phi, psi


def _subsample(spectrum, k: int):
  """The spectrum of the image subsampled by k in space: the average of the k x k aliases."""
  if k == 1:
    return spectrum
  *lead, M, N = spectrum.shape
  return spectrum.reshape(*lead, k, M // k, k, N // k).mean(axis=(-4, -2))


def scattering2d(x, J: int = 2, L: int = 8, max_order: int = 2):
  """Scattering coefficients of NHWC images `x`: (N, H/2^J, W/2^J, C * num_paths(J, L, max_order)), float32."""
  if max_order not in (1, 2):
    raise ValueError(f"max_order must be 1 or 2, got {max_order}")
  n, h, w, c = x.shape
  if 2**J > h or 2**J > w:
    raise ValueError(f"a {h}x{w} image is smaller than the scattering scale 2^J = {2**J}: lower J")
  M, N = padded_size(h, J), padded_size(w, J)
  phi, psi = filter_bank(M, N, J, L)
  img = jnp.moveaxis(x.astype(jnp.float32), -1, 1)  # (n, c, h, w)
  img = jnp.pad(img, ((0, 0), (0, 0), ((M - h) // 2, (M - h + 1) // 2), ((N - w) // 2, (N - w + 1) // 2)),
                mode="reflect")

  def low_pass(spectrum, res):  # spectrum at resolution 2^-res -> averaged, at 2^-J, cropped
    out = jnp.real(jnp.fft.ifft2(_subsample(spectrum * phi[res], 2**(J - res))))
    return out[..., 1:-1, 1:-1]

  u0 = jnp.fft.fft2(img)
  order0 = [low_pass(u0, 0)[:, :, None]]
  order1, order2 = [], []
  for j1 in range(J):
    u1 = _subsample(u0[:, :, None] * psi[j1][0], 2**j1)  # (n, c, L, ...) at resolution 2^-j1
    u1 = jnp.fft.fft2(jnp.abs(jnp.fft.ifft2(u1)))
    order1.append(low_pass(u1, j1))
    if max_order < 2:
      continue
    per_theta1 = []
    for j2 in range(j1 + 1, J):
      u2 = _subsample(u1[:, :, :, None] * psi[j2][j1], 2**(j2 - j1))  # (n, c, L1, L2, ...) at 2^-j2
      u2 = jnp.fft.fft2(jnp.abs(jnp.fft.ifft2(u2)))
      per_theta1.append(low_pass(u2, j2))
    if per_theta1:  # path order: theta1, then j2, then theta2
      s2 = jnp.concatenate(per_theta1, axis=3)
      order2.append(s2.reshape(*s2.shape[:2], -1, *s2.shape[-2:]))
  s = jnp.concatenate(order0 + order1 + order2, axis=2)  # (n, c, K, h', w')
  s = s.reshape(n, -1, *s.shape[-2:])
  return jnp.moveaxis(s, 1, -1)


def group_normalise(x, groups: int, epsilon: float = 1e-5):
  """torch.nn.GroupNorm(groups, C, affine=False) on NHWC (`layers.group_standardise`, the statistics of
  tlgan's GroupNorm): one example's statistics only, so it is DP-safe."""
  if x.shape[-1] % groups:
    raise ValueError(f"{x.shape[-1]} channels do not split into {groups} groups")
  return group_standardise(x, groups, epsilon)


PRECONDITION = "precondition"  # the name of the whitening matrix W in the `batch_stats` collection


def precondition(features, w):
  """Every position's channel vector (the last axis) multiplied by the symmetric matrix W, in float32."""
  return jnp.einsum("...c,cd->...d", features.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST)


def channel_whitening(second_moment: np.ndarray) -> np.ndarray:
  """W = sqrt(2m) (M + m I)^(-1/2) of a (noisy) channel second-moment matrix M, float32: M's negative
  eigenvalues (noise) set to 0 and m their mean, the shrinkage. Directions of average energy keep their scale
  (eigenvalue m -> 1), weak ones are amplified at most sqrt(2)x, strong ones damped; SGD on a linear model of
  the whitened features converges in fewer steps, which is what a privacy budget limits."""
  m = np.asarray(second_moment, np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.all(np.isfinite(m)):
    raise ValueError(f"a channel second moment must be a finite square matrix, got shape {m.shape}")
  lam, u = np.linalg.eigh((m + m.T) / 2)
  lam = np.maximum(lam, 0.0)
  shrink = lam.mean()
  if shrink <= 0:  # nothing left of the statistic (all noise below zero): no preconditioning
    return np.eye(len(m), dtype=np.float32)
  return ((u * np.sqrt(2 * shrink / (lam + shrink))) @ u.T).astype(np.float32)


_KERNEL_INIT = initializers.lecun_normal()  # the default of nn.Conv and nn.Dense, drawn flat (compiles faster)


class ScatterFront(nn.Module):
  """The fixed front end of Tramer & Boneh's ScatterNet models: the scattering transform (J = 2, L = 8: 81
  channels at 7x7 for 28x28 grayscale), then GroupNorm without parameters (27 groups of 3 channels by default).

  tlgan's classifier inputs are normalised with ImageNet's mean and std (`input_mean`, `input_std`); the
  transform reads the [0, 1] pixels they came from, as kymatio's users feed it (the order-0 channel is not
  shift-invariant, and GroupNorm mixes it with two order-1 channels).

  It has no parameters: `fixed_features(images)` computes it, and with `precomputed=True` a model takes those
  features instead of images, so a trainer can compute them once per image rather than once per step (the DP
  trainer does: the transform costs ~100x a head).

  Preconditioning (`precondition=True`): every position's channel vector is multiplied by a fixed symmetric
  matrix W (channels x channels), the variable `batch_stats/precondition` (identity at initialisation). Like a
  frozen BatchNorm's statistics it is a statistic of data that the model applies and never trains, so it sits in
  the same collection and the state, checkpoints, evaluation and exported weights carry it; the DP trainer
  sets it to `channel_whitening` of the training features, released with noise (`tlgan.trainers.private`).
  A model applies W to images whenever its variables hold one, whatever `precondition` says, so weights exported
  with W are never applied without it; with `precomputed=True` its input is the front end's output, W included.
  """
  num_classes: int = 10
  J: int = 2
  L: int = 8
  groups: int = 27
  input_mean: Sequence[float] = IMAGENET_MEAN
  input_std: Sequence[float] = IMAGENET_STD
  precomputed: bool = False
  precondition: bool = False
  dtype: jnp.dtype = jnp.float32

  def fixed_features(self, x):
    """Normalised scattering features (N, H/2^J, W/2^J, C * paths) of normalised NHWC images."""
    c = x.shape[-1]
    pixels = x * jnp.asarray(self.input_std[:c], jnp.float32) + jnp.asarray(self.input_mean[:c], jnp.float32)
    return group_normalise(scattering2d(pixels, self.J, self.L), self.groups)

  def features(self, x):
    """The front end's output: the fixed features, then W when the variables hold one. With `precomputed`, x is
    that output already: a trainer computes it once per image (`precondition(fixed_features, W)`), not per step."""
    w = None
    if self.precondition or self.has_variable("batch_stats", PRECONDITION):  # declared in both modes
      c = x.shape[-1] if self.precomputed else x.shape[-1] * num_paths(self.J, self.L)
      w = self.variable("batch_stats", PRECONDITION, lambda: jnp.eye(c, dtype=jnp.float32)).value
    if self.precomputed:
      return x.astype(self.dtype)
    s = self.fixed_features(x)
    return (s if w is None else precondition(s, w)).astype(self.dtype)


class ScatterLinear(ScatterFront):
  """Tramer & Boneh's ScatterNet + linear: the fixed front end (`ScatterFront`), then one dense layer (`fc`).
  Only `fc` has parameters: 3,969 x 10 + 10 = 39,700 for Fashion-MNIST."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # the same function in training and evaluation
    s = self.features(x)
    # Flattened channel-major (C, H, W), as the PyTorch model flattens its NCHW features.
    s = jnp.moveaxis(s, -1, 1).reshape(s.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(s).astype(jnp.float32)


class ScatterCNN(ScatterFront):
  """Tramer & Boneh's ScatterNet + CNN (their MNIST_CNN on scattering features): the fixed front end, then

      conv channels[0] 3x3/2 (padding 1) - tanh - conv channels[1] 3x3/1 (padding 1) - tanh (- any further
      channels, 3x3/1) - dense `hidden` - tanh - dense (num_classes, named `fc`)

  33,066 parameters with their widths (16, 32, hidden 32) on Fashion-MNIST's 81x7x7 features. Nothing mixes
  examples. The flattening is NHWC (theirs is NCHW: the same network up to a permutation of `dense`'s rows).
  """
  channels: Sequence[int] = (16, 32)
  hidden: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    s = self.features(x)
    for i, width in enumerate(self.channels):  # the first convolution halves the map, the others keep it
      stride = 2 if i == 0 else 1
      s = jnp.tanh(nn.Conv(width, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), dtype=self.dtype,
                           kernel_init=_KERNEL_INIT, name=f"conv{i + 1}")(s))
    s = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_KERNEL_INIT, name="dense")(s.reshape(s.shape[0], -1))
    s = jnp.tanh(s)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(s).astype(jnp.float32)
