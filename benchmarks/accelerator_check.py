"""The check to run the day an accelerator is lent: is tlgan right there, and how fast is it against PyTorch?

    python -m benchmarks.accelerator_check          # on the GPU/TPU JAX sees; about 2 minutes on a GPU
    python -m benchmarks.accelerator_check --tiny   # a smoke run on CPU (what the test suite does)

On whatever devices JAX sees, in one table:

  * torchvision equivalence: a torchvision resnet18 (random weights, BatchNorm statistics perturbed so that a
    BatchNorm bug shows) converted by `tlgan.pretrained.from_torchvision`; the largest logit difference between
    tlgan and torchvision on the same device, at full float32 precision on both sides (no TF32), against a
    tolerance of 1e-4 of the logits' scale.
  * the DCGAN 28x28 step and the ResNet18 32x32 step (the defaults of configs/gan.py and configs/transfer.py,
    batch 128), in float32 and bfloat16 (tlgan's `model.dtype`; PyTorch under autocast), against PyTorch eager
    on the same device, alternating rounds: images/s of both and the ratio torch time / tlgan time (median of
    the rounds), as `benchmarks.steps` reports it on CPU. On a TPU PyTorch has no device: its columns are empty.

It needs only the repository and jax, flax, optax, torch and torchvision: no TensorFlow, TFDS, ml_collections
or Grain, and no downloads (the images some accelerator hosts carry have exactly these); the test suite runs it
on CPU with those modules made unimportable.
"""

import argparse
import os
import statistics
import sys
import time

import torch  # before anything that could bring TensorFlow in (torchvision segfaults after it)
import torchvision

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import torch_reference
from benchmarks.jax_steps import JaxStep, measure
from tlgan import pretrained
from tlgan.reporting import cpu_model
from tlgan.models.dcgan import Discriminator, Generator
from tlgan.models.resnet import ResNet18
from tlgan.steps import classifier as clf
from tlgan.steps import gan as gan_step
from tlgan.models import initializers

# The defaults of configs/gan.py and configs/transfer.py (ml_collections is not there to read them; a test
# keeps these equal to the configs).
DCGAN = dict(latent_dim=100, g_features=64, d_features=64, lr=2e-4, b1=0.5, b2=0.999, loss="nonsaturating")
RESNET = dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4, num_classes=10, image_size=32)
DTYPES = {"float32": (jnp.float32, torch.float32), "bfloat16": (jnp.bfloat16, torch.bfloat16)}


def torch_device() -> str:
  """PyTorch's device next to JAX's: the GPU when JAX runs on one, the CPU when JAX does; '' on a TPU."""
  backend = jax.default_backend()
  if backend == "gpu":
    return "cuda" if torch.cuda.is_available() else ""
  return "cpu" if backend == "cpu" else ""


def equivalence(size: int) -> dict:
  """Largest |tlgan - torchvision| logit difference on this device, and the tolerance it must meet."""
  torch.manual_seed(0)
  net = torch_reference.perturbed(torchvision.models.resnet18()).eval()
  variables = pretrained.from_torchvision(net.state_dict(), "resnet18")
  x = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
  device = torch_device() or "cpu"
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  with torch.no_grad():
    ref = net.to(device)(torch.from_numpy(x).to(device)).float().cpu().numpy()
  with jax.default_matmul_precision("highest"):
    ours = jax.jit(lambda v, x: ResNet18(num_classes=1000).apply(v, x, train=False))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  diff = float(np.abs(np.asarray(ours, np.float64) - ref).max())
  tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
  return {"max_abs_diff": diff, "tolerance": tol, "ok": bool(np.isfinite(diff) and diff <= tol),
          "torch_device": device}


def jax_dcgan(batch: int, dtype) -> JaxStep:
  c = DCGAN
  kw = dict(image_shape=(28, 28, 1), dtype=dtype)
  g, d = Generator(features=c["g_features"], **kw), Discriminator(features=c["d_features"], **kw)
  tx = lambda: optax.adam(c["lr"], b1=c["b1"], b2=c["b2"])
  state = gan_step.init_state(jax.random.key(0), g, d, tx(), tx(), image_shape=(28, 28, 1),
                              latent_dim=c["latent_dim"], loss=c["loss"])
  images = initializers.uniform(jax.random.key(1), (batch, 28, 28, 1), jnp.float32, -1, 1)
  return JaxStep("DCGAN 28x28", gan_step.train_step, state, {"image": images})


