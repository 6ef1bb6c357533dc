"""Does public pretraining buy privacy? DP-SGD on scikit-learn's digits at several epsilons, from scratch and
from a GroupNorm ResNet18 pretrained on Fashion-MNIST (public), and Fashion-MNIST itself privately from scratch.
One command (configs/private_study.py):

    python -m experiments.main --config=configs/private_study.py --workdir=runs/private_study

Every sub-run is an ordinary (DP) classifier run in its own sub-folder, so the study resumes where it stopped.
The runs go seed by seed (all epsilons and arms of seed 0 first), and `results.json` is rewritten after each
one: a study cut short still leaves whole columns. The tables (mean +- sample std over seeds of the test
accuracy) go to `results.md` and, with `update_readme`, between the `private-table` markers of README.md.
"""

import copy
import logging
import os
from typing import Any, Dict, List, Sequence

import ml_collections
import numpy as np

from tlgan import config_checks, files, reporting
from tlgan.errors import ConfigError
from tlgan.trainers import classifier, private, transfer_study

README_START, README_END = "<!-- private-table:start -->", "<!-- private-table:end -->"

# (folder name, row label, init from the public weights?, mode)
ARMS = (("scratch", "from scratch", False, "full"),
        ("finetune", "Fashion-MNIST pretrained (public), full fine-tuning", True, "full"),
        ("probe", "Fashion-MNIST pretrained (public), linear probe", True, "linear_probe"))

# Tramer & Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)", ICLR 2021,
# Table 1 (Fashion-MNIST, epsilon = 3, delta = 1e-5; also in their repository's README, ftramer/Handcrafted-DP).
TRAMER_BONEH = {"end-to-end CNN": 86.0, "ScatterNet + linear": 89.7, "ScatterNet + CNN": 89.0}

NUMBERS = {"epsilons": config_checks.NON_NEGATIVE, "seeds": config_checks.NON_NEGATIVE_INT,
           "fashion_seeds": config_checks.NON_NEGATIVE_INT, "probe_learning_rate": config_checks.POSITIVE}
SUBS = ("pretrain", "digits", "fashion")


def check_config(config) -> None:
  config_checks.check_numbers(config, NUMBERS)
  if not config.epsilons:
    raise ConfigError("epsilons is empty: give at least one (0 for the non-private column)")
  for name in ("epsilons", "seeds", "fashion_seeds"):
    if len(set(config[name])) != len(config[name]):
      raise ConfigError(f"{name}={tuple(config[name])} repeats a value (the runs would share a folder): list each once")
  if not config.seeds and not config.fashion_seeds:
    raise ConfigError("seeds and fashion_seeds are both empty: nothing to run; give at least one seed")
  for name in SUBS:  # all three before the first minute of pretraining
    classifier.check_config(config[name], prefix=f"{name}.")
  rows = fashion_rows(config)
  if config.fashion_seeds and not rows:
    raise ConfigError("fashion_seeds is set but the Fashion-MNIST table has no rows: set fashion_scratch=True or "
                      "give fashion_recipes, or set fashion_seeds=() to leave Fashion-MNIST out")
  if config.fashion_scratch and "scratch" in config.fashion_recipes:
    raise ConfigError("fashion_recipes.scratch would share the folder of the fashion config's row: rename it")
  for name, recipe in config.fashion_recipes.items():
    where = f"fashion_recipes.{name}"
    if not isinstance(recipe, ml_collections.ConfigDict):
      raise ConfigError(f"{where} is not a classifier config: give configs/private.py configs "
                        "(configs/private_study.py:scatternet shows how)")
    if not recipe.get("dp", {}).get("enabled") or recipe.get("data", {}).get("name") != "fashion_mnist":
      raise ConfigError(f"{where} is not a private Fashion-MNIST recipe: set {where}.dp.enabled=True and "
                        f"{where}.data.name=fashion_mnist, or give another configs/private.py config")
    classifier.check_config(recipe, prefix=f"{where}.")
  for name in ("digits", "fashion"):
    if not config[name].dp.enabled:
      raise ConfigError(f"{name}.dp.enabled is False: the study's {name} runs are the private ones; "
                        f"set {name}.dp.enabled=True")


