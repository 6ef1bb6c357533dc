"""A synthetic TFDS dataset for the streaming benchmark (its own module: TFDS looks its builders' metadata up
by package, which a script run as __main__ does not have), and the reader `benchmarks.pipeline` times:

    python -m benchmarks.synthetic_data DATA_DIR WORKERS NUM_BATCHES BATCH_SIZE   # prints JSON
"""

import json
import sys
import time

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SHAPE = (32, 32, 3)


def builder(data_dir: str, num_examples: int = 0):
  """A TFDS builder of `num_examples` distinct 32x32x3 uint8 noise images with labels, stored raw (no PNG: the
  benchmark measures reading, not decoding), prepared as ArrayRecord."""

  class SyntheticImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(num_examples)}

    def _generate_examples(self, n):
      pool = np.random.default_rng(0).integers(0, 256, (4096, *IMAGE_SHAPE), dtype=np.uint8)
      for i in range(n):  # distinct images: a pool image with its first bytes set to the index
        image = pool[i % len(pool)].copy()
        image.reshape(-1)[:8] = np.frombuffer(int(i).to_bytes(8, "little"), np.uint8)
        yield i, {"image": image, "label": i % 10}

  return SyntheticImages(data_dir=data_dir, file_format="array_record")


def measure(data_dir: str, workers: int, num_batches: int, batch_size: int) -> dict:
  """Streams the prepared dataset in `data_dir` through `tlgan.streaming`: images/s after a warm-up."""
  from tlgan import streaming
  shards = streaming.load_shards(builder(data_dir), "train", IMAGE_SHAPE)
  it = streaming.train_batches(shards, batch_size=batch_size, seed=0, workers=workers)
  for _ in range(20):  # start the workers, fill the buffers
    next(it)
  t = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
  seconds = time.perf_counter() - t
  assert batch["image"].shape == (batch_size, *IMAGE_SHAPE)
  return {"images_per_s": num_batches * batch_size / seconds, "examples": len(shards[0].images),
          "tensorflow_imported": "tensorflow" in sys.modules}


if __name__ == "__main__":
  from benchmarks import synthetic_data  # the builder's class must live in a package's module, not __main__
  folder, workers, batches, size = sys.argv[1], *map(int, sys.argv[2:5])
  print(json.dumps(synthetic_data.measure(folder, workers, batches, size)))
