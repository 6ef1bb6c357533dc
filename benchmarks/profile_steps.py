"""Where a compiled tlgan step spends its time on the CPU, by kind of operation, next to PyTorch's.

    python -m benchmarks.profile_steps --against-torch          # DCGAN and ResNet18, batch 128
    python -m benchmarks.profile_steps --only=resnet18 --top=15

tlgan's step runs under `jax.profiler`; every operation XLA executed (a GEMM, a fusion, a concatenation, ...)
is timed from its start to its completion (an operation may use both threads inside, and independent operations
may run at the same time, one per thread: the operations' times add up to about the wall time, more when
operations overlap), and attributed to one kind through the optimised HLO and its metadata (the module path of
the layer it came from):

  GEMM forward / input gradient / weight gradient: the matrix products (XLA's dots, whichever library runs them),
      with their GFLOP/s (2*M*N*K / time); the gradients are the products JAX's transpose rules emit, a weight
      gradient being the one whose output has a kernel's shape.
  conv data movement: the rest of a convolution layer's work: patch extraction (im2col), col2im, pads, copies.
  normalisation: BatchNorm / GroupNorm statistics and their gradients.
  pooling: reduce-window operations and what XLA builds for their gradients.
  other: activations, residual adds, the loss and the optimiser.

With --against-torch the PyTorch eager reference of the same step (`benchmarks.torch_reference`) runs under
`torch.profiler`, its operators' self CPU time summed into convolutions (oneDNN), normalisation, pooling and
other. CPU utilisation is the process's CPU time over wall time x cores, measured without a profiler. The
ratio of the two frameworks' step times is `benchmarks.steps --against-torch`'s job (alternating rounds);
this script says where the time goes.
"""

# torchvision segfaults when imported after TensorFlow (pulled in by tlgan): torch goes first.
import sys

if "--against-torch" in sys.argv or "--against_torch" in sys.argv:
  from benchmarks import torch_reference  # noqa: F401

import bisect
import collections
import glob
import gzip
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import jax

from tlgan import reporting
from tlgan.models import layers
from benchmarks.jax_steps import jax_dcgan, jax_resnet18, load_note

flags.DEFINE_list("only", ["dcgan", "resnet18"], "Which steps to profile (dcgan, resnet18).")
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_integer("steps", 5, "Profiled calls (after warm-up).", lower_bound=1)
flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "matmul"], "tlgan's convolution implementation.")
flags.DEFINE_enum("weight_gradient", "auto", layers.WEIGHT_GRADIENT_FORMS,
                  "How the CPU GEMMs' weight gradients are formed (tlgan.models.layers.transposed_weight_gradient).")
