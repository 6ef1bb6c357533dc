"""GAN transfer studies: several GAN runs per variant and seed, then one table of their sample quality.

    # FreezeD: Fashion-MNIST -> scikit-learn's digits (needs the source run, e.g. the default runs/gan)
    python -m experiments.gan_transfer freezed --root=runs/freezed --source=runs/gan --seeds=0,1,2
    # the projected discriminator vs the DCGAN one on Fashion-MNIST (needs the trunk, see configs/gan.py)
    python -m experiments.gan_transfer projected --root=runs/projected --seeds=0
    # private GANs on Fashion-MNIST (configs/gan.py:private): D trained with DP-SGD at epsilon 1 and 10, and
    # without noise; with --private_trunk (a network trained on other, public data) a projected D too
    python -m experiments.gan_transfer private --root=runs/private_gan --seeds=0

Every run is an ordinary `experiments.main` run in `<root>/<variant>_s<seed>`: a finished one is reused, an
interrupted one resumes, so the same command completes a study. A stop signal (SIGTERM, Ctrl-C, SIGHUP) to the
study is passed on to the run in progress, which saves its checkpoint; the study then exits 3. `<root>` receives
`results.md` (the table: mean and spread over seeds), `results.json`, `samples.png` (seed 0's sample grid per
variant) and, for the projected study, `fd_vs_time.png` (FD during training against training time).
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from tlgan import files, reporting, stopping

FLAGS = flags.FLAGS
flags.DEFINE_string("root", None, "Folder of the study's runs and results.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each variant runs once per seed).")
flags.DEFINE_string("source", "runs/gan", "freezed: the GAN run (Fashion-MNIST) that the target runs start from.")
flags.DEFINE_integer("freeze_d_layers", 1, "freezed: D blocks frozen in the FreezeD variant.")
flags.DEFINE_integer("num_steps", 0, "Steps of every run (0: 1000 for freezed, 3000 for projected).")
flags.DEFINE_string("trunk", "runs/fashion_resnet18/model.msgpack", "projected: the trunk's weights file.")
flags.DEFINE_list("epsilons", ["1", "10", "0"], "private: the epsilons of D's DP-SGD (0: clipped, no noise).")
flags.DEFINE_string("private_trunk", "", "private: adds projected-D rows on this trunk, trained on public data "
                    "(not the private set), e.g. tlgan/metric_networks/resnet18w16-digits28.msgpack.")
flags.DEFINE_list("overrides", [], "Extra --config.X=Y flags for every run (without the --config. prefix).")
flags.mark_flag_as_required("root")


# The private study's size, chosen to fit a 2-core CPU (about 18 minutes per run there): G and D of width 32,
# evaluated every 400 of the 1,200 steps; --overrides (later on the command line) wins over these.
PRIVATE_PROTOCOL = ("--config.model.d_features=32", "--config.model.g_features=32", "--config.eval.every=400")


def _seeds(values):
  """--seeds as integers >= 0, each once; a one-line error otherwise."""
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    seeds = []
  if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
    raise SystemExit(f"error: --seeds={','.join(values)} must be integers >= 0, each given once, e.g. --seeds=0,1,2")
  return seeds


def _epsilons(values):
  """--epsilons as numbers >= 0, each once; a one-line error otherwise."""
  try:
    epsilons = [float(v) for v in values]
  except ValueError:
    raise SystemExit(f"error: --epsilons={','.join(values)} must be numbers (0: no noise), e.g. --epsilons=1,10,0")
  if not epsilons or any(not (e >= 0 and np.isfinite(e)) for e in epsilons) or len(set(epsilons)) < len(epsilons):
    raise SystemExit(f"error: --epsilons={','.join(values)} must be finite numbers >= 0, each given once "
                     "(0: no noise), e.g. --epsilons=1,10,0")
  return epsilons


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
  if study == "private":
    runs = {}
    for eps in _epsilons(FLAGS.epsilons):
      noise = [f"--config.dp.target_epsilon={eps:g}"] if eps > 0 else [
          "--config.dp.target_epsilon=0", "--config.dp.noise_multiplier=0"]
      name = f"eps{eps:g}" if eps > 0 else "nonprivate"
      extra = noise + list(PRIVATE_PROTOCOL)
      runs[f"dcgan_{name}"] = ("configs/gan.py:private", extra)
      if FLAGS.private_trunk:
        runs[f"projected_{name}"] = ("configs/gan.py:private,projected",
                                     extra + [f"--config.model.d_trunk_weights={FLAGS.private_trunk}"])
    return runs
  raise app.UsageError(f"unknown study {study!r}: use freezed, projected or private")


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
  returncode = stopping.run_child(cmd)  # a stop signal to the study reaches the run, which saves and exits 3
  if returncode == stopping.EXIT_STOPPED:
    print(f"stopped: {workdir} saved its progress; rerun the same command to continue the study",
          file=sys.stderr, flush=True)
    raise SystemExit(stopping.EXIT_STOPPED)
  if returncode != 0:
    raise SystemExit(f"error: {workdir} failed (exit {returncode}); rerun the same command to resume it")
  with open(summary) as f:
    return json.load(f)


def fmt(values, digits):
  values = [v for v in values if v is not None]
  if not values:
    return "—"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


# Published private image generators, for scale. Theirs are MNIST FIDs in Inception-v3 (a different dataset and
# feature space from tlgan's FD in its Fashion-MNIST network): an order of magnitude, not a number to beat.
ANCHORS = (
    "Published private generators, for scale only (MNIST at ε = 10, δ = 1e-5, FID in Inception-v3: another "
    "dataset and another feature space than the FD above): DP-Sinkhorn (Cao et al. 2021) 48.4, the record that "
    "both following papers cite; GS-WGAN (Chen et al. 2020) is above it; \"Private GANs, Revisited\" (Bie et al., "
    "TMLR 2023: DP-SGD on D as here, with many D steps per G step and large batches) 13.0 in the abstract of its "
    "ICLR 2023 submission, 13.3 and 19.4 (adaptive / 50 D steps per G step) in their repository, 3.4 without "
    "privacy, about 8 hours on one V100 per private run; DPDM (Dockhorn et al. 2022, a diffusion model) 5.01. "
    "Their Fashion-MNIST figures were not checked here.")


def _privacy_cell(runs) -> str:
  privacy = [r.get("privacy") for r in runs]
  if not all(privacy):
    return "—"
  eps = [p.get("epsilon") for p in privacy]
  if any(e is None for e in eps):
    return "∞ (no noise)"
  return f"{fmt(eps, 2)} (σ {fmt([p['noise_multiplier'] for p in privacy], 3)})"


def table(results: dict, num_steps: int) -> str:
  first = next(iter(next(iter(results.values())).values()))
  generated = first["final_eval"]["generated"]
  fd_key = next(k for k in generated if k.startswith("FD["))
  kid_key = fd_key.replace("FD[", "KID[")
  extra = [k for k in (fd_key.replace("FD[", "precision["), fd_key.replace("FD[", "recall[")) if k in generated]
  private = any(r.get("privacy") for runs in results.values() for r in runs.values())
  floor = (first["final_eval"].get("floor_train_vs_reference") or {}).get(fd_key)  # None: a private training set
  seeds = len(next(iter(results.values())))
  head = ["variant"] + (["ε (noise σ)"] if private else []) + [fd_key, kid_key] + extra + [
      "training images/s", "wall per run"]
  lines = [f"{first['dataset']}, {num_steps} steps, {first['final_eval']['num_samples']} samples vs "
           f"{first['final_eval']['reference']}, {seeds} seed(s): mean ± std", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for variant, runs in results.items():
    s = list(runs.values())
    cells = [variant] + ([_privacy_cell(s)] if private else []) + [
        fmt([r["final_eval"]["generated"][fd_key] for r in s], 1),
        fmt([r["final_eval"]["generated"][kid_key] for r in s], 3)] + [
        fmt([r["final_eval"]["generated"].get(k) for r in s], 3) for k in extra] + [
        fmt([r["train_images_per_s"] for r in s], 0), fmt([r["wall_time_s"] / 60 for r in s], 1) + " min"]
    lines.append("| " + " | ".join(cells) + " |")
  if floor is not None:
    floor_cells = ["floor: training vs reference images"] + [""] * private + [f"{floor:.2f}"]
    lines.append("| " + " | ".join(floor_cells + [""] * (len(head) - len(floor_cells))) + " |")
  if private:
    lines += ["", ANCHORS]
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
    files.atomic_write(os.path.join(root, "samples.png"), lambda f: out.save(f, format="PNG"))


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
  files.atomic_write(os.path.join(root, "fd_vs_time.png"), lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("say which study: freezed, projected or private")
  study = argv[1]
  num_steps = FLAGS.num_steps or {"freezed": 1000, "private": 1200}.get(study, 3000)
  plan, seeds = variants(study), _seeds(FLAGS.seeds)  # both checked before anything is written
  os.makedirs(FLAGS.root, exist_ok=True)
  results = {}
  for variant, (config, extra) in plan.items():
    results[variant] = {seed: run(os.path.join(FLAGS.root, f"{variant}_s{seed}"), config, extra, seed, num_steps)
                        for seed in seeds}
  text = table(results, num_steps)
  print("\n" + text)
  files.atomic_write(os.path.join(FLAGS.root, "results.md"), lambda f: f.write(text + "\n"), mode="w")
  reporting.write_json(os.path.join(FLAGS.root, "results.json"), {
      v: {s: {**r["final_eval"], **({"privacy": r["privacy"]} if "privacy" in r else {})} for s, r in runs.items()}
      for v, runs in results.items()})
  samples_montage(FLAGS.root, [f"{v}_s{seeds[0]}" for v in results])
  if study == "projected":
    fd_vs_time(FLAGS.root, results)


if __name__ == "__main__":
  app.run(main)
