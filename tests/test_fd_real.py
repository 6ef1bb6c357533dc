"""FD in a domain ResNet18's space behaves on real Fashion-MNIST: small between train and test, and growing
monotonically with the strength of blur and of noise applied to the train images."""

import os

import numpy as np
import pytest
from scipy import ndimage

from tlgan import data, evaluation, feature_networks

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason="Debian's dataset-fashion-mnist missing")


@pytest.fixture(scope="module")
def domain_net(tmp_path_factory):
  """A small ResNet18 (width 16) trained briefly on real Fashion-MNIST by tlgan's classifier trainer."""
  from configs import transfer
  from tlgan.trainers import classifier
  config = transfer.get_config("fashion_pretrain")
  config.model.width = 16
  config.batch_size = 64
  config.num_steps = 150
  config.eval_every_epochs = 100.0
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.data.manual_dir = DEBIAN_DIR
  workdir = str(tmp_path_factory.mktemp("domain"))
  summary = classifier.train_and_evaluate(config, workdir)
  assert summary["test_accuracy"] > 0.6  # it learned something: its features mean something
  return feature_networks.domain_resnet(os.path.join(workdir, "model.msgpack"), "fashion_mnist"), config


def _fd(net, a, b):
  fa, _ = net(a.astype(np.float32) / 127.5 - 1.0)
  fb, _ = net(b.astype(np.float32) / 127.5 - 1.0)
  sa, sb = feature_networks.stats_of(fa), feature_networks.stats_of(fb)
  return evaluation.frechet_distance(sa.mean, sa.cov, sb.mean, sb.cov)


def test_fd_floor_and_monotonic_degradation(domain_net):
  net, config = domain_net
  assert net.name == "resnet18-fashion_mnist"
  kw = dict(data_dir=config.data.data_dir, manual_dir=DEBIAN_DIR, download=False)
  train, _ = data.load_split("fashion_mnist", "train", **kw)
  test, _ = data.load_split("fashion_mnist", "test", **kw)
  rng = np.random.default_rng(0)
  train = train[rng.choice(len(train), 3000, replace=False)]
  test = test[:3000]
  floor = _fd(net, train, test)
  blurred = [_fd(net, np.clip(ndimage.gaussian_filter(train.astype(np.float32), (0, s, s, 0)), 0, 255), test)
             for s in (0.5, 1.0, 1.5, 2.5)]
  noisy = [_fd(net, np.clip(train + rng.normal(0, s, train.shape), 0, 255), test) for s in (10, 25, 50, 100)]
  assert all(a < b for a, b in zip([floor] + blurred, blurred)), (floor, blurred)
  assert all(a < b for a, b in zip([floor] + noisy, noisy)), (floor, noisy)
  assert floor < 0.1 * blurred[-1] and floor < 0.1 * noisy[-1]
