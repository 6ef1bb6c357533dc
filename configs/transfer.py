"""ResNet18 classifiers: fine-tuning pretrained weights, linear probes, and training from scratch.

Default: CIFAR-10 (TFDS download) from torchvision's ImageNet weights, converted first:
    python -m tlgan.pretrained --arch=resnet18 --output=weights/resnet18.msgpack
    python -m experiments.main --config=configs/transfer.py --workdir=runs/cifar10_ft

Variants (comma-separated after a colon):
    fashion_pretrain  ResNet18 from scratch on Fashion-MNIST (real data, offline); exports model.msgpack
    digits            scikit-learn's handwritten digits (offline), from --config.init.weights (or scratch)
    linear_probe      train only the head; the backbone and its BatchNorm stay frozen
    smoke             a tiny run for tests
Discriminative learning rates: --config.optim.backbone_lr_factor=0.1 (backbone lr = head lr x 0.1).
"""

import ml_collections

from configs import privacy, variants


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "classifier"
  config.seed = 0
  config.mode = "full"  # or 'linear_probe'

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.per_class = 0  # > 0: that many labelled training examples per class
  config.data.subset_seed = -1  # which examples per_class picks; -1: config.seed
  config.data.source_size = 0  # > 0: reduce images to this size first (e.g. 8: the look of 8x8 digits)
  config.data.data_dir = ""
  config.data.manual_dir = ""
  config.data.download = True
  config.data.num_shards = 0  # 0: one per process; fixed (e.g. 8): the same data order on any process count
  config.data.pipeline = "auto"  # memory | streaming (from an ArrayRecord copy, same batches) | auto
  config.data.file_format = ""  # how tlgan prepares a dataset: '' (TFDS's default, TFRecord) or 'array_record'
  config.data.workers = 0  # streaming: 0 reads with threads in this process; N > 0 with N worker processes

  config.model = ml_collections.ConfigDict()
  config.model.arch = "resnet18"
  config.model.stem = "imagenet"  # 'cifar' (3x3/1, no max-pool) cannot load an ImageNet stem
  config.model.width = 64  # channels of the first stage (64 = torchvision); smaller only for tests
  config.model.num_classes = 0  # 0: the dataset's
  config.model.image_size = 32  # inputs are resized to this
  config.model.channels = 3  # grayscale datasets are repeated to 3 channels
  config.model.dtype = "float32"
  config.model.conv_impl = "auto"
  config.model.zero_init_residual = False
  config.model.norm = "batch"  # 'group' (GroupNorm) or 'frozen_batch' (BatchNorm in inference mode): DP-safe
  config.model.norm_groups = 32  # GroupNorm groups per layer (fewer in layers with fewer channels)
  # ScatterNet models in DP runs: 'channels' whitens the features' channels with W computed from a noisy release of
  # the training set's channel second moment (noise multiplier precondition_noise; 0: exact, only without noise)
  config.model.precondition = "none"
  config.model.precondition_noise = 20.0

  config.init = ml_collections.ConfigDict()
  config.init.weights = "weights/resnet18.msgpack"  # tlgan weights file; '' = random init
  config.init.not_loaded = ("fc",)  # modules that keep their fresh initialisation

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"  # 'sgd' (momentum), 'adam', 'adamw'
  config.optim.learning_rate = 0.05
  config.optim.backbone_lr_factor = 1.0
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.warmup_epochs = 0.5
  config.optim.label_smoothing = 0.0
  config.optim.ema_decay = 0.0  # > 0: evaluate and export an EMA of the parameters (e.g. 0.999)

  config.augment = ml_collections.ConfigDict()
  config.augment.crop_padding = 4
  config.augment.flip = True

  config.dp = privacy.dp_section()  # DP-SGD (configs/private.py): off here

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "jit"  # or 'pmap' (explicit per-device collectives); both follow one trajectory
  config.batch_size = 128  # global
  config.grad_accum_steps = 1  # > 1: that many micro-batches per update (a big batch on small devices)
  config.eval_batch_size = 500
  config.num_epochs = 5.0
  config.num_steps = 0  # > 0: train this many steps, whatever the epochs
  config.eval_every_epochs = 1.0
  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 2
  config.inject_nan_at_step = 0  # test hook: > 0 poisons that step's batch with NaN (the run must stop)

  return variants.apply(config, arg, VARIANTS, __file__)


def fashion_pretrain(config):
  """ResNet18 from scratch on Fashion-MNIST (real data, offline); exports model.msgpack."""
  config.data.name = "fashion_mnist"
  config.init.weights = ""
  config.optim.learning_rate = 0.1
  config.num_epochs = 5.0
  config.augment.crop_padding = 2


def digits(config):
  """scikit-learn's handwritten digits (offline), from --config.init.weights (or scratch)."""
  config.data.name = "digits"
  config.init.weights = ""
  config.augment.crop_padding = 2
  config.augment.flip = False  # a flipped digit is another digit, or none
  config.batch_size = 64
  config.optim.learning_rate = 0.02
  config.num_epochs = 30.0
  config.eval_every_epochs = 10.0
  config.log_every = 20


def linear_probe(config):
  """Train only the head; the backbone and its BatchNorm stay frozen."""
  config.mode = "linear_probe"
  config.optim.weight_decay = 0.0


def smoke(config):
  """A tiny run for tests."""
  config.data.name = "fashion_mnist"
  config.init.weights = ""
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_epochs = 1.0
  config.log_every = 2
  config.checkpoint_every = 4
  config.model.image_size = 32
  config.model.width = 8


VARIANTS = {"fashion_pretrain": fashion_pretrain, "digits": digits, "linear_probe": linear_probe, "smoke": smoke}
