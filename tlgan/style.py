"""Neural style transfer (Gatys et al., 2016) on ResNet18 features, with SWAG (Wang et al., CVPR 2021).

The image `x` is optimised so that Gram matrices of its features at several ResNet stages match the style
image's, its features at a deeper stage match the content image's, and its total variation stays small:

    L(x) = w_c * sum_l |F_l(x) - F_l(c)|^2 / |F_l(c)|^2  +  w_s * sum_l |G_l(x) - G_l(s)|^2 / |G_l(s)|^2
           + w_tv * TV(x)

Each layer's term is relative to the target's own magnitude, so the weights mean the same thing whatever the
layer's scale (ResNet activations grow with depth; softmax-smoothed ones are tiny).

SWAG: residual networks trained on ImageNet give peaky, low-entropy activations, which match poorly through
Gram matrices; SWAG replaces every activation map by its softmax over all positions and channels of the layer
(scaled to mean 1) before the Gram matrix and the content comparison (`smoothing='swag'`, the default for
ImageNet ResNet features).

Features: converted ImageNet weights (`python -m tlgan.pretrained`) when present. Offline without them, the
ResNet18 that tlgan trains on Fashion-MNIST (real photographs of clothes, grayscale) for its FD metric, applied
to each colour channel as a gray image (`per_channel`: the Gram matrices then also hold the correlations
between colour channels). Random weights are an option too; their features are a poor basis for style (the
result is coloured noise): learned filters matter.

The image is parameterised as a Laplacian-like pyramid (`pyramid`, `render`): a sum of upsampled images of
halving sizes, all optimised together, so that coarse changes take few steps and high-frequency noise is not the
optimiser's easiest way to match the statistics; and it is optimised coarse to fine (the trainer's `scales`).
"""

import os
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tlgan.errors import UserError
from tlgan.models import initializers
from tlgan.models.resnet import STAGES, BatchNorm
from tlgan.pretrained import IMAGENET_MEAN, IMAGENET_STD

SMOOTHINGS = ("swag", "none")
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")


# ---------------------------------------------------------------------------------------------------- images


def load_image(spec: str, max_size: int) -> np.ndarray:
  """'skimage:NAME' (a photograph shipped with scikit-image) or a file path -> float32 RGB in [0, 1], (H, W, 3),
  resized (area) so that its longer side is `max_size`."""
  from PIL import Image
  if spec.startswith("skimage:"):
    pixels = _skimage_photo(spec.split(":", 1)[1])
  else:
    if not os.path.isfile(spec):
      raise UserError(f"image {spec} does not exist: pass an image file (PNG, JPEG, ...) or skimage:NAME")
    try:
      pil = Image.open(spec)
      pil.load()
    except Image.DecompressionBombError as e:
      raise UserError(f"{spec} has more pixels than Pillow will open safely ({str(e).split(',')[0].strip()}): "
                      "scale it down first") from None
    except Exception as e:  # not an image, truncated, an unsupported variant
      raise UserError(f"{spec} is not an image that Pillow can read ({type(e).__name__}): pass a PNG or "
                      "JPEG") from None
    pixels = _pixels(pil, spec)
  if float(np.ptp(pixels)) == 0.0:
    colour = np.rint(pixels.reshape(-1, pixels.shape[-1])[0] * 255).astype(int).tolist()
    raise UserError(f"{spec} is blank (every pixel is RGB {colour}): "
                    "there is nothing to transfer; pass another image")
  pil = Image.fromarray(np.rint(pixels * 255.0).astype(np.uint8))
  scale = max_size / max(pil.size)
  size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
  pil = pil.resize(size, Image.BOX if scale < 1 else Image.BICUBIC)
  return np.asarray(pil, np.float32) / 255.0


