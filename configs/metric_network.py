"""The fixed metric networks tlgan ships (tlgan/metric_networks/): how each was trained.

    python -m experiments.metric_network --dataset=fashion_mnist
    python -m experiments.metric_network --dataset=digits28

Each is a narrow ResNet18 classifier (width 16: 0.7 M parameters, a 2.8 MB file) with the CIFAR stem (3x3 conv,
stride 1, no max-pool, so 28x28 images keep their detail through layer1), trained from scratch by tlgan's
classifier trainer on the dataset's training split. Its pooled 128-d features are the space of
FD[resnet18w16-<dataset>] and KID[...]. The command writes the weights file and prints its sha256, which is
pinned in `tlgan.feature_networks.SHIPPED`. A new dataset gets a variant here, a run of the command, and a pin.
`get_config(dataset)` returns a classifier config (configs/transfer.py's fields).
"""

from configs import transfer, variants

def get_config(arg=None):
  if len(variants.names(arg)) > 1:
    raise variants.VariantError(f"configs/metric_network.py takes one dataset, got {arg!r}")
  config = transfer.get_config("fashion_pretrain")
  config.model.width = 16
  config.model.stem = "cifar"
  config.model.image_size = 32
  config.seed = 0
  config.optim.learning_rate = 0.1
  config.log_every = 100
  config.checkpoint_every = 500
  return variants.apply(config, arg or "fashion_mnist", VARIANTS, __file__)


def fashion_mnist(config):
  """60,000 training images: 3 epochs."""
  config.data.name = "fashion_mnist"
  config.num_epochs = 3.0
  config.optim.warmup_epochs = 0.3
  config.eval_every_epochs = 1.0


def digits28(config):
  """1,258 training digits: more epochs, no flips (a flipped digit is another digit, or none)."""
  config.data.name = "digits28"
  config.batch_size = 64
  config.augment.flip = False
  config.num_epochs = 30.0
  config.optim.warmup_epochs = 3.0
  config.eval_every_epochs = 10.0


VARIANTS = {"fashion_mnist": fashion_mnist, "digits28": digits28}
DATASETS = tuple(VARIANTS)
