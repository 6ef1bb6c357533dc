"""Training-step speed: tlgan's compiled steps, the machine's matmul peak, and (optionally) PyTorch eager.

    python -m benchmarks.steps                      # tlgan only
    python -m benchmarks.steps --against-torch      # + the PyTorch reference, alternating A B A B
    python -m benchmarks.steps --only=dcgan,projected --batch_size=64   # the projected discriminator's cost
    python -m benchmarks.steps --only=dp_resnet18 --against-torch      # DP-SGD vs Opacus, and vs non-private

Steps (float32, batch 128 by default):
  * DCGAN 28x28: one D update and one G update with Adam (2e-4, betas 0.5/0.999), non-saturating BCE loss;
    G: z=100 -> 256@7x7 -> 128@14x14 -> 1@28x28, D mirrored (the pytorch/examples DCGAN adapted to 28x28).
  * ResNet18 32x32x3, torchvision stem, 10 classes: SGD momentum 0.9, weight decay 5e-4, cross-entropy.
  * dp_resnet18: DP-SGD (per-example clipping to 1, noise 1.0, SGD momentum) on the GroupNorm ResNet18, against
    Opacus on torchvision's resnet18 with GroupNorm(32, c); also timed, alternating, against tlgan's own
    non-private step of the same model (the cost of privacy; goal: within 3x). Goal against Opacus: 2x.

For each step the table gives the median wall time, images/s, GFLOP/s (FLOPs from XLA's cost analysis of the
compiled step, the same count used for PyTorch's row), the fraction of the matmul peak measured in this run
(the best of XLA's and PyTorch's float32 GEMM), and XLA's compile time. With --against-torch both frameworks
run in one process on the same threads, alternating rounds (A B A B ...); the ratio torch time / tlgan time is
computed per round and reported as its median with the min..max over rounds. Absolute CPU times on a shared
machine are noise; the ratios are the result. CPU numbers say nothing about GPUs.
"""

# torchvision segfaults when imported after TensorFlow (pulled in by tlgan.data): torch goes first.
import sys

if "--against-torch" in sys.argv or "--against_torch" in sys.argv:
  from benchmarks import torch_reference  # noqa: F401  (imports torch and torchvision)

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import jax
import jax.numpy as jnp

from tlgan import reporting
from tlgan.models import layers
from benchmarks.jax_steps import (jax_dcgan, jax_dp_resnet18, jax_gn_resnet18, jax_projected_gan, jax_resnet18,
                                  load_note, measure)

flags.DEFINE_bool("against_torch", False, "Also run the PyTorch eager reference (needs the [torch] extra).")
flags.DEFINE_integer("batch_size", 128, "Batch size of both steps.", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Alternating rounds (tlgan, then torch) per step.", lower_bound=1)
flags.DEFINE_integer("steps_per_round", 4, "Timed steps per framework per round.", lower_bound=1)
flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "matmul"], "tlgan's convolution implementation.")
flags.DEFINE_enum("weight_gradient", "auto", layers.WEIGHT_GRADIENT_FORMS,
                  "How the CPU GEMMs' weight gradients are formed (tlgan.models.layers.transposed_weight_gradient).")
flags.DEFINE_list("only", ["dcgan", "resnet18"], "Which steps to run (dcgan, resnet18, projected, dp_resnet18).")
flags.DEFINE_integer("dp_microbatch", 0, "dp_resnet18: examples whose gradient norms are computed at once "
                     "(0: all).", lower_bound=0)
flags.DEFINE_enum("dp_impl", "ghost", ["ghost", "reweight", "materialize"],
                  "dp_resnet18: how per-example clipping is computed (tlgan.steps.private.clipped_grad_sum).")
flags.DEFINE_string("json_out", "", "Also write the rows as JSON to this file (benchmarks.xla_flags reads it).")
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------------- peak


