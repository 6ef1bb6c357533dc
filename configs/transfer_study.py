"""The offline transfer study: ResNet18 pretrained on Fashion-MNIST, fine-tuned on scikit-learn's digits.

    python -m experiments.main --config=configs/transfer_study.py --workdir=runs/transfer_study

Runs the pretraining (configs/transfer.py:fashion_pretrain), then for 10, 50 and all labels per class and
3 seeds: full fine-tuning, a linear probe, and the same network from scratch, each for the same number of
steps; writes results.md (and the README's table). Variants: `smoke` (tiny, for tests), `quick` (one seed,
all labels).
"""

import ml_collections

from configs import transfer, variants


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "transfer_study"
  config.pretrain = transfer.get_config("fashion_pretrain")
  config.pretrain.num_epochs = 10.0
  config.finetune = transfer.get_config("digits")
  config.finetune.num_steps = 300  # the same budget for every label count and arm
  config.finetune.eval_every_epochs = 1000.0  # evaluate at the end only
  config.finetune.checkpoint_every = 300
  config.finetune.log_every = 50
  config.probe_learning_rate = 0.1
  config.per_class = (10, 50, 0)  # 0: the whole training split
  config.seeds = (0, 1, 2)
  config.update_readme = False
  config.readme = "README.md"
  return variants.apply(config, arg, VARIANTS, __file__)


def smoke(config):
  """Tiny, for tests."""
  for sub in (config.pretrain, config.finetune):
    sub.model.width = 8
    sub.batch_size = 8
    sub.eval_batch_size = 16
    sub.data.manual_dir = "/nonexistent"
  config.pretrain.num_epochs = 1.0
  config.finetune.num_steps = 3
  config.finetune.checkpoint_every = 3
  config.per_class = (1,)
  config.seeds = (0,)


def quick(config):
  """One seed and the full label count only: a first look in a fraction of the time."""
  config.per_class = (0,)
  config.seeds = (0,)


VARIANTS = {"smoke": smoke, "quick": quick}
