"""The streaming input path (tlgan.streaming): batches read example by example from an ArrayRecord copy equal
the in-memory path's batches bit for bit (the oracle: today's TensorFlow pipeline on a TFRecord copy of the
same data), on 1 and 2 shards, across epochs, from any start step, with threads and with a worker process;
two processes read disjoint rows that make up the one-process batch; a GAN trains to the same parameters."""

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.test_data import write_idx
from tlgan import data, streaming
from tlgan.errors import ConfigError

N_TRAIN, N_TEST, BATCH, SEED = 200, 64, 8, 3


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
  """A small Fashion-MNIST-format dataset prepared twice by TFDS: as TFRecord and as ArrayRecord."""
  root = tmp_path_factory.mktemp("streaming")
  rng = np.random.default_rng(0)
  folder = root / "idx"
  folder.mkdir()
  for stem, n in (("train", N_TRAIN), ("t10k", N_TEST)):
    write_idx(str(folder / f"{stem}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(str(folder / f"{stem}-labels-idx1-ubyte.gz"), rng.integers(0, 10, n).astype(np.uint8))
  where = {"tfrecord": str(root / "tfrecord"), "array_record": str(root / "array_record")}
  for file_format, data_dir in where.items():
    data.get_builder("fashion_mnist", data_dir, str(folder), download=False, file_format=file_format)
  return where, str(folder)


def _builder(copies, file_format):
  where, folder = copies
  return data.get_builder("fashion_mnist", where[file_format], folder, download=False)


_LOADED = {}


def _memory_batches(copies, num_shards, start_step, batch=BATCH):
  """Today's in-memory pipeline (TensorFlow) on the TFRecord copy, one process."""
  where, folder = copies
  if num_shards not in _LOADED:
    _LOADED[num_shards] = data.load_shards("fashion_mnist", "train", num_shards=num_shards,
                                           data_dir=where["tfrecord"], manual_dir=folder, download=False)
  return data.sharded_train_batches(_LOADED[num_shards], batch_size=batch, seed=SEED, start_step=start_step)


def _streamed_batches(copies, num_shards, start_step, process_index=0, process_count=1, batch=BATCH, workers=0):
  shards = streaming.load_shards(_builder(copies, "array_record"), "train", (28, 28, 1), num_shards=num_shards,
                                 process_index=process_index, process_count=process_count)
  return streaming.train_batches(shards, batch_size=batch, seed=SEED, start_step=start_step, workers=workers)


def _assert_same(a, b):
  assert a.keys() >= {"image", "label"} and b.keys() >= {"image", "label"}
  assert a["image"].dtype == b["image"].dtype == np.float32
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


def test_the_array_record_copy_holds_the_tfrecord_copys_examples_in_its_order(copies):
  where, folder = copies
  assert data.is_array_record(_builder(copies, "array_record")) and not data.is_array_record(_builder(copies, "tfrecord"))
  for split in ("train", "test", "train[100:200]"):
    x1, y1 = data.load_split("fashion_mnist", split, data_dir=where["tfrecord"], manual_dir=folder, download=False)
    x2, y2 = data.load_split("fashion_mnist", split, data_dir=where["array_record"], manual_dir=folder,
                             download=False)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("num_shards", [1, 2])
def test_streamed_batches_equal_the_in_memory_batches(copies, num_shards):
  steps = 2 * N_TRAIN // BATCH + 3  # more than two epochs: the permutation changes at each
  memory = _memory_batches(copies, num_shards, 0)
  streamed = _streamed_batches(copies, num_shards, 0)
  for _ in range(steps):
    _assert_same(next(memory), next(streamed))


def test_a_stream_started_at_step_k_reads_batch_k_first(copies):
  whole = _streamed_batches(copies, 2, 0)
  for _ in range(29):  # into the second epoch
    next(whole)
  _assert_same(next(_streamed_batches(copies, 2, 29)), next(whole))
  _assert_same(next(_streamed_batches(copies, 2, 29)), next(_memory_batches(copies, 2, 29)))


def test_a_worker_process_streams_the_same_batches(copies):
  memory = _memory_batches(copies, 2, 11)
  streamed = _streamed_batches(copies, 2, 11, workers=1)
  for _ in range(3):
    _assert_same(next(memory), next(streamed))


def test_the_classifiers_augmented_batches_stream_the_same(copies):
  """Random shifts and flips seeded by (seed, step, shard): TensorFlow's in memory, NumPy's on the stream."""
  from tlgan import host_preprocessing
  from tlgan.preprocessing import IMAGENET_MEAN, IMAGENET_STD, classifier_map_fn
  kwargs = dict(image_size=32, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, train=True, crop_padding=2,
                flip=True, seed=SEED)
  where, folder = copies
  next(_memory_batches(copies, 2, 0))
  memory = data.sharded_train_batches(_LOADED[2], batch_size=BATCH, seed=SEED, start_step=20,
                                      map_fn=classifier_map_fn(**kwargs))
  shards = streaming.load_shards(_builder(copies, "array_record"), "train", (28, 28, 1), num_shards=2)
  streamed = streaming.train_batches(shards, batch_size=BATCH, seed=SEED, start_step=20,
                                     map_fn=host_preprocessing.classifier_fn(**kwargs))
  for _ in range(8):  # into the next epoch
    _assert_same(next(memory), next(streamed))
  x, y = data.load_split("fashion_mnist", "test", data_dir=where["tfrecord"], manual_dir=folder, download=False)
  eval_kwargs = {**kwargs, "train": False}
  tf_eval = data.eval_batches(x, y, batch_size=24, map_fn=classifier_map_fn(**eval_kwargs), num_batches=4)
  np_eval = streaming.eval_batches(x, y, batch_size=24, map_fn=host_preprocessing.classifier_fn(**eval_kwargs),
                                   num_batches=4)
  for a, b in zip(tf_eval, np_eval, strict=True):
    _assert_same(a, b)
    np.testing.assert_array_equal(a["mask"], b["mask"])


def test_two_processes_read_disjoint_rows_that_make_the_one_process_batch(copies):
  """With data.num_shards=2, process p of 2 owns shard p: its rows are its half of the global batch."""
  builder = _builder(copies, "array_record")
  halves = [streaming.load_shards(builder, "train", (28, 28, 1), num_shards=2, process_index=p, process_count=2)
            for p in (0, 1)]
  assert [s.index for s in halves[0]] == [0] and [s.index for s in halves[1]] == [1]
  seen = [{x.tobytes() for x in h[0].images[np.arange(len(h[0].images))]} for h in halves]
  assert not seen[0] & seen[1] and len(seen[0]) + len(seen[1]) == N_TRAIN  # disjoint, together the split
  one = _streamed_batches(copies, 2, 4, batch=BATCH)
  parts = [_streamed_batches(copies, 2, 4, process_index=p, process_count=2, batch=BATCH // 2) for p in (0, 1)]
  for _ in range(3):
    whole, a, b = next(one), next(parts[0]), next(parts[1])
    _assert_same(whole, {k: np.concatenate([a[k], b[k]]) for k in ("image", "label")})


def test_the_training_images_read_on_demand_equal_the_loaded_ones(copies):
  """What the FD floor subsamples: `ConcatenatedImages[idx]` == np.concatenate(shards)[idx]."""
  next(_memory_batches(copies, 2, 0))
  loaded = np.concatenate([s.images for s in _LOADED[2]])
  shards = streaming.load_shards(_builder(copies, "array_record"), "train", (28, 28, 1), num_shards=2)
  lazy = streaming.ConcatenatedImages([s.images for s in shards])
  assert lazy.shape == loaded.shape and len(lazy) == N_TRAIN
  idx = np.random.default_rng(1).choice(N_TRAIN, 50, replace=False)
  np.testing.assert_array_equal(lazy[idx], loaded[idx])


def test_choosing_the_pipeline(copies):
  tfrecord, array_record = _builder(copies, "tfrecord"), _builder(copies, "array_record")
  assert streaming.choose("auto", tfrecord) == "memory"
  assert streaming.choose("auto", array_record) == "memory"  # 0.1 MB: fits
  assert streaming.choose("auto", array_record, memory_fraction=0.0) == "streaming"
  assert streaming.choose("memory", array_record) == "memory"
  with pytest.raises(ConfigError, match="needs the dataset prepared as ArrayRecord.*file_format=array_record"):
    streaming.choose("streaming", tfrecord)
  with pytest.raises(ConfigError, match="data.pipeline='disk'"):
    streaming.choose("disk", tfrecord)
  with pytest.raises(ConfigError, match="data.workers=100000 processes"):
    _streamed_batches(copies, 1, 0, workers=100000)


@pytest.mark.slow
def test_a_gan_trained_and_resumed_on_the_stream_equals_the_gan_trained_in_memory(copies, tmp_path):
  from tests.helpers import smoke_gan
  from tlgan.checkpoint import Checkpointer
  from tlgan.trainers import gan as gan_trainer
  where, folder = copies
  states = {}
  for pipeline, file_format in (("memory", "tfrecord"), ("streaming", "array_record")):
    def config(steps):
      return smoke_gan(num_steps=steps, checkpoint_every=3, log_every=3, **{
          "eval.enabled": False, "data.manual_dir": folder, "data.data_dir": where[file_format],
          "data.pipeline": pipeline, "data.download": False})
    workdir = str(tmp_path / pipeline)
    if pipeline == "streaming":  # and resumed half-way
      assert gan_trainer.train_and_evaluate(config(3), workdir)["status"] == "completed"
    summary = gan_trainer.train_and_evaluate(config(6), workdir)
    assert summary["status"] == "completed"
    assert summary.get("resumed_from_step") == (3 if pipeline == "streaming" else None)
    state = gan_trainer.build_state(config(6), (28, 28, 1))
    states[pipeline], step = Checkpointer(os.path.join(workdir, "checkpoints"), {}).restore_latest(state)
    assert step == 6
  for a, b in zip(jax.tree.leaves(states["memory"]), jax.tree.leaves(states["streaming"])):
    np.testing.assert_array_equal(a, b)


# Makes TensorFlow look not installed to this process (what `import` and `importlib.util.find_spec` see), as on
# the accelerator images, then runs experiments.main. (`sys.modules['tensorflow'] = None` is not the same:
# TFDS takes a key in sys.modules for TensorFlow loaded.)
_WITHOUT_TENSORFLOW = """
import importlib.machinery, runpy, sys
class HideTensorFlow:
  def __init__(self, inner):
    self.inner = inner
  def find_spec(self, name, path=None, target=None):
    return None if name.split(".")[0] == "tensorflow" else self.inner.find_spec(name, path, target)
  def __getattr__(self, name):
    return getattr(self.inner, name)
sys.meta_path[:] = [HideTensorFlow(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = ["experiments.main", *sys.argv[1:]]
runpy.run_module("experiments.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["gan", "classifier"])
def test_training_and_evaluation_on_array_record_data_need_no_tensorflow(copies, tmp_path, experiment):
  """A GAN run with evaluation (shipped metric network), and a classifier run with augmentation and test
  accuracy, on the ArrayRecord copy with TensorFlow hidden."""
  import json
  import subprocess
  import sys
  from tests.helpers import CACHE_DIR, REPO
  where, folder = copies
  if experiment == "gan":
    args = ["--config=configs/gan.py:smoke", "--config.eval.num_samples=32", f"--config.eval.cache_dir={CACHE_DIR}"]
  else:
    args = ["--config=configs/transfer.py:smoke", "--config.num_steps=2"]
  args += [f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={where['array_record']}",
           f"--config.data.manual_dir={folder}", "--config.data.download=false", "--config.data.pipeline=streaming"]
  probe = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW.replace("runpy.run_module", "import tensorflow #"),
                          *args], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert "ModuleNotFoundError: No module named 'tensorflow'" in probe.stderr  # the hiding works
  result = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "run" / "summary.json") as f:
    summary = json.load(f)
  assert summary["status"] == "completed"
  if experiment == "gan":
    assert summary["step"] == 4 and all(np.isfinite(v) for v in summary["final_eval"]["generated"].values())
  else:
    assert summary["step"] == 2 and summary["test_examples"] == N_TEST and 0 <= summary["test_accuracy"] <= 1


@pytest.mark.slow
def test_a_classifier_trained_on_the_stream_equals_the_classifier_trained_in_memory(copies, tmp_path):
  """With augmentation, evaluation and a checkpoint: the same parameters and test accuracy."""
  from configs import transfer
  from tests.helpers import override
  from tlgan.checkpoint import Checkpointer
  from tlgan.trainers import classifier
  where, folder = copies
  results = {}
  for pipeline, file_format in (("memory", "tfrecord"), ("streaming", "array_record")):
    config = override(transfer.get_config("smoke"), **{
        "num_steps": 3, "checkpoint_every": 3, "data.manual_dir": folder, "data.data_dir": where[file_format],
        "data.pipeline": pipeline, "data.download": False, "augment.crop_padding": 2, "augment.flip": True})
    summary = classifier.train_and_evaluate(config, str(tmp_path / pipeline))
    assert summary["status"] == "completed" and summary["test_examples"] == N_TEST
    state, _ = classifier.build_state(config, 10, 3, 25)
    state, step = Checkpointer(str(tmp_path / pipeline / "checkpoints"), {}).restore_latest(state)
    assert step == 3
    results[pipeline] = (summary["test_accuracy"], state)
  assert results["memory"][0] == results["streaming"][0]
  for a, b in zip(jax.tree.leaves(results["memory"][1]), jax.tree.leaves(results["streaming"][1])):
    np.testing.assert_array_equal(a, b)


def test_a_damaged_array_record_file_is_one_line_naming_the_folder(copies, tmp_path):
  import glob
  import shutil
  where, folder = copies
  damaged = str(tmp_path / "array_record")
  shutil.copytree(where["array_record"], damaged)
  victim = sorted(glob.glob(os.path.join(damaged, "**", "*train.array_record*"), recursive=True))[0]
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  builder = data.get_builder("fashion_mnist", damaged, folder, download=False)
  for read in (lambda: next(streaming.train_batches(streaming.load_shards(builder, "train", (28, 28, 1)),
                                                   batch_size=BATCH, seed=SEED)),
               lambda: data.load_split("fashion_mnist", "train", data_dir=damaged, manual_dir=folder, download=False)):
    with pytest.raises(data.DataUnavailableError, match="is damaged .*delete that folder") as error:
      read()
    assert damaged in str(error.value) and "\n" not in str(error.value)
