"""Style transfer runs: load the images and the feature network, optimise, write PNGs, curves and a summary.

With `compare_smoothing` the same optimisation also runs with plain Gram matrices, and the side-by-side PNG
shows both results (SWAG vs none) next to the content and style images.
"""

import logging
import os
import sys
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from tlgan import config_checks, feature_networks, files, pretrained, reporting, stopping, style
from tlgan.errors import ConfigError, UserError
from tlgan.models.resnet import STAGES
from tlgan.trainers import loop


FEATURES = ("auto", "imagenet", "fashion_mnist", "random")
# Every field with a fixed set of values, and the table that holds them (checked before anything is read).
CHOICES = {"features": FEATURES, "smoothing": ("auto",) + style.SMOOTHINGS, "optimizer": style.OPTIMIZERS,
           "init": style.INITS, "content_layers": STAGES, "style_layers": STAGES}
_N = config_checks
# Every numeric field, by meaning.
NUMBERS = {"seed": _N.NON_NEGATIVE_INT, "image_size": _N.Number(int, 32), "content_weight": _N.NON_NEGATIVE,
           "style_weight": _N.NON_NEGATIVE, "tv_weight": _N.NON_NEGATIVE, "scales": _N.POSITIVE_INT,
           "pyramid_levels": _N.POSITIVE_INT, "learning_rate": _N.POSITIVE, "num_steps": _N.POSITIVE_INT,
           "log_every": _N.POSITIVE_INT}


def check_config(config) -> None:
  """Every value the style trainer can refuse from the config alone."""
  config_checks.check_choices(config, CHOICES)
  config_checks.check_numbers(config, NUMBERS)


def feature_network(config, content: np.ndarray, style_image: np.ndarray):
  """(features fn, description, kind): converted ImageNet weights; offline, tlgan's Fashion-MNIST ResNet18 on
  each colour channel (the metric network tlgan ships); or random weights with BatchNorm calibrated on the two
  images."""
  choice = config.features
  have_weights = bool(config.weights) and files.isfile(config.weights)
  if choice == "imagenet" and not have_weights:
    raise UserError(f"features='imagenet' needs {config.weights or 'a weights file'}: convert it with "
                    "python -m tlgan.pretrained --arch=resnet18 --output=weights/resnet18.msgpack")
  if choice == "auto":
    choice = "imagenet" if have_weights else "fashion_mnist"
    if choice == "fashion_mnist":
      logging.warning("No ImageNet weights at %r: offline features, tlgan's ResNet18 trained on Fashion-MNIST "
                      "applied to each colour channel (convert weights with python -m tlgan.pretrained for the "
                      "usual result)", config.weights)
  if choice == "imagenet":
    model, variables, meta = pretrained.open_network(config.weights)
    if meta.arch != "resnet18":
      raise UserError(f"{config.weights} holds {meta.arch} weights; style transfer uses resnet18")
    return (style.resnet_features(model, jax.tree.map(jnp.asarray, variables)), f"resnet18 ({config.weights})",
            choice)
  if choice == "fashion_mnist":
    path = feature_networks.shipped_weights("fashion_mnist")
    model, variables, meta = pretrained.open_network(path)
    features = style.per_channel(style.resnet_features(model, jax.tree.map(jnp.asarray, variables)))
    return features, f"{meta.name} per colour channel ({path})", choice
  model = pretrained.model_for("resnet18", 1000)
  fresh = jax.jit(lambda key: model.init(key, jnp.zeros((1, 64, 64, 3)), train=False))(jax.random.key(config.seed))
  variables = style.calibrate_batch_stats(model, fresh, [content, style_image])
  return style.resnet_features(model, variables), f"resnet18 (random weights, seed {config.seed})", choice


def scale_sizes(config) -> list:
  """Coarse to fine: image_size / 2^(scales-1), ..., image_size."""
  if config.scales < 1:
    raise ConfigError(f"scales must be 1 or more, got {config.scales}")
  return [max(32, config.image_size >> k) for k in reversed(range(config.scales))]


