"""The GEMM formulations of (transposed) convolution equal XLA's convolution, in value and every gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tlgan.models import layers

jax.config.update("jax_default_matmul_precision", "highest")

# (input NHWC, kernel HWIO, stride, padding): every shape the DCGANs (28x28, 32x32) and ResNets (32x32 and odd
# inputs: 7x7/2 and 3x3 stems, 3x3 convs down to 1x1 maps, 1x1/2 shortcuts) use, at small widths, plus odd
# sizes, stride 1, kernel 3 and no padding.
CONV_CASES = [
    ((2, 28, 28, 1), (4, 4, 1, 8), 2, 1),
    ((2, 14, 14, 8), (4, 4, 8, 16), 2, 1),
    ((2, 32, 32, 3), (4, 4, 3, 8), 2, 1),
    ((2, 8, 8, 16), (4, 4, 16, 32), 2, 1),
    ((2, 9, 11, 5), (3, 3, 5, 7), 2, 1),
    ((2, 7, 7, 4), (3, 3, 4, 6), 1, 1),
    ((2, 5, 5, 4), (1, 1, 4, 6), 2, 0),
    ((2, 3, 3, 4), (3, 3, 4, 6), 1, 0),
    ((2, 32, 32, 3), (7, 7, 3, 4), 2, 3),
    ((2, 33, 33, 3), (7, 7, 3, 4), 2, 3),
    ((2, 32, 32, 3), (3, 3, 3, 8), 1, 1),
    ((2, 8, 8, 8), (3, 3, 8, 8), 1, 1),
    ((2, 8, 8, 8), (3, 3, 8, 16), 2, 1),
    ((2, 2, 2, 8), (3, 3, 8, 8), 1, 1),
    ((2, 2, 2, 8), (3, 3, 8, 16), 2, 1),
    ((2, 1, 1, 8), (3, 3, 8, 8), 1, 1),
    ((2, 3, 3, 8), (1, 1, 8, 16), 2, 0),
    ((2, 8, 7, 4), (1, 1, 4, 6), 2, 0),  # the last input row/column unread
    ((2, 1, 2, 4), (4, 4, 4, 6), 1, 2),  # kernel taps that meet only padding, on one axis more than the other
    ((2, 1, 1, 3), (1, 1, 3, 4), 1, 1),  # outputs on padding only
]
CONVT_CASES = [
    ((2, 7, 7, 16), (4, 4, 16, 8), 2, 1),
    ((2, 14, 14, 8), (4, 4, 8, 1), 2, 1),
    ((2, 4, 4, 32), (4, 4, 32, 16), 2, 1),
    ((2, 16, 16, 8), (4, 4, 8, 3), 2, 1),
    ((2, 5, 6, 3), (4, 4, 3, 7), 2, 0),
    ((2, 5, 6, 3), (3, 3, 3, 7), 1, 1),
    ((2, 3, 5, 3), (6, 6, 3, 2), 3, 2),
]


def _values_and_grads(fn, x, w):
  # A non-linear read-out so that every output element gets a distinct cotangent. One jit per formulation:
  # run op by op, each of the matmul path's slices and pads would be compiled on its own (~15 s per case).
  def loss(x, w):
    y = fn(x, w)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / 100.0)
  return jax.jit(lambda x, w: (fn(x, w), jax.grad(loss, argnums=(0, 1))(x, w)))(x, w)


def _normal(seed, *shapes):
  # NumPy's generator: jax.random would compile a threefry kernel per shape (~1 s each on 2 cores).
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in shapes]


def _compare(fast, ref, x, w):
  y_fast, (dx_fast, dw_fast) = _values_and_grads(fast, x, w)
  y_ref, (dx_ref, dw_ref) = _values_and_grads(ref, x, w)
  assert y_fast.shape == y_ref.shape
  for a, b in ((y_fast, y_ref), (dx_fast, dx_ref), (dw_fast, dw_ref)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("x_shape,w_shape,stride,pad", CONV_CASES)
def test_conv_matmul_equals_lax(x_shape, w_shape, stride, pad):
  x, w = _normal(0, x_shape, w_shape)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _compare(lambda x, w: layers.conv2d(x, w, stride, pad, impl="matmul"), ref, x, w)


@pytest.mark.parametrize("x_shape,w_shape,stride,pad", CONVT_CASES)
def test_conv_transpose_matmul_equals_lax(x_shape, w_shape, stride, pad):
  x, w = _normal(1, x_shape, w_shape)
  # Reference: the transpose (VJP) of the strided convolution, which is what ConvTranspose2d computes.
  # The forward conv maps (N, Ho, Wo, Cout) -> (N, H, W, Cin) with the kernel's in/out roles swapped.
  n, h, wd, cin = x_shape
  kh, kwd, _, cout = w_shape
  ho, wo = (h - 1) * stride - 2 * pad + kh, (wd - 1) * stride - 2 * pad + kwd

  def ref(x, w):
    def conv(y):
      return lax.conv_general_dilated(y, w.transpose(0, 1, 3, 2), (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _, vjp = jax.vjp(conv, jnp.zeros((n, ho, wo, cout), x.dtype))
    return vjp(x)[0]

  _compare(lambda x, w: layers.conv_transpose2d(x, w, stride, pad, impl="matmul"), ref, x, w)
  _compare(lambda x, w: layers.conv_transpose2d(x, w, stride, pad, impl="xla"), ref, x, w)


def test_taps_that_meet_only_padding_are_not_computed():
  # A 3x3 kernel on a 1x1 map multiplies only its centre with real input; the others meet zero padding.
  # (Their values and gradients are checked by test_conv_matmul_equals_lax on the same shapes.)
  def contracted(x_shape, w_shape, stride, pad):
    jaxpr = jax.make_jaxpr(lambda x, w: layers.conv2d(x, w, stride, pad, impl="matmul"))(
        jnp.ones(x_shape), jnp.ones(w_shape))
    (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    return dot.invars[1].aval.shape[0]
  assert contracted((2, 1, 1, 8), (3, 3, 8, 4), 1, 1) == 8
  assert contracted((2, 2, 2, 8), (3, 3, 8, 4), 2, 1) == 4 * 8  # stride 2: the 2x2 taps at the bottom right
  assert contracted((2, 8, 8, 8), (3, 3, 8, 4), 1, 1) == 9 * 8


POOL_CASES = [((3, 18, 17, 5), 3, 2, 1), ((2, 16, 16, 4), 3, 2, 1), ((2, 9, 11, 3), 2, 2, 0), ((2, 8, 8, 3), 3, 1, 1)]


@pytest.mark.parametrize("shape,window,stride,pad", POOL_CASES)
def test_max_pool_slices_equal_reduce_window_and_torch(shape, window, stride, pad):
  torch = pytest.importorskip("torch")
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  x = jnp.round(jax.random.normal(k1, shape) * 2) / 2  # coarse values: many windows with tied maxima
  x = jnp.where(jax.random.uniform(k2, shape) < 0.3, 0.0, x)  # and ReLU-like zeros
  fns = {impl: (lambda x, impl=impl: layers.max_pool2d(x, window, stride, pad, impl=impl))
         for impl in ("xla", "matmul")}
  y_ref, vjp_ref = jax.vjp(jax.jit(fns["xla"]), x)
  y, vjp = jax.vjp(jax.jit(fns["matmul"]), x)
  g = jax.random.normal(k3, y.shape)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  dx = np.asarray(vjp(g)[0])
  np.testing.assert_allclose(dx, np.asarray(vjp_ref(g)[0]), rtol=1e-6, atol=1e-6)
  # torch.nn.MaxPool2d's gradient, in float64: also the first maximum of each window
  xt = torch.tensor(np.asarray(x, np.float64).transpose(0, 3, 1, 2), requires_grad=True)
  torch.nn.functional.max_pool2d(xt, window, stride, pad).backward(torch.tensor(np.asarray(g, np.float64)
                                                                               .transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
  assert (dx != 0).sum() > 0 and np.isfinite(dx).all()


def test_auto_keeps_xla_off_cpu(monkeypatch):
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  # Fresh functions for every trace: jax caches traces by function, and the backend is read while tracing.
  primitives = lambda f: {e.primitive.name for e in jax.make_jaxpr(lambda x, w: f(x, w))(x, w).eqns}
  conv = lambda x, w: layers.conv2d(x, w, 1, 1, impl="auto")
  conv_t = lambda x, w: layers.conv_transpose2d(x, w[:2, :2], 2, 0, impl="auto")
  pool = lambda x, w: layers.max_pool2d(x, 3, 2, 1, impl="auto")
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert layers.resolve_impl("auto") == "xla"
    assert "conv_general_dilated" in primitives(conv) and "conv_general_dilated" in primitives(conv_t)
    assert "reduce_window_max" in primitives(pool)
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert layers.resolve_impl("auto") == "matmul"
  assert "conv_general_dilated" not in primitives(conv) | primitives(conv_t)
  assert "reduce_window_max" not in primitives(pool)
  with pytest.raises(ValueError, match="conv impl"):
    layers.resolve_impl("cudnn")


@pytest.fixture
def weight_gradient(monkeypatch):
  """Sets layers.weight_gradient_form (and the CPU's vector extension) for one test, restored after it."""
  def set_form(form, vector_extension=None):
    monkeypatch.setattr(layers, "weight_gradient_form", form)
    if vector_extension is not None:
      monkeypatch.setattr("tlgan.reporting.vector_extension", lambda: vector_extension)
      layers._avx2_without_avx512.cache_clear()
  yield set_form
  layers._avx2_without_avx512.cache_clear()


@pytest.mark.parametrize("x_shape,w_shape,stride,pad", CONV_CASES)
def test_conv_matmul_with_transposed_weight_gradients_equals_lax(weight_gradient, x_shape, w_shape, stride, pad):
  # Every GEMM's weight gradient formed as (g^T a)^T (k >= n) or (a^T) g (k < n): both branches occur here.
  weight_gradient("transposed")
  x, w = _normal(2, x_shape, w_shape)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _compare(lambda x, w: layers.conv2d(x, w, stride, pad, impl="matmul"), ref, x, w)


def _barriers(x_shape, w_shape):
  x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
  grad = jax.grad(lambda x, w: jnp.sum(layers.conv2d(x, w, 2, 1, impl="matmul")), argnums=(0, 1))
  return str(jax.make_jaxpr(grad)(x, w)).count("optimization_barrier")


def test_transposed_weight_gradient_only_for_large_products_on_avx2_without_avx512(weight_gradient):
  d_conv1 = (128, 14, 14, 128), (4, 4, 128, 256)  # the DCGAN D's (6272 x 2048)^T (6272 x 256), batch 128
  weight_gradient("auto", vector_extension="AVX2")
  assert layers.transposed_weight_gradient(6272, 2048, 256)
  assert not layers.transposed_weight_gradient(6272, 256, 2048)  # k < 4n
  assert not layers.transposed_weight_gradient(512, 1152, 256)  # ResNet18's layer3: too small to pay
  assert not layers.transposed_weight_gradient(25088, 16, 128)
  assert _barriers(*d_conv1) == 2 and _barriers((2, 14, 14, 8), (4, 4, 8, 16)) == 0
  assert "(g^T a)^T" in layers.describe_cpu_gemms()
  for isa in ("AVX-512", "AVX-512 + AMX", "AVX", ""):  # measured to lose or not measured: as autodiff emits it
    weight_gradient("auto", vector_extension=isa)
    assert not layers.transposed_weight_gradient(6272, 2048, 256)
    assert _barriers(*d_conv1) == 0
    assert "as autodiff emits them" in layers.describe_cpu_gemms()
  weight_gradient("transposed", vector_extension="AVX-512")
  assert layers.transposed_weight_gradient(2, 3, 4) and _barriers((2, 14, 14, 8), (4, 4, 8, 16)) == 2
  weight_gradient("direct", vector_extension="AVX2")
  assert not layers.transposed_weight_gradient(6272, 2048, 256) and _barriers(*d_conv1) == 0
  weight_gradient("fast")
  with pytest.raises(ValueError, match="weight_gradient_form must be one of"):
    layers.transposed_weight_gradient(6272, 2048, 256)


def test_transposed_weight_gradient_at_the_dcgan_d_shape_equals_autodiff(weight_gradient):
  # The form the rule picks on AVX2 CPUs, at the layer it picks it for (batch 32: m = 1568, k = 2048, n = 256),
  # against the same convolution's gradients as autodiff emits them, in float64 on the host.
  x, w = _normal(3, (32, 14, 14, 128), (4, 4, 128, 256))
  g = _normal(4, (32, 7, 7, 256))[0]
  grads = {}
  for form in ("direct", "transposed"):
    weight_gradient(form)
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(layers.conv2d(x, w, 2, 1, impl="matmul") * g), argnums=(0, 1)))
    grads[form] = [np.asarray(v) for v in f(x, w)]
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = np.concatenate([xp[:, a:a + 13:2, b:b + 13:2, :] for a in range(4) for b in range(4)], axis=-1)
  dw = (patches.reshape(-1, 2048).T @ np.asarray(g, np.float64).reshape(-1, 256)).reshape(4, 4, 128, 256)
  for form, (dx, dw_) in grads.items():
    np.testing.assert_allclose(dw_, dw, rtol=1e-5, atol=1e-5 * np.abs(dw).max(), err_msg=form)
  np.testing.assert_array_equal(grads["transposed"][0], grads["direct"][0])  # the input gradient is unchanged
