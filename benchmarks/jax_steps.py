"""tlgan's training steps as benchmark subjects: compiled ahead of time, with their XLA cost analysis."""

import os
import statistics
import time

import jax
import jax.numpy as jnp
from tlgan.models import initializers


class JaxStep:
  """A compiled tlgan step with its state and one fixed batch; `run()` times one call."""

  def __init__(self, name, step_fn, state, batch):
    self.name = name
    rng = jax.random.key(0)
    lowered = jax.jit(step_fn, donate_argnums=0).lower(state, batch, rng)
    t = time.perf_counter()
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get("flops", float("nan")))
    self.state, self.batch, self.rng = state, batch, rng
    for _ in range(2):  # warm-up: first calls allocate
      self.run()

  def run(self) -> float:
    t = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t


def load_note(before: float, after: float) -> str:
  """The 1-minute load average before and after, and whether the machine looked busy (another job's threads
  on the cores skew the ratios: contention hurts PyTorch's threads more than XLA's)."""
  cores = os.cpu_count() or 1
  busy = max(before, after) > 0.5 * cores + 1.0  # the benchmark itself raises it to ~cores
  return (f"load average (1 min) {before:.2f} before, {after:.2f} after on {cores} CPUs: "
          + ("BUSY: another job shared the machine, the ratios are not quiet-machine numbers" if busy else "quiet"))


def measure(jax_step, torch_step, rounds: int, per_round: int):
  """Alternates rounds; returns (all tlgan times, all torch times, per-round ratios torch/tlgan)."""
  jax_times, torch_times, ratios = [], [], []
  for _ in range(rounds):
    jt = [jax_step.run() for _ in range(per_round)]
    jax_times += jt
    if torch_step is not None:
      tt = [torch_step.run() for _ in range(per_round)]
      torch_times += tt
      ratios.append(statistics.median(tt) / statistics.median(jt))
  return jax_times, torch_times, ratios


def jax_dcgan(batch_size: int, conv_impl: str) -> JaxStep:
  from configs import gan as gan_config
  from tlgan.steps import gan as gan_step
  from tlgan.trainers.gan import build_state
  config = gan_config.get_config()
  config.model.conv_impl = conv_impl
  config.ema_decay = 0.0  # the reference has no EMA
  state = build_state(config, (28, 28, 1))
  images = initializers.uniform(jax.random.key(1), (batch_size, 28, 28, 1), jnp.float32, -1, 1)
  return JaxStep("DCGAN 28x28 (D + G update, Adam)", gan_step.train_step, state, {"image": images})


def jax_resnet18(batch_size: int, conv_impl: str) -> JaxStep:
  from configs import transfer
  from tlgan.steps import classifier as clf
  from tlgan.trainers.classifier import build_state
  config = transfer.get_config()
  config.init.weights = ""
  config.model.conv_impl = conv_impl
  config.optim.learning_rate = 0.1
  config.optim.warmup_epochs = 0.0
  state, _ = build_state(config, num_classes=10, total_steps=10**6, epoch_steps=1, log=False)
  batch = {"image": initializers.normal(jax.random.key(1), (batch_size, 32, 32, 3), jnp.float32),
           "label": jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)}
  return JaxStep("ResNet18 32x32 (SGD momentum, wd)", clf.train_step, state, batch)


def _gn_resnet18_state(conv_impl: str):
  from configs import transfer
  from tlgan.trainers.classifier import build_state
  config = transfer.get_config()
  config.init.weights = ""
  config.model.conv_impl = conv_impl
  config.model.norm = "group"  # torchvision's resnet18 with GroupNorm(32, c): what Opacus trains
  config.optim.learning_rate = 0.1
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  return build_state(config, num_classes=10, total_steps=10**6, epoch_steps=1, log=False)[0]


def _resnet_batch(batch_size: int):
  return {"image": initializers.normal(jax.random.key(1), (batch_size, 32, 32, 3), jnp.float32),
          "label": jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)}


def jax_gn_resnet18(batch_size: int, conv_impl: str) -> JaxStep:
  """The non-private step of the model DP-SGD trains (GroupNorm ResNet18, SGD momentum)."""
  from tlgan.steps import classifier as clf
  return JaxStep("GroupNorm ResNet18 32x32 (non-private SGD)", clf.train_step, _gn_resnet18_state(conv_impl),
                 _resnet_batch(batch_size))


def jax_dp_resnet18(batch_size: int, conv_impl: str, microbatch: int = 0, impl: str = "ghost") -> JaxStep:
  """DP-SGD on the GroupNorm ResNet18: per-example gradients clipped to 1, noise 1.0, every row real (the
  Poisson batch at its expected size), per-example gradient norms in micro-batches of `microbatch` (0: all),
  clipping computed by `impl` (`tlgan.steps.private.clipped_grad_sum`)."""
  import functools
  from tlgan.steps import private
  step = functools.partial(private.train_step, clip_norm=1.0, noise_multiplier=1.0, expected_batch=batch_size,
                           microbatch_size=microbatch or None, impl=impl)
  batch = {**_resnet_batch(batch_size), "mask": jnp.ones((batch_size,), bool)}
  return JaxStep(f"DP-SGD GroupNorm ResNet18 32x32 ({impl}, micro-batch {microbatch or batch_size})", step,
                 _gn_resnet18_state(conv_impl), batch)


def jax_projected_gan(batch_size: int, conv_impl: str) -> JaxStep:
  """The DCGAN step with the projected discriminator (heads on a frozen ResNet18 up to layer3; random trunk
  weights here: the time does not depend on them)."""
  import os
  import tempfile
  from configs import gan as gan_config
  from tlgan import pretrained
  from tlgan.steps import gan as gan_step
  from tlgan.trainers.gan import build_state
  trunk = pretrained.model_for("resnet18", 10)
  variables = trunk.init(jax.random.key(2), jnp.zeros((1, 32, 32, 3)), train=False)
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "trunk.msgpack")
    pretrained.save(path, variables, pretrained.WeightsMeta("resnet18", image_size=32))
    config = gan_config.get_config("projected")
    config.model.d_trunk_weights = path
    config.model.conv_impl = conv_impl
    config.ema_decay = 0.0
    config.eval.enabled = False
    state = build_state(config, (28, 28, 1))
  images = initializers.uniform(jax.random.key(1), (batch_size, 28, 28, 1), jnp.float32, -1, 1)
  return JaxStep("DCGAN G + projected D (frozen ResNet18 to layer3)", gan_step.train_step, state,
                 {"image": images})
