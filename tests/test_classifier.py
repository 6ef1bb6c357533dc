"""Classifier steps (full, linear probe, discriminative LRs, label smoothing, masked eval) and the trainer."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import override
from tlgan import pretrained
from tlgan.models.resnet import ResNet
from tlgan.steps import classifier as clf
from tlgan.steps.classifier import eval_step, train_step
from tlgan.models import initializers

SHAPE = (16, 16, 3)
MODEL = ResNet(stage_sizes=(1, 1), width=8, num_classes=5)


def make_state(mode="full", factor=1.0, optimizer="sgd", weight_decay=0.0, momentum=0.9, smoothing=0.0):
  tx = clf.make_optimizer(mode=mode, optimizer=optimizer, learning_rate=0.1, backbone_lr_factor=factor,
                          momentum=momentum, weight_decay=weight_decay, warmup_steps=0, total_steps=100)
  return clf.init_state(jax.random.key(0), MODEL, tx, image_shape=SHAPE, num_classes=5,
                        label_smoothing=smoothing, mode=mode)


def batch(n=8, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"image": initializers.normal(k1, (n, *SHAPE)), "label": jax.random.randint(k2, (n,), 0, 5)}


def _changed(a, b):
  return {"/".join(str(k.key) for k in path): not np.array_equal(x, y)
          for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b))}


step = jax.jit(train_step)


def test_full_finetuning_moves_everything():
  state = make_state("full")
  new, metrics = step(state, batch(), jax.random.key(0))
  assert all(_changed(state.params, new.params).values())
  assert all(_changed(state.batch_stats, new.batch_stats).values())
  assert set(metrics) == {"loss", "accuracy", "grad_norm"} and np.isfinite(float(metrics["loss"]))


def test_linear_probe_moves_only_the_head():
  state = make_state("linear_probe", weight_decay=1e-2)
  new = state
  for i in range(2):
    new, _ = step(new, batch(seed=i), jax.random.key(0))
  changed = _changed(state.params, new.params)
  assert changed["fc/kernel"] and changed["fc/bias"]
  assert not any(v for k, v in changed.items() if not k.startswith("fc/"))
  assert not any(_changed(state.batch_stats, new.batch_stats).values())  # BN frozen too


def test_discriminative_learning_rates():
  """Plain SGD, first step: the backbone's update is exactly factor x the head-rate update."""
  b = batch()
  base, _ = step(make_state(factor=1.0, momentum=0.0), b, jax.random.key(0))
  slow, _ = step(make_state(factor=0.1, momentum=0.0), b, jax.random.key(0))
  start = make_state().params
  for (path, p0), p1, p2 in zip(jax.tree_util.tree_flatten_with_path(start)[0], jax.tree.leaves(base.params),
                                jax.tree.leaves(slow.params)):
    factor = 1.0 if path[0].key == "fc" else 0.1
    # Deltas of float32 parameters of size ~1 carry a rounding error of a few ulps (1.2e-7 each).
    np.testing.assert_allclose(np.asarray(p2 - p0), factor * np.asarray(p1 - p0), rtol=1e-4, atol=3e-7)


def test_parameter_ema_follows_its_formula_and_is_what_evaluation_uses():
  """optim.ema_decay: the average of the parameters after each step, with the (1 + t) / (10 + t) warm-up, in
  float64 by hand; the training parameters themselves are those of the same optimiser without the EMA."""
  tx = clf.make_optimizer(learning_rate=0.1, momentum=0.9, total_steps=100, ema_decay=0.9)
  state = clf.init_state(jax.random.key(0), MODEL, tx, image_shape=SHAPE, num_classes=5)
  plain = make_state()
  expected = jax.tree.map(lambda p: np.asarray(p, np.float64), state.params)
  for t in range(4):
    state, _ = step(state, batch(seed=t), jax.random.key(0))
    plain, _ = step(plain, batch(seed=t), jax.random.key(0))
    decay = min(0.9, (1 + t) / (10 + t))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p, np.float64), expected, state.params)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.eval_variables["params"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  b = {**batch(seed=9), "mask": jnp.ones(8, bool)}
  with_ema = eval_step(state, b)
  without = eval_step(state.replace(opt_state=state.opt_state.inner), b)
  assert float(with_ema["loss_sum"]) != float(without["loss_sum"])
  by_hand = eval_step(state.replace(params=state.opt_state.ema, opt_state=state.opt_state.inner), b)
  np.testing.assert_array_equal(with_ema["loss_sum"], by_hand["loss_sum"])
  with pytest.raises(ValueError, match="decay must be in"):
    clf.with_param_ema(tx, 1.0)


def test_label_smoothed_cross_entropy_vs_float64():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(0, 2, (6, 5)), rng.integers(0, 5, 6)
  eps = 0.1
  targets = np.full((6, 5), eps / 5) + (1 - eps) * np.eye(5)[labels]
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ref = -(targets * log_softmax).sum(1)
  got = clf.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), 5, eps)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)


