"""DCGAN on Fashion-MNIST (real data, offline through Debian's dataset-fashion-mnist), the default job.

    python -m experiments.main --config=configs/gan.py --workdir=runs/gan

Variants, comma-separated after a colon (later ones win where they overlap):
    configs/gan.py:mnist      MNIST (TFDS download, or --config.data.manual_dir with its IDX files); FID as for cifar10
    configs/gan.py:cifar10    CIFAR-10, 32x32x3 (TFDS download); FID in pytorch-fid's Inception-v3, converted first:
                              python -m tlgan.pretrained --arch=inception_v3_fid --output=weights/pt_inception.msgpack
    configs/gan.py:cifar10,fid50k  the literature's protocol: 50,000 samples against the 50,000 training images
    configs/gan.py:digits     scikit-learn's digits at 28x28 (offline, 1,258 images: a small target domain)
    configs/gan.py:projected  D = heads on a frozen ResNet18 trained on Fashion-MNIST (Projected-GAN-like);
                              first: python -m experiments.main --config=configs/transfer.py:fashion_pretrain
                              --workdir=runs/fashion_resnet18
    configs/gan.py:private    D trained with DP-SGD (epsilon 10): a private GAN (README: "Differential privacy")
    configs/gan.py:smoke      a tiny model for a few steps (tests, CI)
FreezeD from the default run: configs/gan.py:digits --config.transfer.init_workdir=runs/gan
    --config.transfer.freeze_d_layers=1
Any field can be overridden: --config.num_steps=500 --config.batch_size=128 --config.loss=hinge
"""

import ml_collections

from configs import privacy, variants


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "gan"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  config.data.split = "train"
  config.data.data_dir = ""  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.data.manual_dir = ""  # '' = the dataset's default local folder (e.g. Debian's)
  config.data.download = True  # let TFDS download when the data is not local
  config.data.num_shards = 0  # 0: one per process; fixed (e.g. 8): the same data order on any process count
  # memory: each process's shards loaded into host memory; streaming: read example by example from an
  # ArrayRecord copy (tlgan.streaming), same batches; auto: streaming for ArrayRecord data over 1/4 of host memory
  config.data.pipeline = "auto"
  config.data.file_format = ""  # how tlgan prepares a dataset: '' (TFDS's default, TFRecord) or 'array_record'
  config.data.workers = 0  # streaming: 0 reads with threads in this process; N > 0 with N worker processes

  config.model = ml_collections.ConfigDict()
  config.model.latent_dim = 100
  config.model.g_features = 64  # G: z -> 256@7x7 -> 128@14x14 -> 1@28x28
  config.model.d_features = 64  # D mirrors G (with discriminator='projected': each head's width)
  config.model.discriminator = "dcgan"  # or 'projected': trainable heads on a frozen pretrained ResNet18
  config.model.d_trunk_weights = "runs/fashion_resnet18/model.msgpack"  # 'projected' only: a classifier run's
  config.model.d_trunk_stages = ("layer1", "layer2", "layer3")  # 'projected' only: the stages with heads
  config.model.d_trunk_size = 0  # 'projected' only: images are resized to this for the trunk (0: the size
  # it was trained at, from its weights file, e.g. 32; ImageNet weights: e.g. 64 or more)
  config.model.d_norm = "batch"  # D's normalisation: 'batch' (DCGAN's) or 'group' (per example: a private D)
  config.model.conv_impl = "auto"  # 'auto': GEMM formulations on CPU, XLA's convolutions elsewhere
  config.model.dtype = "float32"

  config.loss = "nonsaturating"  # or 'hinge'

  config.dp = privacy.dp_section()  # a private D (variant 'private'): off here
  config.dp.clip_fake = False  # private D: clip the (public) fake term's per-example gradients to dp.clip_norm too

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "jit"  # or 'pmap' (explicit per-device collectives); both follow one trajectory
  config.batch_size = 64  # GLOBAL batch size, split over processes and devices
  config.num_steps = 3000
  config.g_lr = 2e-4
  config.d_lr = 2e-4
  config.d_steps = 1  # D steps per G step (private D only): num_steps counts D steps
  config.b1 = 0.5
  config.b2 = 0.999
  config.ema_decay = 0.999  # EMA of G's weights for samples and evaluation; 0 disables

  # Sample quality: FD, KID, precision/recall, density/coverage in the space of the metric network tlgan ships
  # for the dataset (FD[resnet18w16-fashion_mnist], pinned by sha256: the same number on any machine), of uint8
  # samples against the real reference split. The best checkpoint by FD is kept besides the last ones.
  config.eval = ml_collections.ConfigDict()
  config.eval.enabled = True
  config.eval.every = 800  # steps
  config.eval.num_samples = 2000  # during training
  config.eval.final_num_samples = 10000  # at the end, into summary.json
  config.eval.split = "test"  # the real reference
  config.eval.kid_subsets = 100
  config.eval.kid_subset_size = 1000
  config.eval.prdc_k = 3  # k of precision/recall/density/coverage (0: off)
  config.eval.prdc_num = 10000  # at most this many samples (and reference images) for them
  config.eval.domain_network = True  # the dataset's metric network (shipped, or feature_weights)
  config.eval.feature_weights = ""  # '' = the shipped metric network; else a tlgan ResNet weights file
  config.eval.inception_weights = ""  # converted pytorch-fid weights: adds FD[inception_v3_fid] (slow on CPU)
  config.eval.cache_dir = "~/.cache/tlgan"  # cached reference features

  # GAN transfer: start from another run's G and D (e.g. Fashion-MNIST -> digits28) and optionally freeze D's
  # lowest blocks (FreezeD, Mo et al. 2020).
  config.transfer = ml_collections.ConfigDict()
  config.transfer.init_workdir = ""  # a GAN workdir whose latest checkpoint initialises G and D
  config.transfer.freeze_d_layers = 0  # D blocks (from the image side) whose parameters stay fixed

  config.log_every = 50
  config.sample_every = 400
  config.checkpoint_every = 400
  config.keep_checkpoints = 3
  config.num_sample_images = 64  # fixed-noise grid, 8x8
  config.inject_nan_at_step = 0  # test hook: > 0 poisons that step's batch with NaN (the run must stop)

  return variants.apply(config, arg, VARIANTS, __file__)


