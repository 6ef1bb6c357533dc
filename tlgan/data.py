"""Input pipelines: TFDS -> in-memory split shard -> tf.data batches whose content is a function of (seed, step).

Where data comes from, in order:
  1. a TFDS dataset already prepared in `data_dir` (TFDS's own `fashion_mnist`, `mnist`, `cifar10`);
  2. for MNIST-format datasets, the original IDX files in a local folder (Debian's `dataset-fashion-mnist`
     puts Fashion-MNIST in /usr/share/datasets/fashion-mnist), prepared through a TFDS manual-download
     builder that subclasses TFDS's own and checks the decompressed bytes;
  3. TFDS's normal download (online users).
If none works, `DataUnavailableError` says how to get the data.

Batches. A split is cut into `num_shards` equal shards (`tfds.split_for_jax_process(split, j, num_shards)`;
by default one per process) and each process loads only its own shards into memory. Shard `j` is an endless
stream: its example at position `p` is `index_shuffle(p mod n_j, seed=(seed, epoch, j))`, a stateless
permutation per epoch, and its part of batch `s` is positions `[s * b, (s + 1) * b)` with `b` = global batch
/ num_shards. The global batch of step `s` is the shards' parts in shard order, whichever process holds them:
so a run resumed at step `s` reads exactly the batches an uninterrupted run would (no state to save, nothing
to skip), and with a fixed `num_shards` the data order does not depend on the number of processes either.
Augmentations draw from stateless RNGs seeded by (seed, step, shard) for the same reason.
"""

from __future__ import annotations  # annotations name tf.Tensor without importing TensorFlow

import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import os
import socket
import zlib
from typing import Callable, Dict, Iterator, List, Optional, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow_datasets as tfds

from tlgan.errors import ConfigError, UserError, first_line
from tlgan.shuffle import process_shards  # noqa: F401 - which shards a process owns (no TensorFlow needed)

_TF_CONFIGURED = False


def _tf():
  """TensorFlow, imported when a tf.data pipeline is first built: reading an ArrayRecord dataset (the streaming
  path, `load_split` of such a copy) needs none, and runs where TensorFlow is not installed."""
  global _TF_CONFIGURED
  import tensorflow as tf
  if not _TF_CONFIGURED:
    tf.config.set_visible_devices([], "GPU")  # tf.data only: leave the accelerators to JAX.
    _TF_CONFIGURED = True
  return tf

Batch = Dict[str, np.ndarray]


class DataUnavailableError(UserError):
  """The dataset is neither prepared, nor in a local folder, nor downloadable."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_shape: Tuple[int, int, int]
  num_classes: int
  local_dir: Optional[str] = None  # default folder of the original IDX files
  apt_package: Optional[str] = None  # Debian package that installs them


DATASETS = {
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, "/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
    "mnist": DatasetSpec((28, 28, 1), 10),
    "cifar10": DatasetSpec((32, 32, 3), 10),
    "digits": DatasetSpec((8, 8, 1), 10),  # scikit-learn's 1,797 real handwritten digits; not a TFDS dataset
    "digits28": DatasetSpec((28, 28, 1), 10),  # the same digits resized to 28x28 (a small GAN target domain)
}


def spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ConfigError(f"unknown dataset {name!r}: set --config.data.name to one of {', '.join(sorted(DATASETS))}")
  return DATASETS[name]


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


# ---------------------------------------------------------------------------------------------------------
# Offline source: original IDX files through a TFDS manual-download builder.

_IDX_FILES = {
    "train_data": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_data": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# sha256 of the *decompressed* original files. Debian recompressed the .gz, so the archives' checksums (the
# ones TFDS records) differ while the content is the original.
_FASHION_MNIST_SHA256 = {
    "train_data": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_data": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_OFFICIAL_COUNTS = {"train": 60000, "test": 10000}


def _find_idx(folder: str, stem: str) -> Optional[str]:
  for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  return None


_REINSTALL = ("replace it with the original file (Debian: apt-get install --reinstall dataset-fashion-mnist), or "
              "point --config.data.manual_dir at a folder with intact IDX files")


def _read_bytes(path: str, fix: str = _REINSTALL) -> bytes:
  """The (decompressed) bytes of a data file; a damaged, truncated or unreadable file is one line naming it and
  `fix`."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError
    detail = first_line(e, 120) or "truncated"
    raise DataUnavailableError(f"{path} is damaged or unreadable ({type(e).__name__}: {detail}): {fix}") from None


