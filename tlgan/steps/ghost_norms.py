"""Per-example gradient norms without per-example gradients ("ghost norms", Goodfellow 2015; Li et al. 2022;
Bu et al. 2023): one batched backward pass, and each layer's share of every example's squared norm computed from
what that layer sees, its input x_i and the gradient g_i of the loss with respect to its output.

    norms = ghost_norms.per_example_grad_norms(example_losses, params, inputs)   # or raises Unsupported

For a dense or convolution kernel, example i's gradient is P_i^T G_i (P_i: the T x D rows the kernel multiplies,
the input or its patches; G_i: the T x C output gradients), and its squared norm is computed whichever way costs
less: materialised (T*D*C per example) or as <P_i P_i^T, G_i G_i^T> (T^2 (D + C); T = 1 gives |x_i|^2 |g_i|^2).
A bias adds |sum_t G_i,t|^2; a GroupNorm's or a frozen BatchNorm's scale and bias add |sum_t g_i,t * xhat_i,t|^2
and |sum_t g_i,t|^2 per channel.

How: a Flax method interceptor wraps the output y of every module that owns trainable parameters in an identity
with a custom VJP, tap(y, x, probe) = y, whose backward rule passes the gradient through and returns the layer's
per-example squared norm as the gradient of `probe`, a zero vector (N,) that every tap shares: the gradient of the
summed loss with respect to `probe` is then each example's squared norm over all the layers. The forward pass is
the modules' own code; the weight gradients of the batched pass are never asked for, so XLA never computes them.

The trainable parameters are recognised by identity (the arrays `params` holds, as `example_losses` passes them to
`apply`). Anything the rules do not cover exactly raises `Unsupported` at trace time (`tlgan.steps.private`
then computes the norms from vmapped per-example gradients): a trainable parameter in a module of another kind,
a module called twice (shared weights), a convolution with dilation, groups or circular padding, a module whose
input or output does not have the batch's rows as its leading axis. (A module fed rows of the batch in another
order would go unnoticed: tlgan's models, like any DP-SGD model, keep axis 0 the example.)
"""

from typing import Callable, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlgan.models import layers
from tlgan.models import resnet


def _as_rows(x, g):
  """(N, T, D) and (N, T, C) float32: positions of each example as rows."""
  n = x.shape[0]
  return x.reshape(n, -1, x.shape[-1]).astype(jnp.float32), g.reshape(n, -1, g.shape[-1]).astype(jnp.float32)


def kernel_sq_norms(p, g):
  """|P_i^T G_i|_F^2 for every i, p (N, T, D), g (N, T, C), by the cheaper of the two formulas."""
  _, t, d = p.shape
  c = g.shape[-1]
  if t == 1:
    return jnp.sum(jnp.square(p[:, 0]), -1) * jnp.sum(jnp.square(g[:, 0]), -1)
  if t * t * (d + c) < t * d * c:
    pp = jnp.einsum("ntd,nsd->nts", p, p)
    gg = jnp.einsum("ntc,nsc->nts", g, g)
    return jnp.sum(pp * gg, (1, 2))
  return jnp.sum(jnp.square(jnp.einsum("ntd,ntc->ndc", p, g)), (1, 2))


def _bias_sq(g):
  return jnp.sum(jnp.square(jnp.sum(g, 1)), -1)


def _flax_conv_geometry(m: nn.Conv, x) -> Optional[tuple]:
  """((kh, kw), strides, ((top, bottom), (left, right))) of a plain 2-D flax Conv, or None."""
  ks = tuple(m.kernel_size)
  if len(ks) != 2 or x.ndim != 4 or m.feature_group_count != 1:
    return None
  for dil in (m.kernel_dilation, m.input_dilation):
    if dil not in (None, 1) and tuple(dil) != (1, 1):
      return None
  strides = (1, 1) if m.strides is None else ((m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides))
  pad = m.padding
  if pad == "VALID":
    pads = ((0, 0), (0, 0))
  elif pad == "SAME":
    pads = []
    for size, k, s in zip(x.shape[1:3], ks, strides):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    pads = tuple(pads)
  elif isinstance(pad, int):
    pads = ((pad, pad), (pad, pad))
  elif isinstance(pad, (tuple, list)) and len(pad) == 2:
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)
  else:
    return None
  return ks, strides, pads


def _standardised(m, x):
  """x-hat of a GroupNorm or a frozen BatchNorm (the factor its scale multiplies), float32."""
  if isinstance(m, layers.GroupNorm):
    return layers.group_standardise(x, min(m.num_groups, x.shape[-1]), m.epsilon)
  mean, var = m.get_variable("batch_stats", "mean"), m.get_variable("batch_stats", "var")
  return (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + m.epsilon)