def fashion_rows(config) -> Dict[str, Any]:
  """The Fashion-MNIST table's rows by folder name: `fashion` as 'scratch' (if fashion_scratch), then every
  config of fashion_recipes (name -> a configs/private.py config, e.g. configs/private_study.py:scatternet's),
  each run at every epsilon and fashion seed in fashion_mnist/<eps>/<name>/seed<s>."""
  rows = {"scratch": config.fashion} if config.fashion_scratch else {}
  rows.update(config.fashion_recipes.items())
  return rows


def epsilon_label(eps: float) -> str:
  return "non-private" if eps <= 0 else f"ε = {eps:g}"


def _folder(eps: float) -> str:
  return "nonprivate" if eps <= 0 else f"eps{eps:g}"


def describe_model(config) -> str:
  """'GroupNorm ResNet18 (width 16)', 'tanh_cnn': the network of a classifier config, for the tables."""
  m = config.model
  if m.arch in classifier.RESNETS:
    norm = {"group": "GroupNorm ", "frozen_batch": "frozen-BatchNorm ", "batch": ""}.get(m.norm, "")
    return f"{norm}ResNet{m.arch[6:]} (width {m.width})"
  name = {"scatter_linear": "ScatterNet + linear", "scatter_cnn": "ScatterNet + CNN"}.get(m.arch, m.arch)
  return name + (", privately whitened features" if private.preconditioned(config) else "")


def _run_config(base, *, seed: int, epsilon: float, weights: str = "", mode: str = "full",
                learning_rate: float = 0.0):
  config = copy.deepcopy(base)
  config.unlock()
  config.seed = seed
  config.dp.target_epsilon = float(epsilon)
  config.dp.noise_multiplier = 0.0  # epsilon 0: no noise (clipped, Poisson-sampled, not private)
  if epsilon <= 0:
    config.model.precondition_noise = 0.0  # ... anywhere (as configs/private.py:nonprivate)
  config.init.weights = weights
  config.mode = mode
  if learning_rate:
    config.optim.learning_rate = learning_rate
  config.lock()
  return config


def _cells(rows, epsilons, **match) -> List[str]:
  cells = []
  for eps in epsilons:
    accs = [r["test_accuracy"] for r in rows if r["epsilon"] == eps and all(r[k] == v for k, v in match.items())]
    if not accs:
      cells.append("—")
      continue
    std = f" ± {100 * np.std(accs, ddof=1):.1f}" if len(accs) > 1 else ""
    cells.append(f"{100 * np.mean(accs):.1f}{std}" + (f" ({len(accs)} seeds)" if len(accs) > 1 else ""))
  return cells