def jax_matmul_peak(n: int = 2048, reps: int = 7) -> float:
  """Best float32 GFLOP/s of one n x n x n GEMM compiled by XLA."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
  return 2 * n**3 / best / 1e9


def torch_matmul_peak(n: int = 2048, reps: int = 7) -> float:
  torch = torch_reference.torch
  a, b = torch.randn(n, n), torch.randn(n, n)
  torch.mm(a, b)
  best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
  return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


# -------------------------------------------------------------------------------------------------- report


def main(_):
  load_before = os.getloadavg()[0]
  layers.weight_gradient_form = FLAGS.weight_gradient
  if FLAGS.against_torch:
    threads = torch_reference.torch.get_num_threads()
  dp = lambda batch, conv_impl: jax_dp_resnet18(batch, conv_impl, FLAGS.dp_microbatch, FLAGS.dp_impl)
  builders = {"dcgan": (jax_dcgan, "TorchDCGAN"), "resnet18": (jax_resnet18, "TorchResNet18"),
              "projected": (jax_projected_gan, None),  # no PyTorch reference for the projected D
              "dp_resnet18": (dp, "TorchOpacusResNet18")}
  goals = {"dp_resnet18": 2.0}  # against Opacus; the others against PyTorch eager
  unknown = set(FLAGS.only) - set(builders)
  if unknown:
    raise app.UsageError(f"--only takes {sorted(builders)}, got {sorted(unknown)}")
  peaks = {"XLA": jax_matmul_peak()}
  if FLAGS.against_torch:
    peaks["PyTorch"] = torch_matmul_peak()
  peak = max(peaks.values())

  rows, ratio_rows, records = [], [], []
  for name in FLAGS.only:
    make_jax, make_torch = builders[name]
    js = make_jax(FLAGS.batch_size, FLAGS.conv_impl)
    ts = getattr(torch_reference, make_torch)(FLAGS.batch_size) if FLAGS.against_torch and make_torch else None
    jax_times, torch_times, ratios = measure(js, ts, FLAGS.rounds, FLAGS.steps_per_round)
    for who, times, compile_s in (("tlgan (JAX, %s convs)" % FLAGS.conv_impl, jax_times, f"{js.compile_s:.1f}"),
                                  ("PyTorch eager", torch_times, "-")):
      if not times:
        continue
      med = statistics.median(times)
      gflops = js.flops / med / 1e9
      rows.append(f"| {js.name} | {who} | {med * 1e3:,.0f} | {FLAGS.batch_size / med:,.0f} | {gflops:,.0f} | "
                  f"{gflops / peak:.0%} | {compile_s} |")
      records.append({"step": name, "name": js.name, "framework": who, "median_s": med,
                      "compile_s": js.compile_s if who.startswith("tlgan") else None})
    if ratios:
      goal = goals.get(name, 1.25)
      ratio_rows.append(f"| {js.name} | {statistics.median(ratios):.2f}x | {min(ratios):.2f}..{max(ratios):.2f} | "
                        f"{goal:g}x: {'OK' if statistics.median(ratios) >= goal else 'below the goal'} |")
    if name == "dp_resnet18":  # the cost of privacy: the same model's non-private step, alternating
      plain = jax_gn_resnet18(FLAGS.batch_size, FLAGS.conv_impl)
      dp_times, plain_times, slowdowns = measure(js, plain, FLAGS.rounds, FLAGS.steps_per_round)
      slowdowns = [1 / r for r in slowdowns]  # DP time / non-private time
      med = statistics.median(plain_times)
      rows.append(f"| {plain.name} | tlgan (JAX, {FLAGS.conv_impl} convs) | {med * 1e3:,.0f} | "
                  f"{FLAGS.batch_size / med:,.0f} | {plain.flops / med / 1e9:,.0f} | "
                  f"{plain.flops / med / 1e9 / peak:.0%} | {plain.compile_s:.1f} |")
      ratio_rows.append(f"| cost of privacy: DP-SGD time / non-private time (tlgan, same model) | "
                        f"{statistics.median(slowdowns):.2f}x | {min(slowdowns):.2f}..{max(slowdowns):.2f} | "
                        f"at most 3x: {'OK' if statistics.median(slowdowns) <= 3 else 'above the goal'} |")
      del plain
    del js, ts

  load = load_note(load_before, os.getloadavg()[0])
  if FLAGS.json_out:
    reporting.write_json(FLAGS.json_out, {"rows": records, "peaks_gflops": peaks, "load": load,
                                          "cpu": reporting.cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", "")})
  print(f"\n{reporting.cpu_model()}; {load}")
  if jax.default_backend() == "cpu":
    print(layers.describe_cpu_gemms())
  print(f"Batch {FLAGS.batch_size}, float32, {jax.device_count()} {jax.default_backend()} device(s), "
        f"{os.cpu_count()} CPU threads" + (f" (torch: {threads})" if FLAGS.against_torch else "") + "; "
        + ", ".join(f"{k} matmul peak {v:,.0f} GFLOP/s" for k, v in peaks.items()))
  print("\n| step | framework | median ms | images/s | GFLOP/s (XLA count) | of matmul peak | compile s |")
  print("|---|---|---|---|---|---|---|")
  print("\n".join(rows))
  if ratio_rows:
    print(f"\n| step | speed-up torch time / tlgan time (median of {FLAGS.rounds} rounds) | min..max | goal |")
    print("|---|---|---|---|")
    print("\n".join(ratio_rows))


if __name__ == "__main__":
  sys.argv = [a.replace("--against-torch", "--against_torch") for a in sys.argv]  # the spelling in the docs
  app.run(main)
