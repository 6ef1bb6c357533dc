"""End to end: the GAN trainer on TFDS mock data, exact resume, sample export, FreezeD and transfer init
(the CLI's answers to bad input: tests/test_reliability.py's table)."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import smoke_gan, train_gan, tree_hash
from tlgan.checkpoint import Checkpointer
from tlgan.errors import ConfigError
from tlgan.trainers import gan as gan_trainer
from tlgan.models import initializers

pytestmark = pytest.mark.slow  # end-to-end GAN runs


def final_state(config, workdir):
  state = gan_trainer.build_state(config, (28, 28, 1))
  restored, step = Checkpointer(os.path.join(workdir, "checkpoints"), {}).restore_latest(state)
  return restored, step


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = smoke_gan(num_steps=4)
  summary = train_gan(config, workdir)
  return config, str(workdir), summary


def test_run_writes_checkpoint_png_and_summary(finished_run):
  config, workdir, summary = finished_run
  assert summary["status"] == "completed" and summary["step"] == 4
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f) == summary
  assert all(np.isfinite(v) for v in summary["final_metrics"].values())
  final = summary["final_eval"]
  from tlgan.feature_networks import SHIPPED
  name, sha256 = SHIPPED["fashion_mnist"]
  assert final["networks"] == {name: sha256} and final["num_samples"] == 32  # the shipped network, by its hash
  assert final["reference"] == "fashion_mnist[test] (64 images)"
  fd = final["generated"][f"FD[{name}]"]
  assert np.isfinite(fd) and fd > final["floor_train_vs_reference"][f"FD[{name}]"]
  assert f"FD[{name}]" in summary["final_metrics"] and f"precision[{name}]" in summary["final_metrics"]
  assert summary["machine"]["cpu"] and summary["machine"]["backend"] == "cpu"
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  for png in ("samples.png", "losses.png", "fd.png", "samples/step_000002.png", "samples/step_000004.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4] and "d_loss" in rows[0] and "images_per_s" in rows[0]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tensorboard")))


def test_exact_resume(finished_run, tmp_path):
  """2 steps, then on to 4 in the same workdir == the uninterrupted 4-step run, bit for bit."""
  config, workdir, _ = finished_run
  train_gan(smoke_gan(num_steps=2), tmp_path)
  summary = train_gan(smoke_gan(num_steps=4), tmp_path)
  assert summary["resumed_from_step"] == 2
  resumed, _ = final_state(config, str(tmp_path))
  uninterrupted, step = final_state(config, workdir)
  assert step == 4
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)
  rows = [json.loads(line)["step"] for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert rows == [2, 4]


def test_mismatched_checkpoint_is_refused_untouched(finished_run):
  _, workdir, _ = finished_run
  before = tree_hash(workdir)
  with pytest.raises(Exception, match=r"does not fit this config.*use another --workdir"):
    train_gan(smoke_gan(**{"model.g_features": 16}), workdir)
  assert tree_hash(workdir) == before  # the CLI's answer: tests/test_reliability.py's table


def test_nonfinite_loss_stops_without_checkpoint(tmp_path):
  with pytest.raises(Exception, match=r"diverged: \w+ = nan at step 1"):  # a NaN batch at the first step
    train_gan(smoke_gan(num_steps=4, inject_nan_at_step=1), tmp_path)
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))
  with pytest.raises(ConfigError, match="d_lr must be positive, got nan"):  # a NaN setting never starts
    train_gan(smoke_gan(num_steps=4, d_lr=float("nan")), tmp_path / "other")


def test_sample_export_round_trips(finished_run, tmp_path):
  from tlgan.trainers import export
  config, workdir, _ = finished_run
  out = str(tmp_path / "samples.npz")
  export.export_samples(workdir, 10, out, seed=3, batch_size=4)
  with np.load(out) as f:
    images, step = f["images"], int(f["step"])
  assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8 and step == 4
  assert images.min() >= 0 and images.max() <= 255 and images.std() > 0
  # The same latents through the restored EMA generator, by hand: the file holds exactly those images.
  state, _ = final_state(config, workdir)
  z = jax.random.normal(jax.random.key(3), (10, config.model.latent_dim))
  from tlgan.feature_networks import to_uint8
  from tlgan.steps.gan import sample
  np.testing.assert_array_equal(images, to_uint8(sample(state, z)))
  # Without a seed: the run's evaluation latents (those its summary.json numbers were computed on).
  export.export_samples(workdir, 10, out, batch_size=4)
  with np.load(out) as f:
    z = jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), 0xE7A1), (10, config.model.latent_dim))
    np.testing.assert_array_equal(f["images"], to_uint8(sample(state, z)))


def test_evaluate_in_another_feature_space(finished_run, tmp_path):
  """experiments.evaluate's core: the run's samples in a second network's space, named after it, with FD equal
  to the Frechet distance of that network's features of the same samples, computed here from scratch."""
  from tlgan import evaluation, feature_networks, pretrained
  from tlgan.trainers import export, gan_eval
  config, workdir, _ = finished_run
  model = pretrained.model_for("resnet18", 10, stem="cifar", width=8)
  variables = model.init(jax.random.key(5), np.zeros((1, 32, 32, 3), np.float32), train=False)
  path = str(tmp_path / "other.msgpack")
  pretrained.save(path, variables, pretrained.WeightsMeta("resnet18", stem="cifar", image_size=32))
  with tfds.testing.mock_data(num_examples=64):
    result = export.evaluate_run(workdir, path, 40)
    test_images, _ = gan_trainer.data.load_split("fashion_mnist", "test", manual_dir="/nonexistent")
  # not a shipped network: its name says its shape and carries its weights' hash
  name = f"resnet18w8-cifarstem-fashion_mnist@{pretrained.sha256_of(path)[:8]}"
  assert result["network"] == name and result["step"] == 4 and result["networks"] == {name: pretrained.sha256_of(path)}
  net = feature_networks.domain_resnet(path, "fashion_mnist")
  state, _ = final_state(config, workdir)
  # the evaluator's fixed latents, quantised to uint8 like real images
  fake, _ = net(gan_eval.generate_uint8(state, gan_eval.eval_latents(config.seed, 40, config.model.latent_dim)))
  real, _ = net(test_images)
  f64 = lambda x: (x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False))
  expected = evaluation.frechet_distance(*f64(fake), *f64(real))
  assert result["generated"][f"FD[{name}]"] == pytest.approx(expected, rel=1e-6)
  with pytest.raises(export.UserError, match="does not exist"):
    export.evaluate_run(workdir, str(tmp_path / "none.msgpack"), 10)


