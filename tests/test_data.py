"""The input pipeline: the offline IDX source through TFDS, (seed, step)-determined batches, clear errors."""

import gzip
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tlgan import data
from tlgan.errors import ConfigError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array):
  """Writes an unsigned-byte IDX file (gzipped), the format of the MNIST family."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture
def tiny_idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
      "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 10,
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
      "t10k-labels-idx1-ubyte": np.array([9, 8, 7, 6, 5], np.uint8),
  }
  folder = tmp_path / "idx"
  folder.mkdir()
  for stem, array in arrays.items():
    write_idx(str(folder / (stem + ".gz")), array)
  return str(folder), arrays


def _by_content(images, labels):
  """Examples as a set of (image bytes, label): TFDS stores them in its own order."""
  return sorted((img.tobytes(), int(lab)) for img, lab in zip(images, labels))


def test_idx_source_through_tfds(tiny_idx_dir, tmp_path):
  folder, arrays = tiny_idx_dir
  for split, stem in (("train", "train"), ("test", "t10k")):
    images, labels = data.load_split("fashion_mnist", split, data_dir=str(tmp_path / "tfds"), manual_dir=folder,
                                     download=False)
    assert images.shape == (len(arrays[f"{stem}-labels-idx1-ubyte"]), 28, 28, 1) and images.dtype == np.uint8
    assert _by_content(images[..., 0], labels) == _by_content(arrays[f"{stem}-images-idx3-ubyte"],
                                                              arrays[f"{stem}-labels-idx1-ubyte"])
  builder = data.get_builder("fashion_mnist", str(tmp_path / "tfds"), folder, download=False)
  assert builder.info.features["label"].names[9] == "Ankle boot"  # TFDS's own feature spec


def test_idx_header_is_validated(tmp_path):
  path = str(tmp_path / "bad.gz")
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(9))  # says 10 bytes, holds 9
  with pytest.raises(data.DataUnavailableError, match="header says"):
    data.read_idx(path)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.slow
def test_real_fashion_mnist(tmp_path_factory):
  data_dir = os.environ.get("TLGAN_TEST_TFDS_DIR") or str(tmp_path_factory.mktemp("tfds"))
  train_x, train_y = data.load_split("fashion_mnist", "train", data_dir=data_dir, manual_dir=DEBIAN_DIR,
                                     download=False)
  test_x, test_y = data.load_split("fashion_mnist", "test", data_dir=data_dir, manual_dir=DEBIAN_DIR,
                                   download=False)
  assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)  # the published class balance
  np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
  # The labels belong to their images: compare with the raw IDX files, read independently of TFDS.
  raw_x = data.read_idx(os.path.join(DEBIAN_DIR, "t10k-images-idx3-ubyte.gz"))
  raw_y = data.read_idx(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz"))
  assert _by_content(test_x[..., 0], test_y) == _by_content(raw_x, raw_y)


def test_digits_are_scikit_learns_read_without_importing_it():
  """The digits come from the file scikit-learn ships, equal to its own `load_digits`; a run that loads them
  does not pay scikit-learn's import (1.1 s of start-up). The split: 30% of each class in 'test', disjoint."""
  from sklearn.datasets import load_digits
  images, labels = data._digits()
  reference = load_digits()
  np.testing.assert_array_equal(images, reference.images)
  np.testing.assert_array_equal(labels, reference.target)
  (train, train_labels), (test, test_labels) = (data.load_split("digits", s) for s in ("train", "test"))
  assert len(train) + len(test) == 1797 and train.dtype == np.uint8 and train.max() == 255
  for c in range(10):
    n = int(np.sum(reference.target == c))
    assert np.sum(test_labels == c) == round(0.3 * n) and np.sum(train_labels == c) == n - round(0.3 * n)
  code = "import sys; from tlgan import data; data.load_split('digits28', 'train'); print('sklearn' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("damage,message", [
    ("truncated", "is damaged or unreadable"),
    ("not gzip", "is damaged or unreadable"),
    ("text", "is not a table of numbers"),
    ("a row short", "holds a 1796 x 65 table, not scikit-learn's 1797 digits"),
    ("a pixel of 17", "holds a 1797 x 65 table, not scikit-learn's 1797 digits"),
    ("a label of 10", "holds a 1797 x 65 table, not scikit-learn's 1797 digits"),
])
def test_a_damaged_digits_file_is_one_line_naming_it_and_the_fix(tmp_path, monkeypatch, damage, message):
  original = data._digits_file()
  with gzip.open(original, "rb") as f:
    raw = f.read()
  lines = raw.decode().splitlines()
  path = tmp_path / "digits.csv.gz"
  if damage == "truncated":
    path.write_bytes(open(original, "rb").read()[:500])
  elif damage == "not gzip":
    path.write_bytes(raw)
  else:
    if damage == "text":
      lines[3] = "not,a,number"
    elif damage == "a row short":
      lines = lines[:-1]
    elif damage == "a pixel of 17":
      lines[0] = "17" + lines[0][lines[0].index(","):]
    else:
      lines[0] = lines[0][:lines[0].rindex(",") + 1] + "10"
    with gzip.open(path, "wb") as f:
      f.write("\n".join(lines).encode())
  monkeypatch.setattr(data, "_digits_file", lambda: str(path))
  with pytest.raises(data.DataUnavailableError) as e:
    data.load_split("digits", "train")
  text = str(e.value)
  assert "\n" not in text and str(path) in text and message in text and "reinstall scikit-learn" in text, text


def test_unknown_dataset():
  with pytest.raises(ConfigError, match="unknown dataset 'imagenet42'.*data.name"):
    data.spec("imagenet42")