flags.DEFINE_bool("against_torch", False, "Also profile the PyTorch eager reference (torch.profiler, by operator).")
flags.DEFINE_integer("top", 10, "How many of the slowest operations to list.", lower_bound=0)
FLAGS = flags.FLAGS

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w\-]*)\((.*)$")
_COMP = re.compile(r"^%([\w.\-]+) \((.*)\) -> .* \{$")
_SHAPE = re.compile(r"\[([\d,]*)\]")


def _dims(shape: str):
  m = _SHAPE.search(shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


# Module names in HLO metadata (`.../layer1_0/conv2/...`, `.../Conv_1/...`): which layer an operation belongs to.
_CONV = re.compile(r"/(conv\d*|downsample_conv|Conv_\d+|ConvTranspose_\d+|conv_t?\d*)/")
_NORM = re.compile(r"/(bn\d*|downsample_bn|BatchNorm_\d+|GroupNorm_\d+|norm\d*)/")
KINDS = ("GEMM forward", "GEMM input gradient", "GEMM weight gradient", "conv data movement", "normalisation",
         "pooling", "other")


def parse_hlo(text: str):
  """{top-level instruction name: (kind, flops, metadata op_name)} from an optimised HLO module's text."""
  comps, current, entry = {}, None, None
  for line in text.splitlines():
    m = _COMP.match(line) or re.match(r"^ENTRY %([\w.\-]+) ", line)
    if m:
      current = comps.setdefault(m.group(1), [])
      entry = m.group(1) if line.startswith("ENTRY") else entry
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      current.append(m.groups())
  shapes = {name: _dims(shape) for body in comps.values() for name, shape, _, _ in body}

  def dots(shape, op, rest):  # [(flops, rhs dims, out dims)] of the dots an instruction runs, called ones too
    found = [_dot(shape, rest, shapes)] if op == "dot" else []
    for comp in re.findall(r"calls=%([\w.\-]+)", rest):
      for instruction in comps.get(comp, []):
        found += dots(*instruction[1:])
    return found

  entries = []  # (name, op, metadata, dots) of each top-level instruction
  for name, shape, op, rest in comps.get(entry, []):
    meta = re.search(r'op_name="([^"]*)"', rest)
    entries.append((name, op, meta.group(1) if meta else "", dots(shape, op, rest)))
  # A weight gradient's output is a kernel: the shape of some forward product's right operand.
  kernels = {tuple(sorted(rhs)) for _, _, meta, found in entries if "transpose(" not in meta for _, rhs, _ in found}
  table = {}
  for name, op, meta, found in entries:
    flops = sum(f for f, _, _ in found)
    if flops:
      if "transpose(" not in meta:
        kind = "GEMM forward"
      elif any(tuple(sorted(out)) in kernels for _, _, out in found):
        kind = "GEMM weight gradient"
      else:
        kind = "GEMM input gradient"
    elif "reduce-window" in name or "iota" in name or "reduce_window" in meta or "select-and-scatter" in name:
      kind = "pooling"
    elif op == "concatenate" or _CONV.search(meta):
      kind = "conv data movement"
    elif _NORM.search(meta):
      kind = "normalisation"
    else:
      kind = "other"
    table[name] = (kind, flops, meta)
  return table


def _dot(shape, rest, shapes):
  """(2*M*N*K, right operand's dims, output dims) of a dot instruction."""
  lhs, rhs = re.match(r"%([\w.\-]+), %([\w.\-]+)", rest).groups()
  contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
  k = math.prod(shapes[lhs][int(d)] for d in contract.split(",") if d)
  return 2.0 * math.prod(_dims(shape)) * k, shapes[rhs], _dims(shape)


def op_times(trace_dir: str):
  """{operation name: summed microseconds from its start to its completion} over the profiled calls.

  XLA's CPU runtime traces each operation (thunk) where it starts, and an `end: <name>` event where an
  asynchronous one (a GEMM handed to Eigen's threads, say) completes: the time is the span between the two."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for e in events:
    if e["name"].startswith("end: "):
      ends[e["name"][5:]].append(e["ts"] + e["dur"])
    else:
      starts[e["name"]].append((e["ts"], e["ts"] + e["dur"]))
  times = collections.Counter()
  for name, spans in starts.items():
    done = sorted(ends.get(name, []))
    for t0, t1 in sorted(spans):
      i = bisect.bisect_left(done, t0)  # this call's completion: the first `end:` after the start
      if i < len(done):
        t1 = max(t1, done.pop(i))
      times[name] += t1 - t0
  return times


def profile(step, calls: int):
  """(per-call wall s, CPU utilisation, op table, {op name: s per call}) of a jax_steps.JaxStep."""
  table = parse_hlo(step.compiled.as_text())
  wall, cpu = _wall_and_cpu(step.run, calls)
  trace_dir = tempfile.mkdtemp(prefix="tlgan-profile-")
  try:
    jax.profiler.start_trace(trace_dir)
    for _ in range(calls):
      step.run()
    jax.profiler.stop_trace()
    spans = op_times(trace_dir)
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  ops = {name: spans.get(name, 0) / 1e6 / calls for name in table}
  return wall, cpu, table, ops


def _wall_and_cpu(run, calls: int):
  """Median wall seconds per call, and the process's CPU time over the calls' wall time x cores (no profiler)."""
  walls, cpu0, t0 = [], time.process_time(), time.perf_counter()
  for _ in range(calls):
    t = time.perf_counter()
    run()
    walls.append(time.perf_counter() - t)
  return statistics.median(walls), (time.process_time() - cpu0) / (time.perf_counter() - t0) / os.cpu_count()


TORCH_KINDS = (("convolutions", ("conv",)), ("normalisation", ("batch_norm", "group_norm")),
               ("pooling", ("max_pool",)))


def torch_profile(step, calls: int):
  """(wall s, CPU utilisation, {kind: self CPU s per call}) of a torch_reference step, by aten operator."""
  import torch
  wall, cpu = _wall_and_cpu(step.run, calls)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(calls):
      step.run()
  kinds = collections.Counter()
  for e in prof.key_averages():
    kind = next((k for k, keys in TORCH_KINDS if any(key in e.key for key in keys)), "other")
    kinds[kind] += e.self_cpu_time_total / 1e6 / calls
  return wall, cpu, kinds


def report(step, wall, cpu, table, ops, top: int, torch_result=None):
  by_kind, flops_by_kind = collections.Counter(), collections.Counter()
  for name, seconds in ops.items():
    kind, flops, _ = table[name]
    by_kind[kind] += seconds
    flops_by_kind[kind] += flops
  total = sum(by_kind.values())
  print(f"\n{step.name}: tlgan {wall * 1e3:,.0f} ms per step (median of {FLAGS.steps}), CPU utilisation "
        f"{cpu:.0%} of {os.cpu_count()} threads; operations' time {total * 1e3:,.0f} ms "
        f"(more than the wall time where operations ran side by side)")
  print("\n| kind | tlgan ms per step | share | GFLOP | GFLOP/s |\n|---|---|---|---|---|")
  for kind in KINDS:
    sec, fl = by_kind.get(kind, 0.0), flops_by_kind.get(kind, 0.0)
    rate = f"{fl / sec / 1e9:,.0f}" if fl and sec else "-"
    print(f"| {kind} | {sec * 1e3:,.1f} | {sec / total:.0%} | {fl / 1e9:,.2f} | {rate} |")
  if torch_result:
    t_wall, t_cpu, t_kinds = torch_result
    # tlgan's operations overlap (operations' time > wall): scaled to the wall time, to set beside PyTorch's
    # operators, which run one after the other (their self times add up to about its wall time).
    scale = wall / total
    conv = sum(by_kind.get(k, 0.0) for k in KINDS[:4])
    ours = {"convolutions": conv, "normalisation": by_kind.get("normalisation", 0.0),
            "pooling": by_kind.get("pooling", 0.0), "other": by_kind.get("other", 0.0)}
    print(f"\nAgainst PyTorch eager (same step, same threads): PyTorch {t_wall * 1e3:,.0f} ms per step, CPU "
          f"utilisation {t_cpu:.0%}; tlgan {wall * 1e3:,.0f} ms. Convolutions: GEMMs + conv data movement "
          f"(tlgan), aten convolution operators (PyTorch: oneDNN).")
    print("\n| kind | tlgan ms (operations' time x wall / total) | PyTorch ms (self CPU time of aten operators) "
          "| tlgan - PyTorch |\n|---|---|---|---|")
    for kind in ("convolutions", "normalisation", "pooling", "other"):
      a, b = ours[kind] * scale, t_kinds.get(kind, 0.0)
      print(f"| {kind} | {a * 1e3:,.1f} | {b * 1e3:,.1f} | {(a - b) * 1e3:+,.1f} |")
    print(f"| step (wall) | {wall * 1e3:,.1f} | {t_wall * 1e3:,.1f} | {(wall - t_wall) * 1e3:+,.1f} |")
  if top:
    print(f"\nSlowest {top} operations:\n\n| op | kind | ms | GFLOP/s | HLO metadata |\n|---|---|---|---|---|")
    for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
      kind, flops, meta = table[name]
      rate = f"{flops / seconds / 1e9:,.0f}" if flops and seconds else "-"
      print(f"| {name} | {kind} | {seconds * 1e3:.2f} | {rate} | {meta[-70:]} |")


def main(_):
  builders = {"dcgan": (jax_dcgan, "TorchDCGAN"), "resnet18": (jax_resnet18, "TorchResNet18")}
  unknown = set(FLAGS.only) - set(builders)
  if unknown:
    raise app.UsageError(f"--only takes {sorted(builders)}, got {sorted(unknown)}")
  load_before = os.getloadavg()[0]
  layers.weight_gradient_form = FLAGS.weight_gradient
  print(f"{reporting.cpu_model()}; jax {jax.__version__}; batch {FLAGS.batch_size}, float32, "
        f"{FLAGS.conv_impl} convs; {layers.describe_cpu_gemms()}")
  for name in FLAGS.only:
    make_jax, make_torch = builders[name]
    step = make_jax(FLAGS.batch_size, FLAGS.conv_impl)
    torch_result = None
    if FLAGS.against_torch:
      torch_result = torch_profile(getattr(torch_reference, make_torch)(FLAGS.batch_size), FLAGS.steps)
    report(step, *profile(step, FLAGS.steps), FLAGS.top, torch_result)
    del step
  print(f"\n{load_note(load_before, os.getloadavg()[0])}")


if __name__ == "__main__":
  sys.argv = [a.replace("--against-torch", "--against_torch") for a in sys.argv]
  app.run(main)