def test_freeze_d_keeps_the_lowest_blocks_fixed():
  config = smoke_gan(**{"transfer.freeze_d_layers": 1})
  state = gan_trainer.build_state(config, (28, 28, 1))
  from tlgan import param_groups
  from tlgan.models.dcgan import d_block_layers
  labels = param_groups.labels(state.d_params, [(name, "frozen") for name in d_block_layers(1)], "train")
  assert labels["Conv_0"] == {"kernel": "frozen", "bias": "frozen"} and labels["Conv_1"]["kernel"] == "train"
  from tlgan.steps.gan import train_step
  batch = {"image": initializers.uniform(jax.random.key(0), (8, 28, 28, 1), minval=-1, maxval=1)}
  new, _ = jax.jit(train_step)(state, batch, jax.random.key(1))
  for name, sub in state.d_params.items():
    for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(new.d_params[name])):
      assert np.array_equal(a, b) == (name == "Conv_0"), name  # frozen stays, everything else moves
  with pytest.raises(Exception, match="freeze_d_layers=3, but D has 2 convolution blocks"):
    gan_trainer.build_state(smoke_gan(**{"transfer.freeze_d_layers": 3}), (28, 28, 1))


def test_init_from_another_run_takes_g_and_d_but_fresh_optimisers(finished_run):
  config, workdir, _ = finished_run
  target = smoke_gan(**{"data.name": "digits28", "transfer.init_workdir": workdir, "transfer.freeze_d_layers": 1})
  fresh = gan_trainer.build_state(target, (28, 28, 1))
  state = gan_trainer.init_from_source(target, fresh, (28, 28, 1))
  source, step = final_state(config, workdir)
  assert step == 4 and int(state.step) == 0
  for name in ("g_params", "d_params", "g_batch_stats", "d_batch_stats", "ema_params"):
    for a, b in zip(jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(source, name))):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.d_opt_state), jax.tree.leaves(fresh.d_opt_state)):
    np.testing.assert_array_equal(a, b)  # Adam's moments start from zero for the new domain
  from tlgan import data
  images, labels = data.load_split("digits28", "train")
  assert images.shape == (1258, 28, 28, 1) and images.dtype == np.uint8 and len(labels) == 1258


def test_old_run_config_reads_with_todays_defaults(tmp_path):
  """A GAN run saved before a field existed loads with that field's default and its own saved values."""
  from configs import gan
  from tlgan.trainers import export
  saved = gan.get_config().to_dict()
  del saved["model"]["discriminator"]
  saved["model"]["d_features"], saved["model"]["d_trunk_stages"] = 32, ["layer1"]  # JSON gives lists
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = export.load_run_config(str(tmp_path), defaults=gan.get_config())
  assert config.model.discriminator == "dcgan" and config.model.d_features == 32
  assert list(config.model.d_trunk_stages) == ["layer1"]