def test_missing_data_offline_names_the_fix(tmp_path):
  with pytest.raises(data.DataUnavailableError, match="fashion_mnist.*dataset-fashion-mnist.*network"):
    data.load_split("fashion_mnist", "train", data_dir=str(tmp_path), manual_dir=str(tmp_path / "none"),
                    download=False)
  with pytest.raises(data.DataUnavailableError, match="cifar10 is not available offline"):
    data.load_split("cifar10", "train", data_dir=str(tmp_path), download=False)


def test_failed_download_is_reported(tmp_path, monkeypatch):
  def offline(self, *args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  monkeypatch.setattr(data, "_online", lambda: True)  # the network looks up, then the download fails
  with pytest.raises(data.DataUnavailableError, match="download failed: ConnectionError"):
    data.load_split("cifar10", "train", data_dir=str(tmp_path))


def test_offline_fails_fast_without_trying_to_download(tmp_path, monkeypatch):
  calls = []

  def recording(self, *args, **kwargs):
    calls.append(1)
  recording.__module__ = "tensorflow_datasets.core.dataset_builder"  # stands for TFDS's own download
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", recording)
  monkeypatch.setattr(data, "_online", lambda: False)
  with pytest.raises(data.DataUnavailableError, match="cifar10 is not available offline.*no network"):
    data.load_split("cifar10", "train", data_dir=str(tmp_path))
  assert not calls  # no TFDS download (and its minutes of retries) was started


def _truncate(path):
  raw = open(path, "rb").read()
  open(path, "wb").write(raw[:len(raw) // 2])


@pytest.mark.parametrize("damage,message", [
    (lambda p: open(p, "wb").write(b"garbage, not gzip"), "is damaged or unreadable (BadGzipFile"),
    (_truncate, "is damaged or unreadable (EOFError"),
    (lambda p: open(p, "wb").write(gzip.compress(b"\x00\x00\x08\x03short")), "not an unsigned-byte IDX file"),
    (lambda p: (os.remove(p), os.mkdir(p)), "is damaged or unreadable (IsADirectoryError"),
])
def test_damaged_data_files_are_one_line_naming_the_file(tiny_idx_dir, tmp_path, damage, message):
  folder, _ = tiny_idx_dir
  victim = os.path.join(folder, "t10k-images-idx3-ubyte.gz")
  damage(victim)
  with pytest.raises(data.DataUnavailableError, match=f"^{victim} .*{message.split('(')[0]}") as e:
    data.load_split("fashion_mnist", "test", data_dir=str(tmp_path / "tfds"), manual_dir=folder, download=False)
  assert message in str(e.value) and "\n" not in str(e.value) and "--config.data.manual_dir" in str(e.value)


def test_full_size_files_are_checked_against_the_original_before_parsing(tmp_path):
  """A file that announces the official 10,000 test labels must be the original one (sha256)."""
  folder = tmp_path / "idx"
  folder.mkdir()
  write_idx(str(folder / "t10k-labels-idx1-ubyte.gz"), np.zeros(10000, np.uint8))
  builder = data.FashionMnistIdx(data_dir=str(tmp_path / "tfds"))
  path = str(folder / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(data.DataUnavailableError, match="does not match the original file"):
    data.read_idx(path, builder.EXPECTED_SHA256["test_labels"])


@pytest.mark.parametrize("field", ["data_dir", "manual_dir"])
def test_a_data_folder_that_is_a_file(tmp_path, field):
  (tmp_path / "file").write_text("not a folder")
  kwargs = {"data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path / "none"), field: str(tmp_path / "file")}
  with pytest.raises(data.DataUnavailableError, match=f"data.{field}=.*file is a file, not a folder"):
    data.load_split("fashion_mnist", "train", download=False, **kwargs)


def test_batches_are_a_function_of_seed_and_step():
  n = 50
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
  labels = np.arange(n, dtype=np.int32)
  run = list(itertools.islice(data.train_batches(images, labels, batch_size=16, seed=7), 10))
  resumed = list(itertools.islice(data.train_batches(images, labels, batch_size=16, seed=7, start_step=6), 4))
  for a, b in zip(run[6:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])
  stream = np.concatenate([b["label"] for b in run])  # 160 examples: epochs 0, 1, 2 and part of 3
  for epoch in range(3):  # each epoch is a permutation of the split, and epochs differ
    assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
  assert not np.array_equal(stream[:n], stream[n:2 * n])
  other = next(data.train_batches(images, labels, batch_size=16, seed=8))
  assert not np.array_equal(other["label"], run[0]["label"])
  # GAN preprocessing: uint8 -> [-1, 1], matching the label it came with.
  np.testing.assert_allclose(run[0]["image"][:, 0, 0, 0], run[0]["label"] / 127.5 - 1.0, rtol=1e-6)


def test_eval_batches_pad_and_mask():
  images = np.zeros((10, 2, 2, 1), np.uint8)
  labels = np.arange(10, dtype=np.int32)
  batches = list(data.eval_batches(images, labels, batch_size=4))
  assert [len(b["label"]) for b in batches] == [4, 4, 4]
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], labels)
  assert mask.sum() == 10


def test_a_damaged_prepared_dataset_names_the_folder(tiny_idx_dir, tmp_path):
  folder, _ = tiny_idx_dir
  tfds_dir = str(tmp_path / "tfds")
  data.load_split("fashion_mnist", "test", data_dir=tfds_dir, manual_dir=folder, download=False)  # prepares it
  records = [os.path.join(root, f) for root, _, files in os.walk(tfds_dir) for f in files if "tfrecord" in f]
  assert records
  for path in records:
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:len(raw) // 2])
  with pytest.raises(data.DataUnavailableError, match="is damaged .*delete that folder"):
    data.load_split("fashion_mnist", "test", data_dir=tfds_dir, manual_dir=folder, download=False)