def tables_markdown(rows: List[Dict[str, Any]], epsilons: Sequence[float], pretrain: Dict[str, Any]) -> str:
  header = " | ".join(epsilon_label(e) for e in epsilons)
  rule = "|---|" + "---|" * len(epsilons)
  digits = [r for r in rows if r["dataset"] == "digits"]
  lines = []
  if digits:
    lines += [f"| digits test accuracy, % (mean ± std over seeds) | {header} |", rule]
    for arm, label, _, _ in ARMS:
      lines.append(f"| {label} | " + " | ".join(_cells(digits, epsilons, arm=arm)) + " |")
  fashion = [r for r in rows if r["dataset"] == "fashion_mnist"]
  if fashion:
    lines += [""] if lines else []
    lines += [f"| Fashion-MNIST test accuracy, %, from scratch | {header} |", rule]
    for arm in dict.fromkeys(r["arm"] for r in fashion):  # one row per recipe, in the order they ran
      mine = [r for r in fashion if r["arm"] == arm]
      lines.append(f"| tlgan: {mine[0].get('model', '?')} | " + " | ".join(_cells(mine, epsilons)) + " |")
    for name, acc in TRAMER_BONEH.items():
      lines.append(f"| Tramèr & Boneh 2021, {name} | " +
                   " | ".join(f"{acc:.1f}" if e == 3.0 else "" for e in epsilons) + " |")
  lines.append("")
  time_s = sum(r["train_time_s"] for r in rows)
  machine = rows[0].get("machine", {}) if rows else {}
  device = machine.get("device_kind", "?") if machine.get("backend") != "cpu" else machine.get("cpu", "?")
  if pretrain:
    lines.append(f"Public pretraining: {pretrain.get('model', 'the same network')} on Fashion-MNIST (not private), "
                 f"test accuracy {100 * pretrain['test_accuracy']:.2f}% in {pretrain['train_time_s']:.0f} s.")
  lines.append(f"{len(rows)} private runs, {time_s:.0f} s of training in all, on {device}. delta: the power of "
               "ten below 1/N (digits 1e-4, N = 1,258; Fashion-MNIST 1e-5); digits' fixed stratified hold-out of "
               "539 test images.")
  return "\n".join(lines) + "\n"


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False) -> Dict[str, Any]:
  check_config(config)
  weights, pre = os.path.join(workdir, "pretrain", "model.msgpack"), {}
  if config.seeds:  # the public pretraining serves the digits runs only
    pre = classifier.train_and_evaluate(config.pretrain, os.path.join(workdir, "pretrain"), allow_config_change)
    if pre.get("status") != "completed" or not files.exists(weights):
      return {"experiment": "private_study", "status": pre.get("status", "incomplete")}
    pre = {**pre, "model": describe_model(config.pretrain)}
  plan = []  # seed-major: a study cut short still has every column of its first seeds
  for seed in config.seeds:
    for eps in config.epsilons:
      for arm, _, use_weights, mode in ARMS:
        plan.append(("digits", f"digits/{_folder(eps)}/{arm}/seed{seed}", arm, eps, seed,
                     _run_config(config.digits, seed=seed, epsilon=eps, weights=weights if use_weights else "",
                                 mode=mode, learning_rate=config.probe_learning_rate if mode == "linear_probe" else 0)))
  recipes = fashion_rows(config)
  for seed in config.fashion_seeds:
    for arm, base in recipes.items():
      for eps in config.epsilons:
        plan.append(("fashion_mnist", f"fashion_mnist/{_folder(eps)}/{arm}/seed{seed}", arm, eps, seed,
                     _run_config(base, seed=seed, epsilon=eps)))
  rows = []
  for dataset, name, arm, eps, seed, run in plan:
    logging.info("=== %s", name)
    summary = classifier.train_and_evaluate(run, os.path.join(workdir, name), allow_config_change)
    if summary.get("status") != "completed":
      return {"experiment": "private_study", "status": summary.get("status", "incomplete"), "rows": rows}
    privacy = summary.get("privacy", {})
    rows.append({"dataset": dataset, "arm": arm, "epsilon": eps, "seed": seed, "run": name,
                 "model": describe_model(run),
                 "test_accuracy": summary["test_accuracy"], "epsilon_reached": privacy.get("epsilon"),
                 "noise_multiplier": privacy.get("noise_multiplier"), "steps": summary["step"],
                 "train_time_s": summary["train_time_s"], "train_images_per_s": summary["train_images_per_s"],
                 "machine": summary["machine"]})
    reporting.write_json(os.path.join(workdir, "results.json"), {"rows": rows, "done": len(rows), "of": len(plan),
                                                                  "epsilons": list(config.epsilons),
                                                                  "pretrain_model": pre.get("model", "")})
  table = tables_markdown(rows, list(config.epsilons), pre if config.seeds else {})
  if reporting.is_writer():
    files.atomic_write(os.path.join(workdir, "results.md"), lambda f: f.write(table), mode="w")
    if config.update_readme:
      logging.info("README table updated: %s",
                   transfer_study.update_readme(config.readme, table, README_START, README_END))
  summary = {"experiment": "private_study", "status": "completed", "pretrain": {
      k: pre[k] for k in ("test_accuracy", "train_time_s", "machine") if k in pre}, "rows": rows, "table": table}
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  print(table)
  return summary


def merge(workdirs: Sequence[str]) -> str:
  """One table from the rows of several workdirs' results.json (a study split into processes by seed, e.g.
  scripts/private_study_parallel.sh); the public pretraining's summary from the first workdir that has one."""
  import json
  rows, pre, epsilons = [], {}, []
  for workdir in workdirs:
    path = os.path.join(workdir, "results.json")
    if not files.exists(path):
      continue
    with open(path) as f:
      results = json.load(f)
    rows += results["rows"]
    epsilons += [e for e in results["epsilons"] if e not in epsilons]
    summary = os.path.join(workdir, "pretrain", "summary.json")
    if not pre and results.get("pretrain_model") and files.exists(summary):
      with open(summary) as f:
        pre = {**json.load(f), "model": results["pretrain_model"]}
  return tables_markdown(rows, epsilons, pre if any(r["dataset"] == "digits" for r in rows) else {})