def _parse_idx(raw: bytes, path: str) -> np.ndarray:
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or len(raw) < 4 + 4 * raw[3]:
    raise DataUnavailableError(f"{path} is not an unsigned-byte IDX file (bad magic number): {_REINSTALL}")
  ndim = raw[3]
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(dims)):
    raise DataUnavailableError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file holds "
                               f"{len(raw) - offset}: {_REINSTALL}")
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def read_idx(path: str, expected_sha256: Optional[str] = None) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into an array, validating its header against its size. With
  `expected_sha256` (of the decompressed content), the content is checked before it is parsed."""
  raw = _read_bytes(path)
  if expected_sha256 and hashlib.sha256(raw).hexdigest() != expected_sha256:
    raise DataUnavailableError(f"{path}: content does not match the original file (sha256): {_REINSTALL}")
  return _parse_idx(raw, path)


def _idx_count(path: str) -> int:
  """The number of items an IDX file's header announces (0 if it cannot be read: read_idx will say why)."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      head = f.read(8)
    return int.from_bytes(head[4:8], "big") if len(head) == 8 else 0
  except (OSError, EOFError, zlib.error):
    return 0


class _IdxBuilderMixin:
  """Turns TFDS's MNIST-family builder into one fed from local IDX files (the manual dir)."""
  EXPECTED_SHA256: Dict[str, str] = {}

  def _split_generators(self, dl_manager):
    folder = str(dl_manager.manual_dir)
    paths = {}
    for key, stem in _IDX_FILES.items():
      path = _find_idx(folder, stem)
      if path is None:
        raise DataUnavailableError(f"{stem}(.gz) not found in {folder}")
      paths[key] = path
    splits = []
    for split in ("train", "test"):
      arrays = {}
      for key in (f"{split}_data", f"{split}_labels"):
        # Full-size files must be the original ones: their content's sha256 is checked before it is parsed.
        official = _idx_count(paths[key]) == _OFFICIAL_COUNTS[split]
        arrays[key] = read_idx(paths[key], self.EXPECTED_SHA256.get(key) if official else None)
      images, labels = arrays[f"{split}_data"], arrays[f"{split}_labels"]
      if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DataUnavailableError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not pair up")
      if labels.max(initial=0) >= 10:
        raise DataUnavailableError(f"{folder}: {split} labels outside 0..9")
      splits.append(tfds.core.SplitGenerator(name=split, gen_kwargs=dict(images=images, labels=labels)))
    return splits

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image[..., None], "label": int(label)}


class FashionMnistIdx(_IdxBuilderMixin, tfds.image_classification.FashionMNIST):
  """TFDS's `fashion_mnist` (same features and label names) built from the original IDX files."""
  EXPECTED_SHA256 = _FASHION_MNIST_SHA256
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) in "
                                  "the manual dir; `apt-get install dataset-fashion-mnist` does it on Debian.")


