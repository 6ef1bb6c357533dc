"""The streaming input path: batches read example by example from a TFDS dataset prepared as ArrayRecord
(random access through `builder.as_data_source`), assembled by Grain, in exactly the in-memory path's order.

Host memory does not grow with the dataset: a process holds its shards' open files and a few batches, never
the split. The order is `tlgan.data`'s: shard `j` of `num_shards` is `tfds.split_for_jax_process(split, j,
num_shards)`, and its part of batch `s` is the examples `tlgan.shuffle.stream_indices(s, b, n_j, seed, j)`
(a NumPy port of the TensorFlow op the in-memory path uses, equal bit for bit), so a streamed batch equals the
in-memory batch of the same step: resume stays exact, and the two paths can be swapped at any step.
(An ArrayRecord copy prepared by TFDS holds the examples in the order of a TFRecord copy of the same version,
so a run streams the same batches it read into memory before.)

Preprocessing, bit for bit the in-memory path's: the GAN's (uint8 -> [-1, 1] in float32, TensorFlow's
operations) and the classifier's with its (seed, step, shard) augmentations (`tlgan.host_preprocessing`).
"""

import dataclasses
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tlgan import shuffle
from tlgan.errors import ConfigError, first_line

PIPELINES = ("auto", "memory", "streaming")


def open_source(builder, split: str):
  """Random access to `split` of a builder prepared as ArrayRecord: len(source), source[i], source.__getitems__."""
  try:
    return builder.as_data_source(split=split)
  except Exception as e:  # ArrayRecord (Riegeli) reports a truncated or altered file as a RuntimeError
    raise _damaged(f"{builder.name} in {builder.data_dir}", e) from None


def _damaged(what: str, error: BaseException):
  from tlgan.data import DataUnavailableError
  return DataUnavailableError(f"the prepared {what} is damaged ({type(error).__name__}: {first_line(error, 120)}): "
                              "delete that folder and run again to prepare it anew")


def _records(source, indices) -> List[Dict[str, np.ndarray]]:
  indices = [int(i) for i in indices]
  try:
    if hasattr(source, "__getitems__"):
      return source.__getitems__(indices)
    return [source[i] for i in indices]
  except Exception as e:  # a file damaged after it was opened
    info = getattr(source, "dataset_info", None)
    raise _damaged(f"{info.name} in {info.data_dir}" if info is not None else "dataset", e) from None


