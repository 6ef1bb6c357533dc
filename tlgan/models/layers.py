"""Convolutions with explicit (torch-style) padding and a fast CPU formulation.

Two layers, `Conv` and `ConvTranspose`, with the same parameters as torch's `Conv2d` / `ConvTranspose2d`
(kernel stored HWIO for both: `(kh, kw, in, out)`), explicit symmetric padding, and two implementations of the
same function:

* ``'xla'``: `lax.conv_general_dilated`. What accelerators want.
* ``'matmul'``: patch extraction (strided slices) + one matrix multiply for `Conv`, and one matrix multiply +
  overlap-add for `ConvTranspose`. On CPU, XLA's convolution kernels (and especially their gradients with
  respect to the weights) are many times slower than a GEMM of the same FLOPs; these formulations reduce
  every convolution to a single large GEMM whose gradients are GEMMs too.

``impl='auto'`` (the default) keeps ``'xla'`` on accelerators, always, and picks ``'matmul'`` on the CPU, where
it was measured as fast or faster for every convolution of tlgan's models (`python -m benchmarks.steps`
--conv_impl=xla|matmul compares whole steps). Both paths are tested to agree in value and in every gradient.
"""

from functools import lru_cache, partial
from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from tlgan.models import initializers

Pair = Tuple[int, int]
IMPLS = ("auto", "xla", "matmul")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config names -> dtypes


def _pair(v) -> Pair:
  return (v, v) if isinstance(v, int) else tuple(v)