class MnistIdx(_IdxBuilderMixin, tfds.image_classification.MNIST):
  """TFDS's `mnist` built from the original IDX files in a local folder."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in the manual dir."


_IDX_BUILDERS = {"fashion_mnist": FashionMnistIdx, "mnist": MnistIdx}


FILE_FORMATS = ("", "tfrecord", "array_record")


def get_builder(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                download: bool = True, file_format: str = "") -> tfds.core.DatasetBuilder:
  """A prepared TFDS builder for `name`, preparing it from a local folder or a download if needed, in
  `file_format` ('' TFDS's default, TFRecord; 'array_record' for random access: `tlgan.streaming`). A dataset
  already prepared in `data_dir` is used in the format it has."""
  if file_format not in FILE_FORMATS:
    raise ConfigError(f"data.file_format={file_format!r}: use '' (TFDS's default), 'tfrecord' or 'array_record'")
  formats = {"file_format": file_format} if file_format else {}
  ds_spec = spec(name)
  data_dir = data_dir or default_data_dir()
  for what, folder in (("data.data_dir", data_dir), ("data.manual_dir", manual_dir)):
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
      raise DataUnavailableError(f"{what}={folder} is a file, not a folder: point --config.{what} at a folder")
  builder = tfds.builder(name, data_dir=data_dir, **formats)
  if builder.is_prepared():
    return builder
  manual_dir = manual_dir or ds_spec.local_dir
  if name in _IDX_BUILDERS and manual_dir and os.path.isdir(manual_dir):
    idx_builder = _IDX_BUILDERS[name](data_dir=data_dir, **formats)
    if not idx_builder.is_prepared():
      logging.info("Preparing %s from the IDX files in %s", name, manual_dir)
      idx_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return idx_builder
  how = []
  if ds_spec.apt_package:
    how.append(f"install Debian's package {ds_spec.apt_package} (apt-get install {ds_spec.apt_package})")
  if name in _IDX_BUILDERS:
    how.append("point --config.data.manual_dir at a folder with its IDX files")
  how.append("connect to the network so TFDS can download it")
  message = f"dataset {name} is not available offline: " + ", or ".join(how)
  if not download:
    raise DataUnavailableError(message)
  # TFDS's own download (not one replaced by, e.g., tfds.testing.mock_data) needs the network
  downloads = getattr(type(builder).download_and_prepare, "__module__", "").startswith("tensorflow_datasets.core")
  if downloads and not _online():  # fail now, not after minutes of TFDS's retries
    raise DataUnavailableError(f"{message} (no network: a download is not possible here)")
  try:
    builder.download_and_prepare()
  except Exception as e:  # TFDS raises many kinds of network errors; all mean the same thing here.
    raise DataUnavailableError(f"{message} (download failed: {type(e).__name__})") from e
  return builder


def is_tfds(name: str) -> bool:
  return name not in ("digits", "digits28")


def is_array_record(builder) -> bool:
  return str(builder.info.file_format).lower().endswith("array_record")


def _online(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
  """Whether a TFDS download could start: a TCP connection to Google's storage (where TFDS mirrors most
  datasets) within `timeout` seconds."""
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def _digits_file() -> Optional[str]:
  """The digits table scikit-learn ships (found without importing scikit-learn), or None."""
  spec = importlib.util.find_spec("sklearn")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      return path
  return None


def _digits() -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as its `load_digits` returns them: (1797, 8, 8) float64 images 0..16, int labels.
  Read from the file scikit-learn ships, without importing scikit-learn (1.1 s of every run's start-up)."""
  path = _digits_file()
  if path is None:  # another layout of the package: its own loader
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target
  fix = "reinstall scikit-learn (pip install --force-reinstall scikit-learn)"
  raw = _read_bytes(path, fix)
  try:
    table = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", ndmin=2)
  except (ValueError, UnicodeDecodeError) as e:
    raise DataUnavailableError(f"{path} is not a table of numbers ({first_line(e, 120)}): {fix}") from None
  pixels, labels = table[:, :-1], table[:, -1]
  if table.shape != (1797, 65) or pixels.min() < 0 or pixels.max() > 16 or not np.isin(labels, range(10)).all():
    raise DataUnavailableError(f"{path} holds a {table.shape[0]} x {table.shape[1]} table, not scikit-learn's "
                               f"1797 digits (64 pixels 0..16 and a label 0..9 each): {fix}")
  return pixels.reshape(-1, 8, 8), labels.astype(int)


