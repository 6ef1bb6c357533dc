"""Neural style transfer with ResNet18 features (offline: scikit-image's photographs, tlgan's own features).

    python -m experiments.main --config=configs/style.py --workdir=runs/style
    python -m experiments.main --config=configs/style.py --workdir=runs/style \
        --config.content=my_photo.jpg --config.style=a_painting.png

Features: ImageNet ResNet18 from `weights` when that file exists (convert it first with
`python -m tlgan.pretrained --arch=resnet18 --output=weights/resnet18.msgpack`), with SWAG smoothing. Offline
(the fallback): tlgan's ResNet18 trained on Fashion-MNIST (the metric network tlgan ships for the GAN's FD)
applied to each colour channel, with plain Gram matrices. `features='imagenet'`
insists on the weights; `features='random'` is the ablation (random weights: coloured noise, not style).
Variants: configs/style.py:adam (Adam instead of L-BFGS), configs/style.py:smoke (tests).
"""

import ml_collections

from configs import variants


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "style"
  config.seed = 0
  config.content = "skimage:chelsea"  # a path, or skimage:NAME (photographs shipped with scikit-image)
  config.style = "skimage:immunohistochemistry"
  config.image_size = 256  # longer side, pixels
  config.features = "auto"  # 'auto': imagenet when `weights` exists, else 'fashion_mnist'; or 'random'
  config.weights = "weights/resnet18.msgpack"
  config.smoothing = "auto"  # 'swag' (Wang et al. 2021), 'none' (plain Gram); auto: swag for imagenet features
  config.compare_smoothing = True  # also run the other smoothing, shown side by side
  config.content_layers = ("layer2",)
  config.style_layers = ("stem", "layer1", "layer2")
  config.content_weight = 1.0
  config.style_weight = 1000.0
  config.tv_weight = 10.0
  config.init = "content"  # or 'noise'
  config.scales = 2  # coarse to fine: image_size/2, then image_size (num_steps at each)
  config.pyramid_levels = 6  # the image is a sum of upsampled images of halving sizes (1: plain pixels)
  config.optimizer = "lbfgs"  # or 'adam'
  config.learning_rate = 0.004  # Adam only; every pyramid level moves this much, so keep it small
  config.num_steps = 100
  config.log_every = 10

  return variants.apply(config, arg, VARIANTS, __file__)


def adam(config):
  """Adam instead of L-BFGS."""
  config.optimizer = "adam"
  config.num_steps = 400


def smoke(config):
  """Tiny and fast, random features (tests)."""
  config.features = "random"
  config.compare_smoothing = False  # SWAG has its own test; this keeps the CLI test short
  config.image_size = 64
  config.num_steps = 6
  config.log_every = 2


VARIANTS = {"adam": adam, "smoke": smoke}