def resolve_impl(impl: str) -> str:
  """Maps 'auto' to the implementation that is fastest for this op on the default backend."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu":
    return "xla"
  return "matmul"


def _dot(a, b, precision):
  # As one 2-D GEMM: contracting a 4-D operand directly leaves the weight gradient as a contraction over
  # three batch dimensions, which XLA's CPU backend runs at half the speed (measured: 160 vs 77 ms for the
  # DCGAN's 7->14 transposed convolution, forward and backward).
  a2 = a.reshape(-1, a.shape[-1])
  if transposed_weight_gradient(*a2.shape, b.shape[1]):
    out = _gemm_nn_weight_gradient(a2, b, precision)
  else:
    out = jnp.dot(a2, b, precision=precision)
  return out.reshape(*a.shape[:-1], b.shape[-1])


# How a GEMM's weight gradient a^T g is computed on the CPU: "auto" (the rule below), "direct" (as autodiff
# emits it) or "transposed" (always). A module setting for benchmarks and tests, read when a step is traced.
WEIGHT_GRADIENT_FORMS = ("auto", "direct", "transposed")
weight_gradient_form = "auto"
# The "auto" rule's bounds: products of at least _MIN_MACS multiply-adds whose k is at least _MIN_K and _K_PER_N * n.
_MIN_MACS, _MIN_K, _K_PER_N = 1e9, 1024, 4


@lru_cache(maxsize=None)
def _avx2_without_avx512() -> bool:
  from tlgan.reporting import vector_extension  # from /proc/cpuinfo's flags
  return vector_extension().startswith("AVX2")


def transposed_weight_gradient(m: int, k: int, n: int) -> bool:
  """Whether the weight gradient of an (m, k) x (k, n) GEMM is computed as (g^T a)^T rather than a^T g.

  Autodiff emits a^T g as a product contracting both operands' major axis, which XLA's CPU backend runs
  through Eigen; with g^T materialised (m x n, the small operand) it is a plain product that XLA hands to
  YNNPACK. On a 2-core Zen 2 (AVX2), at the DCGAN D's (6272 x 2048)^T (6272 x 256): 95 ms against 48 alone, and
  the whole DCGAN step 0.93x -> 1.04x PyTorch's; at small or square products the transposes cost more than they
  save (0.4x-0.7x alone), and on AVX-512 CPUs the form was not measured to win in a step (README Performance).
  So: on x86 CPUs with AVX2 but not AVX-512, for products of at least 1e9 multiply-adds whose k is at least
  1024 and 4n."""
  if weight_gradient_form not in WEIGHT_GRADIENT_FORMS:
    raise ValueError(f"weight_gradient_form must be one of {WEIGHT_GRADIENT_FORMS}, got {weight_gradient_form!r}")
  if weight_gradient_form != "auto":
    return weight_gradient_form == "transposed"
  return (m * k * n >= _MIN_MACS and k >= max(_MIN_K, _K_PER_N * n) and jax.default_backend() == "cpu"
          and _avx2_without_avx512())


def describe_cpu_gemms() -> str:
  """One line for a run's log: how the CPU convolutions' GEMMs are formed on this machine."""
  if weight_gradient_form != "auto":
    return f"convolutions as GEMMs; weight gradients {weight_gradient_form} (set by weight_gradient_form)"
  if not _avx2_without_avx512():
    return "convolutions as GEMMs; weight gradients as autodiff emits them (the CPU is not AVX2 without AVX-512)"
  return (f"convolutions as GEMMs; the weight gradients of large products (k >= {_MIN_K} and {_K_PER_N}n, "
          f"{_MIN_MACS:,.0f} multiply-adds) as (g^T a)^T (AVX2 CPU without AVX-512)")


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gemm_nn_weight_gradient(a, b, precision):
  """a @ b, whose weight gradient is (g^T a)^T: see `transposed_weight_gradient`."""
  return jnp.dot(a, b, precision=precision)


def _gemm_nn_fwd(a, b, precision):
  return jnp.dot(a, b, precision=precision), (a, b)


def _gemm_nn_bwd(precision, res, g):
  a, b = res
  da = lax.dot_general(g, b, (((1,), (1,)), ((), ())), precision=precision)  # g b^T, as autodiff emits it
  # The barriers keep XLA's simplifier from folding the transposes back into the product's dimension numbers.
  if a.shape[1] >= g.shape[1]:
    db = lax.optimization_barrier(jnp.dot(lax.optimization_barrier(g.T), a, precision=precision)).T
  else:
    db = jnp.dot(lax.optimization_barrier(a.T), g, precision=precision)
  return da, db


_gemm_nn_weight_gradient.defvjp(_gemm_nn_fwd, _gemm_nn_bwd)


def conv2d(x, kernel, stride: Pair, padding: Pair, impl: str = "auto", precision=None):
  """NHWC x HWIO convolution with symmetric zero padding, like torch.nn.functional.conv2d."""
  (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
  if resolve_impl(impl) == "xla":
    return lax.conv_general_dilated(
        x, kernel, (sh, sw), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
  # Kernel rows/columns that meet only zero padding, for every output (a 3x3 kernel on a 1x1 map: 8 of its 9
  # taps), are dropped: the product loses only terms that are exactly zero, and their weight gradient is zero.
  (a0, a1), (b0, b1) = _live_taps(h, kh, sh, ph, ho), _live_taps(w, kw, sw, pw, wo)
  kernel, kh, kw = kernel[a0:a1, b0:b1], a1 - a0, b1 - b0
  # Bottom/right: as much padding as the last output reads (none when the dropped taps were the padded ones).
  pads = ((ph - a0, max(0, (ho - 1) * sh + kh - h - ph + a0)), (pw - b0, max(0, (wo - 1) * sw + kw - w - pw + b0)))
  if kh == kw == 1 and pads == ((0, 0), (0, 0)):
    patches = x[:, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw, :]
  else:
    patches = extract_patches(x, (kh, kw), (sh, sw), pads)
  return _dot(patches, kernel.reshape(kh * kw * cin, cout), precision)


def _live_taps(size: int, k: int, stride: int, pad: int, out: int) -> Pair:
  """[first, last + 1) of the kernel offsets along one axis that read a real input cell for some output."""
  live = [a for a in range(k) if any(0 <= i * stride + a - pad < size for i in range(out))]
  return (live[0], live[-1] + 1) if live else (0, k)  # none: every output reads padding only (zero)


def extract_patches(x, kernel_size: Pair, strides: Pair, pads) -> jax.Array:
  """(N, Ho, Wo, kh*kw*C): the rows a convolution kernel multiplies, zero padding `pads` ((top, bottom), (left,
  right)). Feature order (a, b, c) matches kernel.reshape(kh * kw * cin, cout)."""
  ((pt, pb), (pl, pr)) = pads
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  return jnp.concatenate(_window_slices(xp, kernel_size, strides), axis=-1)


def _window_slices(xp, kernel_size: Pair, strides: Pair) -> list:
  """For each kernel offset (a, b), row-major, the (N, Ho, Wo, C) strided slice of the padded `xp` it reads."""
  (kh, kw), (sh, sw) = kernel_size, strides
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  return [xp[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :] for a in range(kh) for b in range(kw)]


def conv_transpose2d(x, kernel, stride: Pair, padding: Pair, impl: str = "auto", precision=None):
  """Transposed convolution with torch.nn.ConvTranspose2d semantics (output_padding=0).

  `kernel` is HWIO, i.e. torch's weight `(in, out, kh, kw)` transposed by `(2, 3, 0, 1)`.
  Output size: `(h - 1) * stride - 2 * padding + k`.
  """
  (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
  kh, kw = kernel.shape[:2]
  if resolve_impl(impl) == "xla" or kh % sh or kw % sw:
    # The transpose of a strided conv is a conv over the stride-dilated input with the flipped kernel.
    return lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1),
        ((kh - 1 - ph, kh - 1 - ph), (kw - 1 - pw, kw - 1 - pw)),
        lhs_dilation=(sh, sw), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
  return _conv_transpose_gemm(x, kernel, (sh, sw), (ph, pw), precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose_gemm(x, kernel, stride: Pair, padding: Pair, precision):
  """The transposed convolution as one GEMM + overlap-add (kernel size a multiple of the stride)."""
  (sh, sw), (ph, pw) = stride, padding
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  # Each input pixel contributes kernel-sized output tiles: one GEMM gives all of them at once.
  # With kernel index a = q * s + r, input row i writes output row (i + q) * s + r: per (q_a, q_b) shift the
  # tiles are added in a coarse grid of s x s phase blocks, then the blocks are interleaved into pixels.
  qa_n, qb_n = kh // sh, kw // sw
  cols = _dot(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout), precision)
  cols = cols.reshape(n, h, w, qa_n, sh, qb_n, sw, cout)
  hb, wb = h + qa_n - 1, w + qb_n - 1
  out = 0.0
  for qa in range(qa_n):
    for qb in range(qb_n):
      tile = cols[:, :, :, qa, :, qb, :, :]
      out = out + jnp.pad(tile, ((0, 0), (qa, hb - h - qa), (qb, wb - w - qb), (0, 0), (0, 0), (0, 0)))
  out = out.transpose(0, 1, 3, 2, 4, 5).reshape(n, hb * sh, wb * sw, cout)
  ho, wo = (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw
  return out[:, ph:ph + ho, pw:pw + wo, :]


def _conv_transpose_gemm_fwd(x, kernel, stride, padding, precision):
  return _conv_transpose_gemm(x, kernel, stride, padding, precision), (x, kernel)


def _conv_transpose_gemm_bwd(stride, padding, precision, res, g):
  # The transposed convolution's gradients are those of the convolution it transposes: the input gradient is
  # that convolution of g (patches of g times the kernel), the weight gradient the same patches against x. One
  # patch extraction serves both, where the transpose rules of the overlap-add gather g into the GEMM's column
  # layout through transposes and pads (DCGAN step on a 2-core Intel Xeon: 1.03x-1.06x, alternating rounds).
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  (ph, pw) = padding
  patches = extract_patches(g, (kh, kw), stride, ((ph, ph), (pw, pw)))  # (N, H, W, kh*kw*cout)
  patches = patches.reshape(-1, kh * kw * cout)
  dx = jnp.dot(patches, kernel.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin), precision=precision)
  dk = jnp.dot(x.reshape(-1, cin).T, patches, precision=precision)  # (cin, kh*kw*cout)
  return dx.reshape(x.shape), dk.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


_conv_transpose_gemm.defvjp(_conv_transpose_gemm_fwd, _conv_transpose_gemm_bwd)


def max_pool2d(x, window: int, stride: int, padding: int, impl: str = "auto"):
  """torch.nn.MaxPool2d(window, stride, padding) on NHWC: padding with -inf, so padded cells never win.

  ``'xla'``: `lax.reduce_window`. ``'matmul'`` (the CPU's): the maximum of window*window strided slices, with a
  gradient that routes each output's gradient to the first maximum of its window (window order, as XLA's
  select-and-scatter and torch do) by slices and one overlap-add. XLA's CPU backend expands the gradient of
  `reduce_window` into a variadic reduce-window over four int32 index arrays of the padded input's size: 13% of
  a ResNet18 step at 32x32 (`python -m benchmarks.profile_steps`).
  """
  if resolve_impl(impl) == "xla":
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                             ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return _max_pool_slices(x, window, stride, padding)


def _pool_windows(x, window: int, stride: int, padding: int):
  """(x padded with -inf, the window*window strided slices of it that max-pooling reads)."""
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
  return xp, _window_slices(xp, (window, window), (stride, stride))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_slices(x, window, stride, padding):
  _, slices = _pool_windows(x, window, stride, padding)
  out = slices[0]
  for s in slices[1:]:
    out = jnp.maximum(out, s)
  return out


def _max_pool_fwd(x, window, stride, padding):
  y = _max_pool_slices(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, res, g):
  x, y = res
  xp, slices = _pool_windows(x, window, stride, padding)
  (hp, wp), (ho, wo) = xp.shape[1:3], y.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  zero = jnp.zeros((), g.dtype)
  dxp = jnp.zeros(xp.shape, g.dtype)
  for k, s in enumerate(slices):
    a, b = divmod(k, window)
    hit = (s == y) & ~taken  # the first maximum of each window takes the gradient
    taken = taken | hit
    dxp = dxp + lax.pad(jnp.where(hit, g, zero), zero,
                        ((0, 0, 0), (a, hp - a - (ho - 1) * stride - 1, stride - 1),
                         (b, wp - b - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
  return (dxp[:, padding:hp - padding, padding:wp - padding, :],)


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


class Conv(nn.Module):
  """2-D convolution, NHWC, torch-style symmetric padding. Kernel `(kh, kw, in, out)`."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Sequence[int] = (0, 0)
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = None
  kernel_init: Callable = initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  op = staticmethod(conv2d)

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = self.op(x, kernel, self.strides, self.padding, self.impl)
    return y + bias if bias is not None else y