def load_digits_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's handwritten digits (UCI, 1,797 real 8x8 images, 0..16) as uint8 0..255, with a fixed
  stratified hold-out: 30% of each class (chosen by a seeded permutation) is 'test', the rest 'train'."""
  images, labels = _digits()
  images = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = labels.astype(np.int32)
  rng = np.random.default_rng(1797)
  test = np.zeros(len(labels), bool)
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    test[members[:int(round(0.3 * len(members)))]] = True
  if split not in ("train", "test"):
    raise ConfigError(f"digits has the splits 'train' and 'test', not {split!r}")
  keep = test if split == "test" else ~test
  return images[keep], labels[keep]


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
  """(N, h, w, 1) uint8 -> (N, size, size, 1), bicubic (smooth strokes rather than 8x8 blocks)."""
  from PIL import Image
  out = [np.asarray(Image.fromarray(x[..., 0]).resize((size, size), Image.BICUBIC)) for x in images]
  return np.stack(out)[..., None]


def subset_per_class(images: np.ndarray, labels: np.ndarray, per_class: int, seed: int):
  """`per_class` examples of each class, drawn by a seeded permutation (0 or less: everything)."""
  if per_class <= 0:
    return images, labels
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ConfigError(f"class {c} has {len(members)} examples, fewer than the {per_class} per class asked for")
    chosen.append(rng.permutation(members)[:per_class])
  idx = np.sort(np.concatenate(chosen))
  return images[idx], labels[idx]


def load_split(name: str, split: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
               download: bool = True, process_index: int = 0, process_count: int = 1,
               file_format: str = "") -> Tuple[np.ndarray, np.ndarray]:
  """This process's shard of a split, in memory: (uint8 images NHWC, int32 labels)."""
  if not is_tfds(name):
    images, labels = load_digits_split(split)
    if name == "digits28":
      images = resize_uint8(images, 28)
    return images[process_index::process_count], labels[process_index::process_count]
  builder = get_builder(name, data_dir, manual_dir, download, file_format)
  shard = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  if is_array_record(builder):  # no tf.data reader for ArrayRecord: the examples in order, by index
    from tlgan import streaming
    source = streaming.open_source(builder, shard)
    return streaming.read_examples(source, range(len(source)))
  tf = _tf()
  try:
    chunks = list(tfds.as_numpy(builder.as_dataset(split=shard, shuffle_files=False).batch(8192)))
  except (tf.errors.OpError, OSError) as e:  # a damaged or truncated prepared dataset (DataLossError, ...)
    raise DataUnavailableError(f"the prepared {name} in {builder.data_dir} is damaged ({type(e).__name__}): delete "
                               f"that folder and run again to prepare it anew") from None
  if not chunks:
    raise DataUnavailableError(f"{name}[{shard}] holds no images")
  images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8)
  labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32)
  if images.ndim != 4:
    raise DataUnavailableError(f"{name}[{shard}] holds images of shape {images.shape[1:]}, not (H, W, C)")
  return images, labels


# ---------------------------------------------------------------------------------------------------------
# Batches.

def to_gan_range(batch: Dict[str, tf.Tensor], step: tf.Tensor, stream: int = 0) -> Dict[str, tf.Tensor]:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  tf = _tf()
  del step, stream
  return {"image": tf.cast(batch["image"], tf.float32) / 127.5 - 1.0, "label": batch["label"]}


def stream_indices(step: tf.Tensor, batch_size: int, num_examples: int, seed: int, stream: int = 0) -> tf.Tensor:
  """Indices of batch `step` in the stream of per-epoch stateless permutations of shard `stream`."""
  tf = _tf()
  positions = tf.range(batch_size, dtype=tf.int64) + tf.cast(step, tf.int64) * batch_size
  epochs = positions // num_examples
  seeds = tf.stack([tf.fill(tf.shape(epochs), tf.constant(seed, tf.int64)), epochs,
                    tf.fill(tf.shape(epochs), tf.constant(stream, tf.int64))], 1)
  # The raw op: the public wrapper pads a batched seed wrongly (TF 2.21).
  return tf.raw_ops.RandomIndexShuffle(index=positions % num_examples, seed=seeds,
                                       max_index=tf.constant(num_examples - 1, tf.int64), rounds=4)


