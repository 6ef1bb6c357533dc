"""XLA's CPU flags, measured on this CPU: tlgan's steps under each XLA_FLAGS value, side by side.

    python -m benchmarks.xla_flags                       # the default list below, 2 rounds
    python -m benchmarks.xla_flags --flag_rounds=3 --flag_steps=dcgan --flag_sets="" --flag_sets="--xla_cpu_use_xnnpack=true"

XLA reads its flags once per process, so each flag set runs `benchmarks.steps` in a fresh process; the flag sets
take turns (A B C ... A B C ...) so that a change in the machine's load reaches all of them alike. For each step
the table gives the median over rounds of each run's median step time, its ratio to the first flag set (the
default: no flags; above 1x is faster), the XLA GEMM peak each run measured, and whether any run saw a busy
machine. A flag that wins on one CPU may lose on another: the CPU model heads the table, and only
quiet-machine numbers count.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

from tlgan import reporting

DEFAULT_SETS = [
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_prefer_vector_width=512",
]

flags.DEFINE_multi_string("flag_sets", None, "XLA_FLAGS values to compare (the first is the baseline); "
                          "default: a list of the CPU backend's GEMM, fusion and scheduling flags.")
# (names apart from benchmarks.steps' flags: both modules share absl's flag registry when imported together)
flags.DEFINE_integer("flag_rounds", 2, "Rounds: each runs every flag set once, in turn.", lower_bound=1)
flags.DEFINE_list("flag_steps", ["dcgan", "resnet18"], "Steps (see benchmarks.steps --only).")
flags.DEFINE_integer("steps_rounds", 3, "benchmarks.steps --rounds of each run.", lower_bound=1)
FLAGS = flags.FLAGS


def run_once(xla_flags: str, out: str) -> dict:
  env = {**os.environ, "XLA_FLAGS": xla_flags}
  cmd = [sys.executable, "-m", "benchmarks.steps", f"--only={','.join(FLAGS.flag_steps)}",
         f"--rounds={FLAGS.steps_rounds}", f"--json_out={out}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
  if proc.returncode != 0:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
    return {"error": tail[0][:200]}
  with open(out) as f:
    return json.load(f)


def main(_):
  sets = FLAGS.flag_sets if FLAGS.flag_sets is not None else DEFAULT_SETS
  runs = {s: [] for s in sets}
  with tempfile.TemporaryDirectory() as folder:
    for r in range(FLAGS.flag_rounds):
      for i, s in enumerate(sets):
        print(f"round {r + 1}/{FLAGS.flag_rounds}, flag set {i + 1}/{len(sets)}: XLA_FLAGS='{s}'", flush=True)
        runs[s].append(run_once(s, os.path.join(folder, f"{r}_{i}.json")))

  def times(s, step):
    return [row["median_s"] for run in runs[s] if "rows" in run for row in run["rows"] if row["step"] == step]

  print(f"\n{reporting.cpu_model()}, {os.cpu_count()} CPUs; {FLAGS.flag_rounds} rounds, each run "
        f"`benchmarks.steps --rounds={FLAGS.steps_rounds}` (float32, batch 128)\n")
  header = "| XLA_FLAGS | " + " | ".join(f"{step} ms | {step} vs default" for step in FLAGS.flag_steps)
  print(header + " | XLA GEMM GFLOP/s | machine |")
  print("|---" * (3 + 2 * len(FLAGS.flag_steps)) + "|")
  base = {step: statistics.median(t) if (t := times(sets[0], step)) else None for step in FLAGS.flag_steps}
  for s in sets:
    errors = [run["error"] for run in runs[s] if "error" in run]
    cells = []
    for step in FLAGS.flag_steps:
      t = times(s, step)
      if not t:
        cells += ["failed", "-"]
        continue
      med = statistics.median(t)
      cells += [f"{med * 1e3:,.0f}", f"{base[step] / med:.2f}x" if base[step] else "-"]
    peaks = [run["peaks_gflops"]["XLA"] for run in runs[s] if "peaks_gflops" in run]
    busy = any("BUSY" in run.get("load", "") for run in runs[s])
    state = ("busy" if busy else "quiet") + (f"; error: {errors[0]}" if errors else "")
    peak = f"{statistics.median(peaks):,.0f}" if peaks else "-"
    print(f"| `{s or '(none)'}` | " + " | ".join(cells) + f" | {peak} | {state} |")


if __name__ == "__main__":
  app.run(main)