class ConvTranspose(Conv):
  """torch.nn.ConvTranspose2d as a Flax module, NHWC. Kernel `(kh, kw, in, out)`."""
  kernel_size: Sequence[int] = (4, 4)
  strides: Sequence[int] = (2, 2)
  padding: Sequence[int] = (1, 1)
  op = staticmethod(conv_transpose2d)


class GroupNorm(nn.Module):
  """torch.nn.GroupNorm(min(num_groups, C), C) on NHWC: eps 1e-5, biased variance of each group of C/groups
  channels over an example's spatial positions (statistics of one example only)."""
  num_groups: int = 32
  epsilon: float = 1e-5
  scale_init: Callable = nn.initializers.ones
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    groups = min(self.num_groups, c)
    if c % groups:
      raise ValueError(f"GroupNorm: {c} channels do not split into {groups} groups: choose a group count that "
                       f"divides every stage's width (model.norm_groups)")
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    y = group_standardise(x, groups, self.epsilon) * scale + bias
    return y.astype(self.dtype or x.dtype)


def group_standardise(x, groups: int, epsilon: float = 1e-5):
  """GroupNorm without its scale and bias, in float32: each example's groups of C/groups consecutive channels
  (NHWC, `groups` dividing C) standardised over their values and positions (biased variance): one example's
  statistics only."""
  c = x.shape[-1]
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], groups, c // groups)
  axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial positions and the channels of a group
  mean = jnp.mean(xf, axes, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
  return ((xf - mean) * lax.rsqrt(var + epsilon)).reshape(x.shape)