def test_masked_eval_sums():
  state = make_state()
  b = batch(n=8)
  mask = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
  sums = jax.jit(eval_step)(state, {**b, "mask": jnp.asarray(mask)})
  logits = np.asarray(MODEL.apply(state.variables, b["image"], train=False))
  pred, labels = logits.argmax(-1), np.asarray(b["label"])
  assert int(sums["count"]) == mask.sum()
  assert int(sums["correct"]) == int(((pred == labels) & mask).sum())
  confusion = np.zeros((5, 5), int)
  for t, p in zip(labels[mask], pred[mask]):
    confusion[t, p] += 1
  np.testing.assert_array_equal(np.asarray(sums["confusion"]), confusion)


# ----------------------------------------------------------------------------------------------------------
# The trainer, end to end on TFDS mock data.

def smoke(**overrides):
  from configs import transfer
  config = transfer.get_config("smoke")
  config.data.manual_dir = "/nonexistent"
  return override(config, **overrides)


def train(config, workdir):
  from tlgan.trainers import classifier
  with tfds.testing.mock_data(num_examples=32):
    return classifier.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("clf")
  return str(workdir), train(smoke(), workdir)


@pytest.mark.slow
def test_trainer_writes_summary_confusion_and_weights(pretrain_run):
  workdir, summary = pretrain_run
  assert summary["status"] == "completed" and summary["step"] == 4  # 32 examples / batch 8
  assert summary["test_examples"] == 32 and 0.0 <= summary["test_accuracy"] <= 1.0
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["test_accuracy"] == summary["test_accuracy"]
  for png in ("confusion.png", "curves.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(4) == b"\x89PNG"
  variables, meta = pretrained.load(os.path.join(workdir, "model.msgpack"))
  assert meta.arch == "resnet18" and variables["params"]["fc"]["kernel"].shape == (64, 10)


@pytest.mark.slow
def test_sigterm_then_resume_is_exact(pretrain_run, tmp_path, monkeypatch):
  """A real SIGTERM after step 2 of 4: checkpoint, 'preempted'; rerun: bit-identical to the 4-step run."""
  from tlgan.trainers import loop
  workdir, _ = pretrain_run
  real_run = loop.run

  def run_with_sigterm(**kwargs):
    def send(step, state):
      if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_run(**{**kwargs, "hooks": (*kwargs["hooks"], (1, send))})

  monkeypatch.setattr(loop, "run", run_with_sigterm)
  first = train(smoke(), tmp_path)
  assert first["status"] == "preempted" and first["step"] == 2
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  monkeypatch.setattr(loop, "run", real_run)
  second = train(smoke(), tmp_path)
  assert second["status"] == "completed" and second["resumed_from_step"] == 2
  resumed, _ = pretrained.load(str(tmp_path / "model.msgpack"))
  uninterrupted, _ = pretrained.load(os.path.join(workdir, "model.msgpack"))
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_finetune_from_exported_weights(pretrain_run, tmp_path):
  workdir, _ = pretrain_run
  summary = train(smoke(**{"init.weights": os.path.join(workdir, "model.msgpack"), "data.per_class": 1,
                           "mode": "linear_probe"}), tmp_path)
  assert summary["not_loaded"] == ["params/fc/bias", "params/fc/kernel"]
  assert summary["mode"] == "linear_probe" and summary["status"] == "completed"


@pytest.mark.slow
def test_resnet_options_dtype_and_zero_init_residual():
  from tlgan.models import ResNet18
  x = initializers.normal(jax.random.key(0), (2, 32, 32, 3))
  model = ResNet18(num_classes=4, width=8, zero_init_residual=True)
  variables = jax.jit(model.init)(jax.random.key(1), x)  # jitted: one compile, not one per operation
  # torchvision's zero_init_residual: the last BatchNorm of every block starts at scale 0.
  for name, block in variables["params"].items():
    if name.startswith("layer"):
      assert not np.any(np.asarray(block["bn2"]["scale"])) and np.all(np.asarray(block["bn1"]["scale"]) == 1)
  logits32 = jax.jit(ResNet18(num_classes=4, width=8).apply)(variables, x)
  logits16 = jax.jit(ResNet18(num_classes=4, width=8, dtype=jnp.bfloat16).apply)(variables, x)
  assert variables["params"]["conv1"]["kernel"].dtype == jnp.float32  # parameters stay float32
  np.testing.assert_allclose(np.asarray(logits16, np.float32), np.asarray(logits32), rtol=0.1, atol=0.05)
  features = jax.jit(lambda v, x: ResNet18(num_classes=4, width=8).apply(v, x, method="features"))(variables, x)
  assert features.shape == (2, 64)
