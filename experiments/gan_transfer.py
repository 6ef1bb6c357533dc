"""GAN transfer studies: several GAN runs per variant and seed, then one table of their sample quality.

    # FreezeD: Fashion-MNIST -> scikit-learn's digits (needs the source run, e.g. the default runs/gan)
    python -m experiments.gan_transfer freezed --root=runs/freezed --source=runs/gan --seeds=0,1,2
    # the projected discriminator vs the DCGAN one on Fashion-MNIST (needs the trunk, see configs/gan.py)
    python -m experiments.gan_transfer projected --root=runs/projected --seeds=0

Every run is an ordinary `experiments.main` run in `<root>/<variant>_s<seed>`: a finished one is reused, an
interrupted one resumes, so the same command completes a study. `<root>` receives `results.md` (the table:
mean and spread over seeds), `results.json`, `samples.png` (seed 0's sample grid per variant) and, for the
projected study, `fd_vs_time.png` (FD during training against training time).
"""

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("root", None, "Folder of the study's runs and results.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each variant runs once per seed).")
flags.DEFINE_string("source", "runs/gan", "freezed: the GAN run (Fashion-MNIST) that the target runs start from.")
flags.DEFINE_integer("freeze_d_layers", 1, "freezed: D blocks frozen in the FreezeD variant.")
flags.DEFINE_integer("num_steps", 0, "Steps of every run (0: 1000 for freezed, 3000 for projected).")
flags.DEFINE_string("trunk", "runs/fashion_resnet18/model.msgpack", "projected: the trunk's weights file.")
flags.DEFINE_list("overrides", [], "Extra --config.X=Y flags for every run (without the --config. prefix).")
flags.mark_flag_as_required("root")


def variants(study: str):
  """{variant: (config file, extra flags)}."""
  if study == "freezed":
    source = f"--config.transfer.init_workdir={FLAGS.source}"
    return {
        "scratch": ("configs/gan.py:digits", []),
        "finetune": ("configs/gan.py:digits", [source]),
        "freezed": ("configs/gan.py:digits", [source, f"--config.transfer.freeze_d_layers={FLAGS.freeze_d_layers}"]),
    }
  if study == "projected":
    return {
        "dcgan": ("configs/gan.py", ["--config.eval.every=500"]),
        "projected": ("configs/gan.py:projected", ["--config.eval.every=500",
                                                   f"--config.model.d_trunk_weights={FLAGS.trunk}"]),
    }
  raise app.UsageError(f"unknown study {study!r}: use freezed or projected")


def run(workdir: str, config: str, extra, seed: int, num_steps: int) -> dict:
  summary = os.path.join(workdir, "summary.json")
  if os.path.exists(summary):
    with open(summary) as f:
      done = json.load(f)
    if done.get("status") == "completed" and done.get("step") == num_steps:
      print(f"{workdir}: done already", flush=True)
      return done
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.seed={seed}", f"--config.num_steps={num_steps}", *extra,
         *[f"--config.{o}" for o in FLAGS.overrides]]
  print(" ".join(cmd), flush=True)
  result = subprocess.run(cmd)
  if result.returncode != 0:
    raise SystemExit(f"error: {workdir} failed (exit {result.returncode}); rerun the same command to resume it")
  with open(summary) as f:
    return json.load(f)


def fmt(values, digits):
  values = [v for v in values if v is not None]
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(results: dict, num_steps: int) -> str:
  first = next(iter(next(iter(results.values())).values()))
  generated = first["final_eval"]["generated"]
  fd_key = next(k for k in generated if k.startswith("FD["))
  kid_key = fd_key.replace("FD[", "KID[")
  floor = first["final_eval"]["floor_train_vs_reference"][fd_key]
  seeds = len(next(iter(results.values())))
  lines = [f"{first['dataset']}, {num_steps} steps, {first['final_eval']['num_samples']} samples vs "
           f"{first['final_eval']['reference']}, {seeds} seed(s): mean ± std", "",
           f"| variant | {fd_key} | {kid_key} | training images/s | wall per run |", "|---|---|---|---|---|"]
  for variant, runs in results.items():
    s = list(runs.values())
    lines.append(f"| {variant} | {fmt([r['final_eval']['generated'][fd_key] for r in s], 1)} | "
                 f"{fmt([r['final_eval']['generated'][kid_key] for r in s], 3)} | "
                 f"{fmt([r['train_images_per_s'] for r in s], 0)} | "
                 f"{fmt([r['wall_time_s'] / 60 for r in s], 1)} min |")
  lines.append(f"| floor: training vs reference images | {floor:.2f} | | | |")
  return "\n".join(lines)


def samples_montage(root: str, names) -> None:
  from PIL import Image, ImageDraw
  tiles = []
  for name in names:
    path = os.path.join(root, name, "samples.png")
    if os.path.exists(path):
      image = Image.open(path).convert("RGB")
      canvas = Image.new("RGB", (image.width, image.height + 18), "white")
      canvas.paste(image, (0, 18))
      ImageDraw.Draw(canvas).text((4, 3), name, fill="black")
      tiles.append(canvas)
  if tiles:
    out = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for t in tiles:
      out.paste(t, (x, 0))
      x += t.width + 8
    out.save(os.path.join(root, "samples.png"))


def fd_vs_time(root: str, results: dict) -> None:
  """FD during training (the runs' periodic evaluations) against training seconds (steps x the run's
  measured seconds per step, evaluation excluded)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for variant, runs in results.items():
    for seed, summary in runs.items():
      seconds_per_step = summary["batch_size"]["global"] / summary["train_images_per_s"]
      fd_key = next(k for k in summary["final_eval"]["generated"] if k.startswith("FD["))
      points = []
      with open(os.path.join(root, f"{variant}_s{seed}", "metrics.jsonl")) as f:
        for line in f:
          row = json.loads(line)
          if fd_key in row:
            points.append((row["step"] * seconds_per_step / 60, row[fd_key]))
      if points:
        ax.plot(*zip(*points), marker="o", label=f"{variant} (seed {seed})")
  ax.set_xlabel("training minutes (evaluation excluded)")
  ax.set_ylabel(fd_key + " (2,000 samples)")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(root, "fd_vs_time.png"), dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("say which study: freezed or projected")
  study = argv[1]
  num_steps = FLAGS.num_steps or (1000 if study == "freezed" else 3000)
  os.makedirs(FLAGS.root, exist_ok=True)
  results = {}
  for variant, (config, extra) in variants(study).items():
    results[variant] = {int(seed): run(os.path.join(FLAGS.root, f"{variant}_s{seed}"), config, extra, int(seed),
                                       num_steps) for seed in FLAGS.seeds}
  text = table(results, num_steps)
  print("\n" + text)
  with open(os.path.join(FLAGS.root, "results.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(FLAGS.root, "results.json"), "w") as f:
    json.dump({v: {s: r["final_eval"] for s, r in runs.items()} for v, runs in results.items()}, f, indent=1)
  samples_montage(FLAGS.root, [f"{v}_s{FLAGS.seeds[0]}" for v in results])
  if study == "projected":
    fd_vs_time(FLAGS.root, results)


if __name__ == "__main__":
  app.run(main)
