"""The transfer study's one command, tiny: pretrain, fine-tune arms over label counts and seeds, table."""

import json

import pytest

import tensorflow_datasets as tfds

from tlgan.trainers import transfer_study

pytestmark = pytest.mark.slow  # a whole (tiny) study end to end


def test_study_writes_table_and_readme(tmp_path):
  from configs.transfer_study import get_config
  config = get_config("smoke")
  for sub in (config.pretrain, config.finetune):  # the study's logic, on a model that compiles in ~2 s, not ~30
    sub.model.arch = "tanh_cnn"
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{transfer_study.README_START}\nold table\n{transfer_study.README_END}\noutro\n")
  config.update_readme = True
  config.readme = str(readme)
  with tfds.testing.mock_data(num_examples=16):
    summary = transfer_study.train_and_evaluate(config, str(tmp_path / "study"))
  assert summary["status"] == "completed"
  assert [row["run"] for row in summary["rows"]] == [  # label counts x arms x seeds
      "1_per_class/scratch/seed0", "1_per_class/finetune/seed0", "1_per_class/probe/seed0"]
  with open(tmp_path / "study" / "1_per_class" / "probe" / "seed0" / "summary.json") as f:
    probe = json.load(f)
  assert probe["mode"] == "linear_probe" and probe["train_examples"] == 10
  assert probe["not_loaded"] == ["params/fc/bias", "params/fc/kernel"]
  table = (tmp_path / "study" / "results.md").read_text()
  assert table.count("\n| ") == 3 and "(1 seeds: mean ± std) | 1 labels/class |" in table
  text = readme.read_text()
  assert "old table" not in text and table in text and text.startswith("intro\n") and text.endswith("outro\n")