def read_examples(source, indices) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images, int32 labels) of the examples at `indices`, read once."""
  records = _records(source, indices)
  return (np.stack([np.asarray(r["image"], np.uint8) for r in records]),
          np.asarray([r["label"] for r in records], np.int32))


class RecordImages:
  """The images of a random-access source as a read-only array: `len()`, `.shape`, and `[index array]` read
  only those examples (what the FD floor's subsample needs of a training split that is never loaded)."""

  def __init__(self, source, image_shape: Sequence[int]):
    self.source = source
    self.shape = (len(source), *image_shape)
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
    if index.ndim == 0:
      return read_examples(self.source, [index])[0][0]
    return read_examples(self.source, index)[0] if len(index) else np.zeros((0, *self.shape[1:]), np.uint8)


class ConcatenatedImages:
  """Several `RecordImages` (a process's shards) as one array, indexed like `np.concatenate` of them."""

  def __init__(self, parts: Sequence[RecordImages]):
    self.parts = list(parts)
    self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
    self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    index = np.asarray(index)
    part = np.searchsorted(self.offsets, index, side="right") - 1
    out = np.empty((len(index), *self.shape[1:]), np.uint8)
    for k in np.unique(part):
      rows = part == k
      out[rows] = self.parts[k][index[rows] - self.offsets[k]]
    return out


@dataclasses.dataclass
class StreamShard:
  index: int  # j of num_shards
  split: str  # the TFDS split it is, e.g. 'train[30000:60000]'
  source: object  # random access to its examples
  images: RecordImages


def load_shards(builder, split: str, image_shape, *, num_shards: int = 0, process_index: int = 0,
                process_count: int = 1) -> List[StreamShard]:
  """This process's shards of `split` (`num_shards` 0: one per process), opened for random access."""
  import tensorflow_datasets as tfds
  total = num_shards or process_count
  shards = []
  for j in shuffle.process_shards(num_shards, process_index, process_count):
    name = tfds.split_for_jax_process(split, process_index=j, process_count=total)
    source = open_source(builder, name)
    spec = split if total == 1 else f"{split}, shard {j + 1} of {total}"
    shards.append(StreamShard(j, spec, source, RecordImages(source, image_shape)))
  return shards


def to_gan_range(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]: TensorFlow's `cast / 127.5 - 1.0`, operation for operation."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def gan_preprocessing(batch: Dict[str, np.ndarray], step: int, stream: int = 0) -> Dict[str, np.ndarray]:
  """`tlgan.data.to_gan_range` on NumPy batches (the default `map_fn`)."""
  del step, stream
  return {"image": to_gan_range(batch["image"]), "label": batch["label"]}


def batch_at(shards: Sequence[StreamShard], step: int, batch_size: int, seed: int,
             map_fn: Callable = gan_preprocessing) -> Dict[str, np.ndarray]:
  """This process's part of global batch `step` (`batch_size` examples): each shard's part, preprocessed by
  `map_fn(part, step, shard index)` as the in-memory path does, in shard order."""
  per_shard = batch_size // len(shards)
  parts = []
  for shard in shards:
    idx = shuffle.stream_indices(step, per_shard, len(shard.images), seed, shard.index)
    images, labels = read_examples(shard.source, idx)
    parts.append(map_fn({"image": images, "label": labels}, step, shard.index))
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, map_fn: Callable = gan_preprocessing,
                 num_batches: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """`tlgan.data.eval_batches` without TensorFlow: one pass in order, padded to `num_batches` batches, `mask`
  marking the real examples (the same batches, bit for bit)."""
  n = len(images)
  num_batches = -(-n // batch_size) if num_batches is None else num_batches
  if num_batches * batch_size < n:
    raise ValueError(f"{num_batches} batches of {batch_size} cannot hold {n} images")
  for b in range(num_batches):
    rows = slice(b * batch_size, (b + 1) * batch_size)
    x, y = np.asarray(images[rows]), np.asarray(labels[rows])
    pad = batch_size - len(x)
    mask = np.concatenate([np.ones(len(x), bool), np.zeros(pad, bool)])
    x = np.concatenate([x, np.zeros((pad, *images.shape[1:]), images.dtype)])
    y = np.concatenate([y, np.zeros(pad, labels.dtype)])
    yield {**map_fn({"image": x, "label": y}, 0), "mask": mask}


def train_batches(shards: Sequence[StreamShard], *, batch_size: int, seed: int, start_step: int = 0,
                  map_fn: Callable = gan_preprocessing, workers: int = 0, threads: int = 4,
                  prefetch: int = 8) -> Iterator[Dict[str, np.ndarray]]:
  """Endless batches `start_step, start_step + 1, ...` through Grain: a MapDataset over step numbers whose
  elements are `batch_at(step)`, read ahead by `threads` threads, or by `workers` processes when > 0
  (`map_fn` must then be picklable: a module-level function or a `ClassifierPreprocessing`)."""
  import grain
  cores = os.cpu_count() or 1
  if workers > 4 * cores:
    raise ConfigError(f"data.workers={workers} processes on {cores} CPU cores: use at most {4 * cores} (or 0: threads)")
  if batch_size % len(shards):
    raise ConfigError(f"the per-process batch {batch_size} does not split over this process's {len(shards)} "
                      f"data shards: make batch_size a multiple of data.num_shards")
  steps = grain.MapDataset.range(start_step, np.iinfo(np.int64).max // 2)
  batches = steps.map(_BatchAt(list(shards), batch_size, seed, map_fn))
  batches = batches.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=prefetch))
  if workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags; research code may parse none
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                                  worker_init_fn=_leave_stop_signals_to_the_parent)
  return iter(batches)


def _leave_stop_signals_to_the_parent(worker_index: int, worker_count: int) -> None:
  """In each Grain worker: ignore the stop signals. Ctrl-C (and a scheduler's SIGTERM to the job) reaches the
  whole process group; a worker that died of it would end the run with a traceback at the next batch instead of
  the parent's clean stop (`tlgan.stopping`), which ends the workers itself."""
  del worker_index, worker_count
  import signal
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)


class _BatchAt:
  """`batch_at` as a picklable callable (Grain sends it to its worker processes)."""

  def __init__(self, shards, batch_size, seed, map_fn):
    self.shards, self.batch_size, self.seed, self.map_fn = shards, batch_size, seed, map_fn

  def __call__(self, step):
    return batch_at(self.shards, int(step), self.batch_size, self.seed, self.map_fn)


def choose(pipeline: str, builder, memory_fraction: float = 0.25) -> str:
  """'memory' or 'streaming' for `data.pipeline` (auto: streaming when the dataset is prepared as ArrayRecord
  and takes more than `memory_fraction` of the host's memory)."""
  from tlgan import data
  if pipeline not in PIPELINES:
    raise ConfigError(f"data.pipeline={pipeline!r}: use one of {', '.join(PIPELINES)}")
  if pipeline == "streaming" and not data.is_array_record(builder):
    raise ConfigError(f"data.pipeline=streaming needs the dataset prepared as ArrayRecord, and {builder.name} in "
                      f"{builder.data_dir} is {builder.info.file_format.value}: prepare a copy with "
                      "--config.data.file_format=array_record --config.data.data_dir=ANOTHER_FOLDER")
  if pipeline != "auto":
    return pipeline
  if not data.is_array_record(builder):
    return "memory"
  try:
    host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return "streaming"
  size = int(builder.info.dataset_size or 0)
  choice = "streaming" if size > memory_fraction * host_memory else "memory"
  logging.info("data.pipeline=auto: %s (%.2f GB prepared, %.1f GB of host memory)", choice, size / 1e9,
               host_memory / 1e9)
  return choice
