"""Which metric network? FD's stability across sample sets and its separation of degraded real images.

    python -m benchmarks.metric_networks --weights=A.msgpack,B.msgpack [--dataset=fashion_mnist] [--num=10000]

For each tlgan ResNet weights file, on real data of the dataset (no GAN involved), one table row:
  floor     FD of disjoint sets of `num` training images against the test split (mean ± std over the sets):
            what a perfect generator scores, and how much two sample sets of one distribution disagree;
  blur/noise  FD of the first training set Gaussian-blurred (sigma 1 px) / with Gaussian noise (sigma 25/255);
  separation  (FD_blur - floor) / std(floor) and the same for noise: how many sample-set spreads a visible
            degradation is away from perfect (larger is better);
  time      seconds to featurise `num` images; the file's size and parameter count.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
import jax
import numpy as np
from scipy import ndimage

from tlgan import data, evaluation, feature_networks, pretrained

flags.DEFINE_list("weights", [], "tlgan ResNet weights files (default: the shipped network).")
flags.DEFINE_string("dataset", "fashion_mnist", "A dataset with offline data.")
flags.DEFINE_integer("num", 10000, "Images per set.", lower_bound=1)
flags.DEFINE_integer("sets", 3, "Disjoint training sets for the floor.", lower_bound=1)
FLAGS = flags.FLAGS


def _fd(features, ref_stats):
  s = feature_networks.stats_of(features)
  return evaluation.frechet_distance(s.mean, s.cov, ref_stats.mean, ref_stats.cov)


def main(argv):
  del argv
  train, _ = data.load_split(FLAGS.dataset, "train")
  test, _ = data.load_split(FLAGS.dataset, "test")
  rng = np.random.default_rng(0)
  order = rng.permutation(len(train))
  num = min(FLAGS.num, len(train) // FLAGS.sets)
  sets = [train[order[i * num:(i + 1) * num]] for i in range(FLAGS.sets)]
  blurred = np.clip(np.rint(ndimage.gaussian_filter(sets[0].astype(np.float32), (0, 1.0, 1.0, 0))), 0, 255)
  noisy = np.clip(np.rint(sets[0] + rng.normal(0, 25, sets[0].shape)), 0, 255)
  print(f"{FLAGS.dataset}: {FLAGS.sets} disjoint training sets of {num} vs the {len(test)} test images; "
        f"{jax.devices()[0].device_kind}")
  header = ("network", "params", "MB", "floor", "blur", "noise", "blur sep", "noise sep", f"s/{num}")
  print(" | ".join(header))
  for path in FLAGS.weights or [feature_networks.shipped_weights(FLAGS.dataset)]:
    net = feature_networks.domain_resnet(path, FLAGS.dataset)
    variables, _ = pretrained.load(path)
    params = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
    ref = feature_networks.stats_of(net(test)[0])
    t = time.perf_counter()
    floors = [_fd(net(s)[0], ref) for s in sets]
    seconds = (time.perf_counter() - t) / len(sets)
    blur = _fd(net(blurred.astype(np.uint8))[0], ref)
    noise = _fd(net(noisy.astype(np.uint8))[0], ref)
    mean, std = float(np.mean(floors)), float(np.std(floors))
    print(" | ".join([net.name, f"{params / 1e6:.2f}M", f"{os.path.getsize(path) / 2**20:.1f}",
                      f"{mean:.4g} ± {std:.2g}", f"{blur:.4g}", f"{noise:.4g}",
                      f"{(blur - mean) / std:.0f}", f"{(noise - mean) / std:.0f}", f"{seconds:.1f}"]))


if __name__ == "__main__":
  app.run(main)