def optimise(config, features, sizes, smoothing: str, writer, tag: str):
  """Coarse to fine: at each size, `num_steps` steps on the pyramid of the previous result, upsampled."""
  losses = []
  for size in sizes:
    content, style_image = style.load_image(config.content, size), style.load_image(config.style, size)
    losses.append((content, style.make_loss(
        features, content, style_image, content_layers=tuple(config.content_layers),
        style_layers=tuple(config.style_layers), content_weight=config.content_weight,
        style_weight=config.style_weight, tv_weight=config.tv_weight, smoothing=smoothing)))
  tx = style.make_optimizer(config.optimizer, config.learning_rate)
  final_content, final_loss = losses[-1]
  # The reduction is measured on the final size: the initial image there vs the result.
  first = {k: float(v) for k, v in
           jax.jit(lambda x: final_loss(x)[1])(style.initial_image(config.init, final_content, config.seed)).items()}
  history = [{"step": 0, "size": sizes[-1], **first}]
  t0 = time.perf_counter()
  x = None
  total = config.num_steps * len(sizes)
  with tqdm(total=total, unit="step", desc=f"style ({smoothing})", file=sys.stderr,
            disable=not reporting.is_writer(), mininterval=2.0) as bar:
    for s, ((content, loss), size) in enumerate(zip(losses, sizes)):
      if x is None:
        x = style.initial_image(config.init, content, config.seed)
      else:
        x = jax.image.resize(x, (1, *content.shape), "linear")
      base = x
      step = style.make_step(lambda levels, base=base, loss=loss: loss(style.render(base, levels)), tx,
                             line_search=config.optimizer == "lbfgs")
      levels = style.pyramid(base.shape, config.pyramid_levels)
      # Strongly typed from the start: optax's initial line-search info holds weak-typed scalars, which would
      # make the second call compile the step again.
      opt_state = jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), tx.init(levels))
      for i in range(1, config.num_steps + 1):
        stopping.check("optimising the image (style transfer keeps no checkpoints: a rerun starts over)")
        levels, opt_state, _, parts = step(levels, opt_state)
        if i % config.log_every == 0 or i == config.num_steps:
          row = {k: float(v) for k, v in parts.items()}
          if not all(np.isfinite(v) for v in row.values()):
            raise UserError(f"style optimisation diverged at step {i} ({row}): lower learning_rate or use lbfgs")
          n = s * config.num_steps + i
          history.append({"step": n, "size": size, **row})
          writer.write(n, {f"{tag}/{k}": v for k, v in row.items()})
          bar.set_postfix(size=size, style=f"{row['style']:.3g}", content=f"{row['content']:.3g}")
        bar.update(1)
      x = style.render(base, levels)
  seconds = time.perf_counter() - t0
  result = np.clip(np.asarray(x[0]), 0.0, 1.0)
  return result, history, seconds


def to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def side_by_side(images, height: int, pad: int = 8) -> np.ndarray:
  """Images scaled to one height, left to right on white."""
  tiles = []
  for image in images:
    pil = Image.fromarray(to_uint8(image))
    pil = pil.resize((max(1, round(pil.width * height / pil.height)), height), Image.BICUBIC)
    tiles.append(np.asarray(pil))
  width = sum(t.shape[1] for t in tiles) + pad * (len(tiles) + 1)
  canvas = np.full((height + 2 * pad, width, 3), 255, np.uint8)
  x = pad
  for t in tiles:
    canvas[pad:pad + height, x:x + t.shape[1]] = t
    x += t.shape[1] + pad
  return canvas


def save_png(path: str, image_uint8: np.ndarray) -> None:
  if reporting.is_writer():
    files.atomic_write(path, lambda f: Image.fromarray(image_uint8).save(f, format="PNG"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Stylises config.content (no checkpoints: a rerun starts over, so `allow_config_change` has no use)."""
  wall = time.time()
  check_config(config)
  loop.check_workdir(workdir)
  sizes = scale_sizes(config)
  content = style.load_image(config.content, config.image_size)
  style_image = style.load_image(config.style, config.image_size)
  features, description, kind = feature_network(config, content, style_image)
  logging.info("Content %s %s, style %s %s, features: %s; sizes %s", config.content, content.shape, config.style,
               style_image.shape, description, sizes)
  main = config.smoothing
  if main == "auto":  # SWAG fixes ImageNet ResNets' peaky activations; the offline features do better without
    main = "swag" if kind == "imagenet" else "none"
  smoothings = [main] + (["none" if main == "swag" else "swag"] if config.compare_smoothing else [])
  loop.claim_workdir(workdir)
  writer = reporting.MetricWriter(workdir)
  results, runs = {}, {}
  try:
    for smoothing in smoothings:
      image, history, seconds = optimise(config, features, sizes, smoothing, writer, smoothing)
      results[smoothing] = image
      runs[smoothing] = {"history": history, "seconds": round(seconds, 2),
                         "style_loss_reduction": history[0]["style"] / max(history[-1]["style"], 1e-30),
                         "final": history[-1]}
      logging.info("%s: style loss %.4g -> %.4g (x%.0f smaller), content %.4g, %.1f s", smoothing,
                   history[0]["style"], history[-1]["style"], runs[smoothing]["style_loss_reduction"],
                   history[-1]["content"], seconds)
  finally:
    writer.close()
  save_png(os.path.join(workdir, "stylized.png"), to_uint8(results[main]))
  height = min(256, content.shape[0])
  save_png(os.path.join(workdir, "side_by_side.png"),
           side_by_side([content, style_image] + [results[s] for s in smoothings], height))
  history = [{"step": r["step"], **{f"{k} ({s})": v for k, v in r.items() if k != "step"}}
             for s in smoothings for r in runs[s]["history"]]
  reporting.plot_curves(os.path.join(workdir, "loss_curve.png"), history,
                        [f"{k} ({s})" for k in ("style", "content") for s in smoothings],
                        title=f"style transfer, {description}; sizes {sizes} (the curves jump at each new size)",
                        log_keys=[f"style ({s})" for s in smoothings])
  summary = {
      "experiment": "style",
      "content": config.content, "style": config.style, "features": description,
      "image_shape": list(content.shape), "optimizer": config.optimizer, "num_steps": config.num_steps,
      "sizes": sizes, "smoothing": main,
      "runs": {s: {k: v for k, v in r.items() if k != "history"} for s, r in runs.items()},
      "outputs": {"stylized": "stylized.png", "side_by_side": "side_by_side.png (content, style, "
                  + ", ".join(f"result with smoothing={s}" for s in smoothings) + ")",
                  "loss_curve": "loss_curve.png"},
      "wall_time_s": round(time.time() - wall, 2),
      "status": "completed",
  }
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
