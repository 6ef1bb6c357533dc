"""Does pretraining transfer? Pretrain ResNet18 on Fashion-MNIST, fine-tune it on scikit-learn's digits with
few and many labels, and compare with the same network trained from scratch. Offline, one command:

    python -m experiments.main --config=configs/transfer_study.py --workdir=runs/transfer_study

Every sub-run is an ordinary classifier run in its own sub-folder, so the study resumes where it stopped and
each run's summary, curves and confusion matrix can be inspected. The table (mean +- sample std over seeds of
the test accuracy on the fixed digits hold-out) goes to `results.md` and `results.json` in the workdir and,
with `update_readme`, between the `transfer-table` markers of README.md.
"""

import copy
import logging
import os
import re
from typing import Any, Dict, List

import numpy as np

from tlgan import config_checks, files, reporting
from tlgan.trainers import classifier

README_START, README_END = "<!-- transfer-table:start -->", "<!-- transfer-table:end -->"

# (folder name, row label, init from the pretrained weights?, mode)
ARMS = (("scratch", "from scratch (full training)", False, "full"),
        ("finetune", "Fashion-MNIST pretrained, full fine-tuning", True, "full"),
        ("probe", "Fashion-MNIST pretrained, linear probe", True, "linear_probe"))


def _run_config(base, *, seed: int, per_class: int, weights: str, mode: str, learning_rate: float):
  config = copy.deepcopy(base)
  config.unlock()
  config.seed = seed
  config.data.per_class = per_class
  config.init.weights = weights
  config.mode = mode
  config.optim.learning_rate = learning_rate
  if mode == "linear_probe":
    config.optim.weight_decay = 0.0
  config.lock()
  return config


def table_markdown(rows: List[Dict[str, Any]], per_class_values, seeds, pretrain_accuracy) -> str:
  header = " | ".join(f"{'all' if k <= 0 else k} labels/class" for k in per_class_values)
  lines = [f"| digits test accuracy ({len(seeds)} seeds: mean ± std) | {header} |",
           "|---|" + "---|" * len(per_class_values)]
  for arm, label, _, _ in ARMS:
    cells = []
    for k in per_class_values:
      accs = [r["test_accuracy"] for r in rows if r["arm"] == arm and r["per_class"] == k]
      std = np.std(accs, ddof=1) if len(accs) > 1 else 0.0
      cells.append(f"{100 * np.mean(accs):.1f} ± {100 * std:.1f}")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Pretraining: ResNet18 from scratch on Fashion-MNIST, test accuracy {100 * pretrain_accuracy:.2f}%. "
               "Digits: scikit-learn's 1,797 real 8x8 digits resized to 32x32, fixed stratified hold-out of "
               "539 test images; the labelled subset is drawn per seed.")
  return "\n".join(lines) + "\n"


def update_readme(path: str, table: str, start: str = README_START, end: str = README_END) -> bool:
  """Replaces what lies between the markers `start` and `end` in the file at `path` by `table`."""
  if not os.path.exists(path):
    return False
  with open(path) as f:
    text = f.read()
  if start not in text or end not in text:
    return False
  new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{table}{end}", text, flags=re.S)
  files.atomic_write(path, lambda f: f.write(new), mode="w")
  return True


# The study's own numeric fields (pretrain.* and finetune.*: the classifier's table).
NUMBERS = {"probe_learning_rate": config_checks.POSITIVE, "per_class": config_checks.NON_NEGATIVE_INT,
           "seeds": config_checks.NON_NEGATIVE_INT}


def check_config(config) -> None:
  config_checks.check_numbers(config, NUMBERS)
  for name in ("pretrain", "finetune"):  # both before the first hour of pretraining
    classifier.check_config(config[name], prefix=f"{name}.")


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False) -> Dict[str, Any]:
  check_config(config)
  pre = classifier.train_and_evaluate(config.pretrain, os.path.join(workdir, "pretrain"), allow_config_change)
  weights = os.path.join(workdir, "pretrain", "model.msgpack")
  if pre.get("status") != "completed" or not files.exists(weights):
    return {"experiment": "transfer_study", "status": pre.get("status", "incomplete")}
  rows = []
  for per_class in config.per_class:
    for arm, _, use_weights, mode in ARMS:
      for seed in config.seeds:
        name = f"{'all' if per_class <= 0 else per_class}_per_class/{arm}/seed{seed}"
        run = _run_config(config.finetune, seed=seed, per_class=per_class, weights=weights if use_weights else "",
                          mode=mode, learning_rate=(config.probe_learning_rate if mode == "linear_probe"
                                                    else config.finetune.optim.learning_rate))
        logging.info("=== %s", name)
        summary = classifier.train_and_evaluate(run, os.path.join(workdir, name), allow_config_change)
        if summary.get("status") != "completed":
          return {"experiment": "transfer_study", "status": summary.get("status", "incomplete")}
        rows.append({"arm": arm, "per_class": per_class, "seed": seed, "run": name,
                     "test_accuracy": summary["test_accuracy"], "train_time_s": summary["train_time_s"],
                     "train_images_per_s": summary["train_images_per_s"]})
  table = table_markdown(rows, list(config.per_class), list(config.seeds), pre["test_accuracy"])
  if reporting.is_writer():
    files.atomic_write(os.path.join(workdir, "results.md"), lambda f: f.write(table), mode="w")
    if config.update_readme:
      logging.info("README table updated: %s", update_readme(config.readme, table))
  summary = {"experiment": "transfer_study", "status": "completed", "pretrain_test_accuracy": pre["test_accuracy"],
             "pretrain_train_time_s": pre["train_time_s"], "rows": rows, "table": table}
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  print(table)
  return summary
