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

from tlgan import pretrained, reporting, style
from tlgan.errors import ConfigError, UserError
from tlgan.trainers import loop


def feature_network(config, content: np.ndarray, style_image: np.ndarray):
  """(features fn, description): converted ImageNet weights, or calibrated random weights offline."""
  model = pretrained.model_for("resnet18", 1000)
  choice = config.features
  if choice not in ("auto", "imagenet", "random"):
    raise ConfigError(f"features must be auto, imagenet or random, got {choice!r}")
  have_weights = bool(config.weights) and os.path.isfile(config.weights)
  if choice == "imagenet" and not have_weights:
    raise UserError(f"features='imagenet' needs {config.weights or 'a weights file'}: convert it with "
                    "python -m tlgan.pretrained --arch=resnet18 --output=weights/resnet18.msgpack")
  fresh = model.init(jax.random.key(config.seed), jnp.zeros((1, 64, 64, 3)), train=False)
  if choice != "random" and have_weights:
    weights, meta = pretrained.load(config.weights)
    if meta.get("arch") != "resnet18":
      raise UserError(f"{config.weights} holds {meta.get('arch')} weights; style transfer uses resnet18")
    variables, _ = pretrained.merge_pretrained(fresh, weights, ())
    return style.resnet_features(model, jax.tree.map(jnp.asarray, variables)), f"resnet18 ({config.weights})"
  logging.warning("No ImageNet weights at %r: random ResNet18 features (seed %d), BatchNorm calibrated on the "
                  "two images (convert weights with python -m tlgan.pretrained for the usual result)",
                  config.weights, config.seed)
  variables = style.calibrate_batch_stats(model, fresh, [content, style_image])
  return style.resnet_features(model, variables), f"resnet18 (random weights, seed {config.seed})"


def optimise(config, features, content, style_image, smoothing: str, writer, tag: str):
  loss = style.make_loss(features, content, style_image, content_layers=tuple(config.content_layers),
                         style_layers=tuple(config.style_layers), content_weight=config.content_weight,
                         style_weight=config.style_weight, tv_weight=config.tv_weight, smoothing=smoothing)
  tx = style.make_optimizer(config.optimizer, config.learning_rate)
  step = style.make_step(loss, tx)
  x = style.initial_image(config.init, content, config.seed)
  # Strongly typed from the start: optax's initial line-search info holds weak-typed scalars, which would make
  # the second call compile the step again.
  opt_state = jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), tx.init(x))
  first = {k: float(v) for k, v in loss(x)[1].items()}
  history = [{"step": 0, **first}]
  t0 = time.perf_counter()
  with tqdm(total=config.num_steps, unit="step", desc=f"style ({smoothing})", file=sys.stderr,
            disable=not reporting.is_writer(), mininterval=2.0) as bar:
    for i in range(1, config.num_steps + 1):
      x, opt_state, total, parts = step(x, opt_state)
      if i % config.log_every == 0 or i == config.num_steps:
        row = {k: float(v) for k, v in parts.items()}
        if not all(np.isfinite(v) for v in row.values()):
          raise UserError(f"style optimisation diverged at step {i} ({row}): lower learning_rate or use lbfgs")
        history.append({"step": i, **row})
        writer.write(i, {f"{tag}/{k}": v for k, v in row.items()})
        bar.set_postfix(style=f"{row['style']:.3g}", content=f"{row['content']:.3g}")
      bar.update(1)
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
    reporting.atomic_write(path, lambda f: Image.fromarray(image_uint8).save(f, format="PNG"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  wall = time.time()
  loop.check_workdir(workdir)
  if config.num_steps <= 0:
    raise ConfigError(f"num_steps must be positive, got {config.num_steps}")
  if config.image_size < 32:
    raise ConfigError(f"image_size {config.image_size} is too small for ResNet18 features: use 128 or more")
  content = style.load_image(config.content, config.image_size)
  style_image = style.load_image(config.style, config.image_size)
  features, description = feature_network(config, content, style_image)
  logging.info("Content %s %s, style %s %s, features: %s", config.content, content.shape, config.style,
               style_image.shape, description)
  smoothings = [config.smoothing] + (["none" if config.smoothing == "swag" else "swag"]
                                     if config.compare_smoothing else [])
  writer = reporting.MetricWriter(workdir)
  results, runs = {}, {}
  try:
    for smoothing in smoothings:
      image, history, seconds = optimise(config, features, content, style_image, smoothing, writer, smoothing)
      results[smoothing] = image
      runs[smoothing] = {"history": history, "seconds": round(seconds, 2),
                         "style_loss_reduction": history[0]["style"] / max(history[-1]["style"], 1e-30),
                         "final": history[-1]}
      logging.info("%s: style loss %.4g -> %.4g (x%.0f smaller), content %.4g, %.1f s", smoothing,
                   history[0]["style"], history[-1]["style"], runs[smoothing]["style_loss_reduction"],
                   history[-1]["content"], seconds)
  finally:
    writer.close()
  main = config.smoothing
  save_png(os.path.join(workdir, "stylized.png"), to_uint8(results[main]))
  height = min(256, content.shape[0])
  save_png(os.path.join(workdir, "side_by_side.png"),
           side_by_side([content, style_image] + [results[s] for s in smoothings], height))
  history = [{"step": r["step"], **{f"{k} ({s})": v for k, v in r.items() if k != "step"}}
             for s in smoothings for r in runs[s]["history"]]
  reporting.plot_curves(os.path.join(workdir, "loss_curve.png"), history,
                        [f"{k} ({s})" for k in ("style", "content") for s in smoothings],
                        title=f"style transfer, {description}")
  summary = {
      "experiment": "style",
      "content": config.content, "style": config.style, "features": description,
      "image_shape": list(content.shape), "optimizer": config.optimizer, "num_steps": config.num_steps,
      "runs": {s: {k: v for k, v in r.items() if k != "history"} for s, r in runs.items()},
      "outputs": {"stylized": "stylized.png", "side_by_side": "side_by_side.png (content, style, "
                  + ", ".join(f"result with smoothing={s}" for s in smoothings) + ")",
                  "loss_curve": "loss_curve.png"},
      "wall_time_s": round(time.time() - wall, 2),
      "status": "completed",
  }
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