def train_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int, start_step: int = 0,
                  map_fn: Callable = to_gan_range, stream: int = 0) -> tf.data.Dataset:
  """Endless dataset of batches `start_step, start_step + 1, ...`; batch `s` depends only on (seed, stream, s).

  `map_fn(batch, step, stream)` preprocesses each batch (augmentation seeded by its arguments).
  """
  tf = _tf()
  n = len(images)
  if batch_size <= 0:
    raise ConfigError(f"batch size must be positive, got {batch_size}")
  images_t, labels_t = tf.constant(images), tf.constant(labels)

  def make_batch(step):
    idx = stream_indices(step, batch_size, n, seed, stream)
    return map_fn({"image": tf.gather(images_t, idx), "label": tf.gather(labels_t, idx)}, step, stream)

  ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def train_batches(images, labels, **kwargs) -> Iterator[Batch]:
  """`train_dataset` as an iterator of numpy batches."""
  return train_dataset(images, labels, **kwargs).as_numpy_iterator()


@dataclasses.dataclass
class Shard:
  index: int  # j of num_shards
  split: str  # the TFDS split it is, e.g. 'train[30000:60000]'
  images: np.ndarray
  labels: np.ndarray


def load_shards(name: str, split: str, *, num_shards: int = 0, process_index: int = 0, process_count: int = 1,
                **load) -> List[Shard]:
  """This process's shards of a split (`num_shards` 0: one per process), each in memory."""
  total = num_shards or process_count
  shards = []
  for j in process_shards(num_shards, process_index, process_count):
    images, labels = load_split(name, split, process_index=j, process_count=total, **load)
    spec = split if total == 1 else f"{split}, shard {j + 1} of {total}"
    shards.append(Shard(j, spec, images, labels))
  return shards


def sharded_train_batches(shards: List[Shard], *, batch_size: int, seed: int, start_step: int = 0,
                          map_fn: Callable = to_gan_range) -> Iterator[Batch]:
  """This process's part of each global batch (`batch_size` examples): its shards' parts, in shard order."""
  tf = _tf()
  if batch_size % len(shards):
    raise ConfigError(f"the per-process batch {batch_size} does not split over this process's {len(shards)} "
                      f"data shards: make batch_size a multiple of data.num_shards")
  per_shard = batch_size // len(shards)
  datasets = [train_dataset(s.images, s.labels, batch_size=per_shard, seed=seed, start_step=start_step,
                            map_fn=map_fn, stream=s.index) for s in shards]
  if len(datasets) == 1:
    return datasets[0].as_numpy_iterator()
  zipped = tf.data.Dataset.zip(tuple(datasets)).map(
      lambda *parts: {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]})
  return zipped.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def fingerprint(images: np.ndarray) -> str:
  """A short hash of a set of images (order-free): which examples a process read."""
  rows = np.sort(np.frombuffer(b"".join(hashlib.sha1(x.tobytes()).digest()[:8] for x in images), np.uint64))
  return hashlib.sha1(rows.tobytes()).hexdigest()[:16]


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, map_fn: Callable = to_gan_range,
                 num_batches: Optional[int] = None) -> Iterator[Batch]:
  """One pass in order, padded to `num_batches` batches (default: as few as hold the images); `mask` marks
  the real examples. Processes with shards of unequal size pass the same `num_batches`, so they run the same
  number of (collective) evaluation steps and padding is never counted."""
  tf = _tf()
  n = len(images)
  num_batches = -(-n // batch_size) if num_batches is None else num_batches
  pad = num_batches * batch_size - n
  if pad < 0:
    raise ValueError(f"{num_batches} batches of {batch_size} cannot hold {n} images")
  mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask}).batch(batch_size)
  ds = ds.map(lambda b: {**map_fn({"image": b["image"], "label": b["label"]}, 0), "mask": b["mask"]})
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
