"""The private study's one command, tiny: public pretraining, DP arms over epsilons and seeds, tables."""

import json
import os

import pytest

import tensorflow_datasets as tfds

from tlgan.errors import ConfigError
from tlgan.trainers import private_study


@pytest.mark.slow  # a whole (tiny) study end to end
def test_study_end_to_end_tiny(tmp_path):
  """Real runs (public pretraining, then the three DP arms at one epsilon), the table and the README."""
  from configs.private_study import get_config
  config = get_config("smoke")
  config.epsilons, config.fashion_seeds = (3.0,), ()
  for sub in (config.pretrain, config.digits):  # the study's logic, on a model that compiles in ~2 s, not ~40
    sub.model.arch = "tanh_cnn"
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{private_study.README_START}\nold\n{private_study.README_END}\noutro\n")
  config.update_readme = True
  config.readme = str(readme)
  with tfds.testing.mock_data(num_examples=16):
    summary = private_study.train_and_evaluate(config, str(tmp_path / "study"))
  assert summary["status"] == "completed"
  assert [row["run"] for row in summary["rows"]] == [
      "digits/eps3/scratch/seed0", "digits/eps3/finetune/seed0", "digits/eps3/probe/seed0"]
  study = tmp_path / "study"
  probe = json.loads((study / "digits" / "eps3" / "probe" / "seed0" / "summary.json").read_text())
  assert probe["mode"] == "linear_probe" and probe["init"].endswith("pretrain/model.msgpack")
  assert probe["not_loaded"] == ["params/fc/bias", "params/fc/kernel"]
  assert probe["privacy"]["noise_calibrated_to_target"] and probe["privacy"]["epsilon"] == pytest.approx(3, rel=1e-2)
  scratch = json.loads((study / "digits" / "eps3" / "scratch" / "seed0" / "summary.json").read_text())
  assert scratch["init"] == "scratch" and scratch["mode"] == "full"
  results = json.loads((study / "results.json").read_text())
  assert results["done"] == results["of"] == 3
  table = (study / "results.md").read_text()
  assert "| digits test accuracy, % (mean ± std over seeds) | ε = 3 |" in table
  assert "—" not in table and "Fashion-MNIST test accuracy" not in table  # every cell filled; no Fashion part
  text = readme.read_text()
  assert "\nold\n" not in text and table in text and text.startswith("intro\n") and text.endswith("outro\n")


def _fake_classifier(monkeypatch, stop_at=None):
  """classifier.train_and_evaluate replaced by one that records each run's config and returns a summary."""
  from tlgan.trainers import classifier
  seen = []

  def fake(config, workdir, allow_config_change=False):
    classifier.check_config(config)  # every sub-run's config is a valid classifier config
    seen.append((workdir, config))
    if stop_at is not None and len(seen) == stop_at:
      return {"status": "preempted"}
    eps = config.dp.target_epsilon if config.dp.enabled else 0.0
    summary = {"status": "completed", "test_accuracy": 0.5 + 0.01 * len(seen), "train_time_s": 1.0, "step": 3,
               "train_images_per_s": 10.0, "machine": {"backend": "cpu", "cpu": "Some CPU"},
               "privacy": {"epsilon": eps or None, "noise_multiplier": 1.0 if eps else 0.0}}
    if workdir.endswith("pretrain"):  # what the real trainer leaves: the weights and the summary
      os.makedirs(workdir, exist_ok=True)
      open(os.path.join(workdir, "model.msgpack"), "wb").close()
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)
    return summary
  monkeypatch.setattr(private_study.classifier, "train_and_evaluate", fake)
  return seen