def jax_resnet18(batch: int, dtype) -> JaxStep:
  c = RESNET
  model = ResNet18(num_classes=c["num_classes"], dtype=dtype)
  tx = clf.make_optimizer(learning_rate=c["learning_rate"], momentum=c["momentum"],
                          weight_decay=c["weight_decay"], total_steps=10**6)
  shape = (c["image_size"], c["image_size"], 3)
  state = clf.init_state(jax.random.key(0), model, tx, image_shape=shape, num_classes=c["num_classes"])
  batch_ = {"image": initializers.normal(jax.random.key(1), (batch, *shape), jnp.float32),
            "label": jax.random.randint(jax.random.key(2), (batch,), 0, c["num_classes"])}
  return JaxStep("ResNet18 32x32", clf.train_step, state, batch_)


def compare(name: str, batch: int, dtype_name: str, rounds: int, per_round: int) -> dict:
  jdtype, tdtype = DTYPES[dtype_name]
  ours = (jax_dcgan if name == "dcgan" else jax_resnet18)(batch, jdtype)
  device = torch_device()
  theirs = None
  if device:  # (their run() ends in float() of a loss, which waits for the device, CUDA's queue too)
    make = torch_reference.TorchDCGAN if name == "dcgan" else torch_reference.TorchResNet18
    theirs = make(batch, device=device, dtype=tdtype)
  jt, tt, ratios = measure(ours, theirs, rounds, per_round)
  return {"step": ours.name, "dtype": dtype_name, "tlgan_images_per_s": batch / statistics.median(jt),
          "torch_images_per_s": batch / statistics.median(tt) if tt else None,
          "ratio": statistics.median(ratios) if ratios else None,
          "ratio_range": (min(ratios), max(ratios)) if ratios else None, "compile_s": ours.compile_s}


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value <= 0:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
  return value


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="a smoke run: batch 8, one short round, 32x32 "
                      "equivalence (the test suite's CPU run)")
  parser.add_argument("--batch_size", type=_positive, default=128)
  parser.add_argument("--rounds", type=_positive, default=5)
  parser.add_argument("--steps_per_round", type=_positive, default=10)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args(argv)
  if args.tiny:
    args.batch_size, args.rounds, args.steps_per_round = 8, 1, 2
  dtypes = [d for d in args.dtypes.split(",") if d]
  unknown = [d for d in dtypes if d not in DTYPES]
  if unknown:
    parser.error(f"--dtypes takes {sorted(DTYPES)}, got {unknown}")
  start = time.perf_counter()
  devices = jax.devices()
  print(f"JAX {jax.__version__} on {len(devices)} {jax.default_backend()} device(s) ({devices[0].device_kind}); "
        f"PyTorch {torch.__version__} on {torch_device() or 'no device (TPU)'}; host CPU: {cpu_model()}, "
        f"{os.cpu_count()} threads", flush=True)

  eq = equivalence(32 if args.tiny else 224)
  print(f"\n| check | result |\n|---|---|\n| torchvision resnet18 logits, {eq['torch_device']} vs "
        f"{jax.default_backend()} | max abs diff {eq['max_abs_diff']:.2e} (tolerance {eq['tolerance']:.1e}): "
        f"{'OK' if eq['ok'] else 'FAILED'} |", flush=True)

  print(f"\n| step (batch {args.batch_size}) | dtype | tlgan images/s | PyTorch images/s | torch time / tlgan time "
        f"(median of {args.rounds} rounds) | min..max | tlgan compile s |")
  print("|---|---|---|---|---|---|---|")
  for name in ("dcgan", "resnet18"):
    for dtype_name in dtypes:
      r = compare(name, args.batch_size, dtype_name, args.rounds, args.steps_per_round)
      torch_cell = f"{r['torch_images_per_s']:,.0f}" if r["ratio"] is not None else "-"
      ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
      spread = f"{r['ratio_range'][0]:.2f}..{r['ratio_range'][1]:.2f}" if r["ratio"] is not None else "-"
      print(f"| {r['step']} | {dtype_name} | {r['tlgan_images_per_s']:,.0f} | {torch_cell} | {ratio} | {spread} | "
            f"{r['compile_s']:.1f} |", flush=True)
  print(f"\n{time.perf_counter() - start:.0f} s in all")
  return 0 if eq["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