def _pixels(pil, spec: str) -> np.ndarray:
  """A Pillow image -> float32 RGB in [0, 1], (H, W, 3), at its full depth: 16-bit and 32-bit integer and float
  images are scaled by their own range (`convert('RGB')` would clip them to 255: almost white)."""
  if pil.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    values = np.asarray(pil).astype(np.float64)
    if pil.mode == "F":
      top = 1.0 if values.max() <= 1.0 else values.max()
    else:
      top = 65535.0 if values.max() <= 65535 else float(2 ** 31 - 1)
    gray = np.clip(values / top, 0.0, 1.0).astype(np.float32)
    return np.repeat(gray[..., None], 3, axis=-1)
  if pil.mode not in ("RGB", "L", "RGBA", "LA", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
    raise UserError(f"{spec} has pixel mode {pil.mode!r}, which tlgan cannot read as colours: save it as an 8- or "
                    "16-bit PNG or a JPEG")
  return np.asarray(pil.convert("RGB"), np.float32) / 255.0


def _skimage_photo(name: str) -> np.ndarray:
  """scikit-image's image `name` (skimage.data.NAME()) as float32 RGB in [0, 1]; anything else is refused."""
  from skimage import data as skdata
  helpers = {"download_all", "file_hash", "lbp_frontal_face", "data_dir", "load"}  # not photographs
  if (name.startswith("_") or name in helpers or name not in getattr(skdata, "__all__", dir(skdata))
      or not callable(getattr(skdata, name, None))):
    raise UserError(f"scikit-image has no image {name!r}: use e.g. skimage:chelsea, skimage:astronaut or a path")
  try:
    image = np.asarray(getattr(skdata, name)())
  except Exception as e:  # needs arguments, or a download (offline), or is no image at all
    raise UserError(f"skimage:{name} could not be loaded ({type(e).__name__}): use e.g. skimage:chelsea, "
                    "skimage:astronaut or a path") from None
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4) or not np.issubdtype(image.dtype, np.number):
    raise UserError(f"skimage:{name} is not a 2-D photograph (its array is {image.dtype} {image.shape}): use e.g. "
                    "skimage:chelsea, skimage:astronaut or a path")
  image = image[..., :3].astype(np.float64)
  top = 255.0 if image.max() > 1.0 else 1.0
  if image.max() > 255:
    top = float(image.max())
  return np.clip(image / top, 0.0, 1.0).astype(np.float32)


def normalize(x: jax.Array) -> jax.Array:
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


# ---------------------------------------------------------------------------------------------------- losses