def _layer_rule(m: nn.Module, x, names: Sequence[str]) -> Optional[Callable]:
  """rule(x, g) -> (N,) squared norm of the gradient of the module's parameters `names`, or None."""
  names = set(names)
  if isinstance(m, (layers.GroupNorm, resnet.BatchNorm)):
    if (isinstance(m, resnet.BatchNorm) and not m.use_running_average) or not names <= {"scale", "bias"}:
      return None  # BatchNorm in training mode mixes examples: DP-SGD refuses it before this

    def norm_rule(x, g):
      xh, gf = _as_rows(_standardised(m, x), g)
      return (jnp.sum(jnp.square(jnp.sum(gf * xh, 1)), -1) * ("scale" in names)
              + _bias_sq(gf) * ("bias" in names))
    return norm_rule
  if not names <= {"kernel", "bias"}:
    return None
  if isinstance(m, nn.Dense):
    def dense_rule(x, g):
      p, gf = _as_rows(x, g)
      return kernel_sq_norms(p, gf) * ("kernel" in names) + _bias_sq(gf) * ("bias" in names)
    return dense_rule
  if type(m) is layers.Conv:  # not ConvTranspose (a subclass): no rule for it
    geometry = (layers._pair(m.kernel_size), layers._pair(m.strides), tuple((p, p) for p in layers._pair(m.padding)))
  elif type(m) is nn.Conv:
    geometry = _flax_conv_geometry(m, x)  # None for dilations, groups, 'CIRCULAR' or 'CAUSAL' padding
    if geometry is None:
      return None
  else:
    return None

  def conv_rule(x, g):
    p, gf = _as_rows(layers.extract_patches(x, *geometry), g)
    return kernel_sq_norms(p, gf) * ("kernel" in names) + _bias_sq(gf) * ("bias" in names)
  return conv_rule


def _tap(rule: Callable):
  @jax.custom_vjp
  def tap(y, x, probe):
    del x, probe
    return y

  def fwd(y, x, probe):
    del probe
    return y, x

  def bwd(x, g):
    return g, jnp.zeros_like(x), rule(x, g)

  tap.defvjp(fwd, bwd)
  return tap


class Unsupported(Exception):
  """A trainable parameter no rule covers exactly (raised while tracing; the message names it)."""


def per_example_grad_norms(example_losses: Callable, params, inputs) -> jax.Array:
  """The norm of the gradient of each example's loss with respect to `params` (N,); `Unsupported` when a
  trainable parameter sits where the rules above do not apply. `example_losses(params, inputs) -> (losses (N,), aux)`
  must apply Flax modules to `params`' own arrays and must not mix examples (as DP-SGD requires anyway)."""
  owners = {id(leaf): path for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  if len(owners) != len(jax.tree.leaves(params)):
    raise Unsupported("one array under two names (shared weights)")
  n = jax.tree.leaves(inputs)[0].shape[0]
  covered: List = []

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    own = m.variables.get("params", {}) if m.scope is not None else {}
    mine = {name: leaf for name, leaf in own.items() if not isinstance(leaf, dict) and id(leaf) in owners}
    if not mine:
      return next_fun(*args, **kwargs)
    x = args[0]
    rule = _layer_rule(m, x, tuple(mine)) if isinstance(x, jax.Array) and x.shape[:1] == (n,) else None
    if rule is None:
      raise Unsupported(f"no rule for the parameters {sorted(mine)} of {type(m).__name__} {'/'.join(m.path)}")
    covered.extend(id(leaf) for leaf in mine.values())
    y = next_fun(*args, **kwargs)
    if not isinstance(y, jax.Array) or y.shape[:1] != (n,):
      raise Unsupported(f"{type(m).__name__} {'/'.join(m.path)} does not return one array of the batch's rows")
    return _tap(rule)(y, x, probe_holder[0])

  probe_holder = [None]

  def total(probe):
    probe_holder[0] = probe
    with nn.intercept_methods(interceptor):
      losses, _ = example_losses(params, inputs)
    return jnp.sum(losses)

  sq = jax.grad(total)(jnp.zeros((n,), jnp.float32))
  if sorted(covered) != sorted(owners):
    missing = [jax.tree_util.keystr(owners[i]) for i in owners if i not in covered]
    raise Unsupported(f"parameters outside any module call: {missing}" if missing else
                      "a module called more than once (its gradients add up, which no per-layer rule sees)")
  return jnp.sqrt(jnp.maximum(sq, 0.0))
