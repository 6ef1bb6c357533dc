"""benchmarks/accelerator_check.py runs where accelerator images leave it: without TensorFlow, TFDS,
ml_collections or Grain (blocked here), and checks what it says it checks."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, compile_fast_env

pytest.importorskip("torchvision")

BLOCKED = ("tensorflow", "tensorflow_datasets", "ml_collections", "grain")
RUN_BLOCKED = f"""
import runpy, sys
for name in {BLOCKED!r}:  # what an uninstalled package looks like: import fails, find_spec says None
  sys.modules[name] = None
sys.argv = ["accelerator_check", "--tiny"]
runpy.run_module("benchmarks.accelerator_check", run_name="__main__")
"""


@pytest.mark.slow
def test_runs_on_cpu_without_tensorflow_tfds_ml_collections_grain():
  # (compiled at level 0: the rows' numbers are not judged here, only that each is there and finite)
  result = subprocess.run([sys.executable, "-c", RUN_BLOCKED], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **compile_fast_env()})
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "torchvision resnet18 logits, cpu vs cpu | max abs diff" in out and ": OK |" in out, out
  rows = [l for l in out.splitlines() if l.startswith(("| DCGAN 28x28 |", "| ResNet18 32x32 |"))]
  assert len(rows) == 4, out  # two steps x two dtypes, each with PyTorch's images/s and a ratio
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] in ("float32", "bfloat16") and float(cells[2].replace(",", "")) > 0
    assert float(cells[3].replace(",", "")) > 0 and cells[4].endswith("x")


def test_its_models_are_the_configs_defaults():
  """The check builds the steps without ml_collections: its hyperparameters must stay those of the configs."""
  from benchmarks import accelerator_check as check
  from configs import gan, transfer
  g, t = gan.get_config(), transfer.get_config()
  assert check.DCGAN == dict(latent_dim=g.model.latent_dim, g_features=g.model.g_features,
                             d_features=g.model.d_features, lr=g.g_lr, b1=g.b1, b2=g.b2, loss=g.loss)
  assert g.d_lr == g.g_lr
  assert check.RESNET == dict(learning_rate=0.1, momentum=t.optim.momentum, weight_decay=t.optim.weight_decay,
                              num_classes=10, image_size=32)


def test_a_wrong_conversion_fails_the_check(monkeypatch):
  """The equivalence row can fail: a converter that gets one BatchNorm's shift wrong is caught."""
  from benchmarks import accelerator_check as check
  real = check.pretrained.from_torchvision

  def broken(state_dict, arch):
    v = real(state_dict, arch)
    v["batch_stats"]["bn1"]["mean"] = v["batch_stats"]["bn1"]["mean"] + 0.05
    return v

  monkeypatch.setattr(check.pretrained, "from_torchvision", broken)
  result = check.equivalence(32)
  assert not result["ok"] and result["max_abs_diff"] > result["tolerance"]
  monkeypatch.setattr(check.pretrained, "from_torchvision", real)
  assert check.equivalence(32)["ok"]


@pytest.mark.parametrize("arg", ["--batch_size=0", "--rounds=-1", "--steps_per_round=x", "--dtypes=float16"])
def test_bad_arguments_are_one_line_and_exit_2(arg, capsys):
  from benchmarks import accelerator_check as check
  with pytest.raises(SystemExit) as stop:
    check.main([arg])
  assert stop.value.code == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert "error:" in last and arg.split("=")[0].lstrip("-") in last, last