def test_study_grid_every_run_config(tmp_path, monkeypatch):
  """The whole grid: seed-major order, each run's data, weights, mode, learning rate and privacy target."""
  from configs.private_study import get_config
  config = get_config()
  config.seeds = (0, 1)
  seen = _fake_classifier(monkeypatch)
  summary = private_study.train_and_evaluate(config, str(tmp_path))
  assert summary["status"] == "completed"
  names = [w[len(str(tmp_path)) + 1:] for w, _ in seen]
  assert names[:4] == ["pretrain", "digits/eps1/scratch/seed0", "digits/eps1/finetune/seed0",
                       "digits/eps1/probe/seed0"]
  assert names[13:16] == ["digits/eps1/scratch/seed1", "digits/eps1/finetune/seed1", "digits/eps1/probe/seed1"]
  assert names[25:] == ["fashion_mnist/eps1/scratch/seed0", "fashion_mnist/eps3/scratch/seed0",
                        "fashion_mnist/eps8/scratch/seed0", "fashion_mnist/nonprivate/scratch/seed0"]
  weights = str(tmp_path / "pretrain" / "model.msgpack")
  for name, (_, run) in zip(names[1:], seen[1:]):
    dataset, eps_folder, arm, seed = name.split("/")
    assert run.data.name == dataset and run.seed == int(seed[4:]) and run.dp.enabled
    assert run.dp.noise_multiplier == 0.0
    assert run.dp.target_epsilon == (0.0 if eps_folder == "nonprivate" else float(eps_folder[3:]))
    assert run.init.weights == ("" if arm == "scratch" else weights)
    assert run.mode == ("linear_probe" if arm == "probe" else "full")
    base = config.fashion if dataset == "fashion_mnist" else config.digits
    assert run.optim.learning_rate == (config.probe_learning_rate if arm == "probe" else base.optim.learning_rate)
  assert not seen[0][1].dp.enabled  # the public pretraining is not private
  table = (tmp_path / "results.md").read_text()
  lines = table.splitlines()
  assert lines[0] == ("| digits test accuracy, % (mean ± std over seeds) | ε = 1 | ε = 3 | ε = 8 | "
                      "non-private |")
  assert "| Tramèr & Boneh 2021, ScatterNet + linear |  | 89.7 |  |  |" in lines
  assert "(2 seeds)" in table and "—" not in table and "on Some CPU" in table


def test_fashion_recipes_are_rows_of_their_own(tmp_path, monkeypatch):
  """configs/private_study.py:scatternet: ScatterNet + linear with and without private whitening, every epsilon,
  3 seeds, each recipe exactly configs/private.py's (the same config a run of the recipe with :epsN would have,
  so finished runs moved into the study's folders are reused), and one table row per recipe."""
  from configs import private
  from configs.private_study import get_config
  seen = _fake_classifier(monkeypatch)
  summary = private_study.train_and_evaluate(get_config("scatternet"), str(tmp_path))
  assert summary["status"] == "completed" and len(seen) == 3 * 2 * 4
  names = [w[len(str(tmp_path)) + 1:] for w, _ in seen]
  assert names[:5] == ["fashion_mnist/eps1/scatternet/seed0", "fashion_mnist/eps3/scatternet/seed0",
                       "fashion_mnist/eps8/scatternet/seed0", "fashion_mnist/nonprivate/scatternet/seed0",
                       "fashion_mnist/eps1/scatternet_whitened/seed0"]
  by_variant = {"eps1": "eps1", "eps3": "", "eps8": "eps8", "nonprivate": "nonprivate"}
  for name, (_, run) in zip(names, seen):
    _, eps_folder, arm, seed = name.split("/")
    own = private.get_config(",".join(v for v in (arm.replace("_", ","), by_variant[eps_folder]) if v))
    own.seed = int(seed[4:])
    assert run.to_dict() == own.to_dict(), name
  lines = (tmp_path / "results.md").read_text().splitlines()
  rows = [line for line in lines if line.startswith("| tlgan:")]
  assert [r.split(" | ")[0] for r in rows] == ["| tlgan: ScatterNet + linear",
                                               "| tlgan: ScatterNet + linear, privately whitened features"]
  assert all(r.count("(3 seeds)") == 4 for r in rows)


def test_study_stopped_midway_keeps_its_rows(tmp_path, monkeypatch):
  from configs.private_study import get_config
  seen = _fake_classifier(monkeypatch, stop_at=4)
  summary = private_study.train_and_evaluate(get_config(), str(tmp_path))
  assert summary["status"] == "preempted" and len(summary["rows"]) == 2 and len(seen) == 4
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["done"] == 2 and results["of"] == 3 * 4 * 3 + 4
  assert not (tmp_path / "results.md").exists()