def mnist(config):
  """MNIST; no shipped metric network: FID in pytorch-fid's Inception-v3 (as for cifar10)."""
  config.data.name = "mnist"
  config.data.manual_dir = ""
  config.eval.domain_network = False
  config.eval.inception_weights = "weights/pt_inception.msgpack"


def cifar10(config):
  """CIFAR-10 at 32x32x3; no shipped metric network: FID in pytorch-fid's Inception-v3."""
  config.data.name = "cifar10"
  config.num_steps = 5000
  config.batch_size = 128
  config.eval.domain_network = False
  config.eval.inception_weights = "weights/pt_inception.msgpack"


def fid50k(config):
  """The CIFAR-10 literature's FID: 50k samples vs the whole training split."""
  config.eval.split = "train"
  config.eval.final_num_samples = 50000  # (precision/recall: on 10,000 of them, eval.prdc_num)


def digits(config):
  """A limited-data target: scikit-learn's 1,258 training digits at 28x28."""
  config.data.name = "digits28"
  config.num_steps = 1000
  config.sample_every = 200
  config.checkpoint_every = 200
  config.eval.every = 500
  config.eval.num_samples = 1000
  config.eval.final_num_samples = 2000
  config.eval.kid_subset_size = 200  # the reference is the 539 test digits


def projected(config):
  """D = trainable heads on a frozen ResNet18 classifier (model.d_trunk_weights)."""
  config.model.discriminator = "projected"


def private(config):
  """D trained with DP-SGD on the private images (G through D only): epsilon 10 at delta 1e-5 on Fashion-MNIST."""
  config.dp.enabled = True
  config.dp.target_epsilon = 10.0
  config.dp.clip_norm = 1.0
  config.model.d_norm = "group"
  config.batch_size = 256  # expected size of the Poisson batches of real images
  config.d_lr = 4e-4


def smoke(config):
  """A tiny model for a few steps (tests, CI)."""
  config.model.latent_dim = 16
  config.model.g_features = 8
  config.model.d_features = 8
  config.batch_size = 8
  config.num_steps = 4
  config.log_every = 2
  config.sample_every = 2
  config.checkpoint_every = 2
  config.num_sample_images = 16
  config.ema_decay = 0.9
  config.eval.every = 2
  config.eval.num_samples = 24
  config.eval.final_num_samples = 32
  config.eval.kid_subsets = 3
  config.eval.kid_subset_size = 8


VARIANTS = {"mnist": mnist, "cifar10": cifar10, "fid50k": fid50k, "digits": digits, "projected": projected,
            "private": private, "smoke": smoke}
