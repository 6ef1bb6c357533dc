"""The private transfer study: accuracy x epsilon, with and without public pretraining, in one command.

    python -m experiments.main --config=configs/private_study.py --workdir=runs/private_study

1. Public pretraining (configs/private.py:public_pretrain): a GroupNorm ResNet18 on Fashion-MNIST, not private.
2. scikit-learn's digits as the private set (configs/private.py:digits), DP-SGD at each epsilon of `epsilons`
   (0: the same recipe without noise, epsilon infinite) for each seed: from scratch, full fine-tuning of the
   public network, and a linear probe of it.
3. Fashion-MNIST as the private set, from scratch (configs/private.py), at each epsilon for `fashion_seeds`: the
   setting of Tramer & Boneh (2021); `fashion_recipes` adds rows: other configs of configs/private.py, by name
   (the `scatternet` variant below), each overridable (--config.fashion_recipes.scatternet.optim.learning_rate=16).
Every sub-run is an ordinary classifier run in its own sub-folder (the study resumes where it stopped);
`results.json` grows after each one, and `results.md` (and, with `update_readme`, the README between the
`private-table` markers) holds the tables: mean +- sample std over seeds, with each run's training time and the
device that produced it. Variants: `smoke` (tiny, for tests), `quick` (one seed, epsilon 3 and non-private),
`scatternet` (Fashion-MNIST only: ScatterNet + linear with and without private whitening, 3 seeds; ~60 min on a
2-core CPU).
"""

import ml_collections

from configs import private, variants


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "private_study"
  config.pretrain = private.get_config("public_pretrain")
  config.digits = private.get_config("digits")
  config.fashion = private.get_config()
  config.epsilons = (1.0, 3.0, 8.0, 0.0)  # 0: non-private (Poisson batches and clipping, no noise)
  config.seeds = (0, 1, 2)
  config.fashion_seeds = (0,)  # () leaves Fashion-MNIST out
  config.fashion_scratch = True  # `fashion` is a row of the Fashion-MNIST table
  config.fashion_recipes = ml_collections.ConfigDict()  # more rows: name -> a configs/private.py config
  config.probe_learning_rate = 2.0
  config.update_readme = False
  config.readme = "README.md"
  return variants.apply(config, arg, VARIANTS, __file__)


def smoke(config):
  """Tiny, for tests."""
  for sub in (config.pretrain, config.digits, config.fashion):
    private.smoke(sub)
    sub.data.manual_dir = "/nonexistent"
  config.pretrain.num_steps = 4
  config.digits.num_steps = 3
  config.fashion.num_steps = 3
  config.epsilons = (3.0, 0.0)
  config.seeds = (0,)
  config.fashion_seeds = (0,)


def quick(config):
  """One seed, epsilon 3 and non-private: a first look in a fraction of the time."""
  config.epsilons = (3.0, 0.0)
  config.seeds = (0,)


def scatternet(config):
  """Fashion-MNIST only: Tramer & Boneh's ScatterNet + linear, and the same with privately whitened features, at
  every epsilon for 3 seeds (the README's ScatterNet table)."""
  config.seeds = ()
  config.fashion_seeds = (0, 1, 2)
  config.fashion_scratch = False
  config.fashion_recipes.scatternet = private.get_config("scatternet")
  config.fashion_recipes.scatternet_whitened = private.get_config("scatternet,whitened")


VARIANTS = {"smoke": smoke, "quick": quick, "scatternet": scatternet}