def test_table_averages_seeds_and_leaves_missing_cells_empty():
  rows = [dict(dataset="digits", arm="probe", epsilon=3.0, test_accuracy=a, train_time_s=1.0,
               machine={"backend": "cpu", "cpu": "Some CPU"}) for a in (0.5, 0.7)]
  pre = {"test_accuracy": 0.9, "train_time_s": 2.0}
  table = private_study.tables_markdown(rows, [1.0, 3.0], pre)
  probe = next(line for line in table.splitlines() if "linear probe" in line)
  assert probe == "| Fashion-MNIST pretrained (public), linear probe | — | 60.0 ± 14.1 (2 seeds) |"
  assert "Fashion-MNIST test accuracy" not in table and "on Some CPU" in table and "\n\n\n" not in table
  fashion = [dict(rows[0], dataset="fashion_mnist", arm="scratch", model="GroupNorm ResNet18 (width 16)")]
  only = private_study.tables_markdown(fashion, [3.0], {})
  assert only.startswith("| Fashion-MNIST test accuracy, %, from scratch | ε = 3 |")
  assert "Public pretraining" not in only and "| tlgan: GroupNorm ResNet18 (width 16) | 50.0 |" in only


def _private(variants):
  from configs import private
  return private.get_config(variants)


@pytest.mark.parametrize("field,value,message", [
    ("epsilons", (), "epsilons is empty"), ("seeds,fashion_seeds", ((), ()), "seeds and fashion_seeds are both empty"),
    ("digits.dp.enabled", False, "digits.dp.enabled is False"),
    ("epsilons", (-1.0,), "epsilons must be"), ("epsilons", (3.0, 3.0), "repeats a value"),
    ("fashion_seeds", (0, 0), r"fashion_seeds=\(0, 0\) repeats a value"),
    ("fashion_scratch", False, "fashion_seeds is set but the Fashion-MNIST table has no rows"),
    ("fashion_recipes.scratch", _private("scatternet"), "fashion_recipes.scratch would share the folder"),
    ("fashion_recipes.x", 3, "fashion_recipes.x is not a classifier config"),
    ("fashion_recipes.x", _private("digits,scatternet"), "fashion_recipes.x is not a private Fashion-MNIST recipe"),
    ("fashion_recipes.x", _private("tramer_boneh,whitened"),
     "fashion_recipes.x.model.precondition=channels whitens scattering features")])
def test_refusals(field, value, message):
  from configs.private_study import get_config
  config = get_config("smoke")
  for field, value in (zip(field.split(","), value) if "," in field else [(field, value)]):
    *parents, leaf = field.split(".")
    node = config
    for key in parents:
      node = node[key]
    with node.ignore_type():
      node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    private_study.check_config(config)


def test_fashion_only_study_skips_the_public_pretraining(tmp_path, monkeypatch):
  from configs.private_study import get_config
  config = get_config()
  config.seeds, config.epsilons = (), (3.0,)
  seen = _fake_classifier(monkeypatch)
  summary = private_study.train_and_evaluate(config, str(tmp_path))
  assert [w[len(str(tmp_path)) + 1:] for w, _ in seen] == ["fashion_mnist/eps3/scratch/seed0"]
  assert summary["status"] == "completed" and summary["pretrain"] == {}


def test_models_are_named_from_the_config():
  from configs import private
  assert private_study.describe_model(private.get_config()) == "GroupNorm ResNet18 (width 16)"
  assert private_study.describe_model(private.get_config("tramer_boneh")) == "tanh_cnn"
  assert private_study.describe_model(private.get_config("scatter_cnn")) == "ScatterNet + CNN"
  assert (private_study.describe_model(private.get_config("scatternet,whitened"))
          == "ScatterNet + linear, privately whitened features")


def test_merge_of_processes_split_by_seed(tmp_path, monkeypatch):
  """Two processes (seed 0 with the pretraining, seed 1 with a copy of it) give the one-process table."""
  from configs.private_study import get_config
  _fake_classifier(monkeypatch)
  tables = {}
  for seeds, fashion in (((0,), (0,)), ((1,), ()), ((0, 1), (0,))):
    config = get_config()
    config.epsilons, config.seeds, config.fashion_seeds = (3.0, 0.0), seeds, fashion
    workdir = tmp_path / "-".join(map(str, seeds))
    summary = private_study.train_and_evaluate(config, str(workdir))
    tables[seeds] = summary["table"]
  merged = private_study.merge([str(tmp_path / "0"), str(tmp_path / "1"), str(tmp_path / "nonexistent")])
  one = tables[(0, 1)]
  assert "(2 seeds)" in merged and "| tlgan: GroupNorm ResNet18 (width 16) |" in merged
  assert "Public pretraining: GroupNorm ResNet18 (width 16) on Fashion-MNIST" in merged
  assert merged.splitlines()[0] == one.splitlines()[0] and merged.count("\n|") == one.count("\n|")