def gram(f: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, C, C): channel correlations averaged over positions."""
  n, h, w, c = f.shape
  flat = f.reshape(n, h * w, c).astype(jnp.float32)
  return jnp.einsum("npc,npd->ncd", flat, flat) / (h * w)


def swag(f: jax.Array) -> jax.Array:
  """Softmax over every position and channel of each image's activation map (Wang et al., 2021), times the
  number of activations: mean 1 whatever the image size, so that a style image of another size than the
  content image gives Gram matrices on the same scale (a plain softmax's values shrink with the map size)."""
  n = f.shape[0]
  size = f.size // n
  return (size * jax.nn.softmax(f.reshape(n, -1).astype(jnp.float32), axis=-1)).reshape(f.shape)


def total_variation(x: jax.Array) -> jax.Array:
  """Mean squared difference of neighbouring pixels (both directions)."""
  return jnp.mean(jnp.square(x[:, 1:, :, :] - x[:, :-1, :, :])) + jnp.mean(jnp.square(x[:, :, 1:, :] - x[:, :, :-1, :]))


def relative_sq_error(a: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(a - target)) / jnp.maximum(jnp.sum(jnp.square(target)), 1e-30)


# -------------------------------------------------------------------------------------------------- features


def resnet_features(model, variables) -> Callable[[jax.Array], Dict[str, jax.Array]]:
  """x in [0, 1] (N, H, W, 3) -> {stage: activation} of a tlgan ResNet in inference mode."""
  @jax.jit  # one program (called eagerly, the network would be compiled operation by operation: ~0.1 s each)
  def apply(variables, x):
    _, state = model.apply(variables, normalize(x), train=False, mutable=["intermediates"])
    return {k: v[0] for k, v in state["intermediates"].items()}
  return lambda x: apply(variables, x)


def per_channel(features: Callable) -> Callable:
  """A network trained on gray images, on colour ones: each RGB channel goes through it as a gray image (one
  batch of 3N), and the channels' features are concatenated (3x the channels)."""
  def fn(x):
    n, h, w, _ = x.shape
    gray = jnp.moveaxis(x, -1, 0).reshape(3 * n, h, w, 1)  # channel-major: [R of all images, G ..., B ...]
    out = features(jnp.repeat(gray, 3, axis=-1))
    return {k: jnp.concatenate(jnp.split(v, 3, axis=0), axis=-1) for k, v in out.items()}
  return fn


def calibrate_batch_stats(model, variables, images: Sequence[np.ndarray]):
  """BatchNorm running statistics := the statistics of `images` (averaged over them), for random weights."""
  per_image = []
  apply = jax.jit(lambda v, x: model.apply(v, normalize(x), train=True, mutable=["batch_stats"])[1])
  for image in images:
    new = apply(variables, jnp.asarray(image)[None])
    # the module blends momentum * old + (1 - momentum) * batch; recover the batch's own statistics
    m = BatchNorm.momentum
    per_image.append(jax.tree.map(lambda new_v, old_v: (new_v - m * old_v) / (1 - m),
                                  new["batch_stats"], variables["batch_stats"]))
  stats = jax.tree.map(lambda *v: sum(v) / len(v), *per_image)
  return {**variables, "batch_stats": stats}


# ---------------------------------------------------------------------------------------------- optimisation


def make_loss(features: Callable, content: np.ndarray, style: np.ndarray, *, content_layers: Sequence[str],
              style_layers: Sequence[str], content_weight: float, style_weight: float, tv_weight: float,
              smoothing: str) -> Callable[[jax.Array], Tuple[jax.Array, Dict[str, jax.Array]]]:
  """Returns loss(x) -> (total, {'content', 'style', 'tv'}) for x (1, H, W, 3) in [0, 1]."""
  if smoothing not in SMOOTHINGS:
    raise UserError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
  for name in (*content_layers, *style_layers):
    if name not in STAGES:
      raise UserError(f"unknown layer {name!r}: choose from {', '.join(STAGES)}")
  style_feats = features(jnp.asarray(style)[None])
  # SWAG's softmax at temperature = the style image's activation spread at that layer: deep random-weight
  # ResNet activations have a large spread, and exp() of them would leave one winner per map.
  temperature = {k: float(jnp.std(v)) + 1e-6 for k, v in style_feats.items()}
  if smoothing == "swag":
    smooth = lambda k, f: swag(f / temperature[k])
  else:
    smooth = lambda k, f: f.astype(jnp.float32)
  content_targets = {k: smooth(k, v) for k, v in features(jnp.asarray(content)[None]).items()
                     if k in content_layers}
  style_targets = {k: gram(smooth(k, v)) for k, v in style_feats.items() if k in style_layers}

  def loss(x):
    feats = {k: smooth(k, v) for k, v in features(x).items()}
    c = sum(relative_sq_error(feats[k], t) for k, t in content_targets.items()) / len(content_targets)
    s = sum(relative_sq_error(gram(feats[k]), t) for k, t in style_targets.items()) / len(style_targets)
    tv = total_variation(x)
    total = content_weight * c + style_weight * s + tv_weight * tv
    return total, {"content": c, "style": s, "tv": tv}

  return loss


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
  if name == "lbfgs":
    return optax.lbfgs()
  if name == "adam":
    return optax.adam(learning_rate)
  raise UserError(f"optimizer must be lbfgs or adam, got {name!r}")


def make_step(loss: Callable, tx: optax.GradientTransformation, line_search: bool = True) -> Callable:
  """A jitted (x, opt_state) -> (x, opt_state, total, parts) step. With `line_search` (L-BFGS), the optimiser
  evaluates `loss` itself and its state carries the value and gradient from one step to the next."""
  total_only = lambda x: loss(x)[0]
  value_and_grad = (optax.value_and_grad_from_state(total_only) if line_search
                    else lambda x, state: jax.value_and_grad(total_only)(x))

  @jax.jit
  def step(x, opt_state):
    value, grad = value_and_grad(x, state=opt_state)
    extra = dict(value=value, grad=grad, value_fn=total_only) if line_search else {}
    updates, opt_state = tx.update(grad, opt_state, x, **extra)
    x = optax.apply_updates(x, updates)
    return x, opt_state, value, loss(x)[1]

  return step


def pyramid(shape: Sequence[int], levels: int) -> list:
  """Zero images of sizes (H, W), (H/2, W/2), ... (`levels` of them, rounded up) for an image of `shape`."""
  n, h, w, c = shape
  return [jnp.zeros((n, -(-h // 2 ** k), -(-w // 2 ** k), c), jnp.float32) for k in range(max(1, levels))]


def render(base: jax.Array, levels: Sequence[jax.Array]) -> jax.Array:
  """base + the sum of the pyramid's levels, each upsampled (bilinear) to the base's size."""
  return base + sum(jax.image.resize(p, base.shape, "linear") if p.shape != base.shape else p for p in levels)


def initial_image(init: str, content: np.ndarray, seed: int) -> jax.Array:
  if init == "content":
    return jnp.asarray(content)[None]
  if init == "noise":
    return initializers.uniform(jax.random.key(seed), (1, *content.shape), jnp.float32)
  raise UserError(f"init must be content or noise, got {init!r}")
