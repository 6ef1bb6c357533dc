"""The PyTorch references tlgan is measured against (needs the [torch] extra; import before TensorFlow).

* `TorchDCGAN`: pytorch/examples' DCGAN training iteration, adapted to 28x28: G: z=100 -> 256@7x7 ->
  128@14x14 -> 1@28x28, D mirrored, BCE-with-logits, Adam 2e-4 / (0.5, 0.999), N(0, 0.02) init; the same
  model as tlgan's DCGAN (with its three biases), tested step for step.
* `train_for`: the training loop of `benchmarks.torch_dcgan` (shuffled batches, for a number of steps or a
  wall-clock budget).
* `TorchResNet18`: torchvision's resnet18 (10 classes), SGD momentum 0.9, weight decay 5e-4, NCHW float32.
* `TorchOpacusResNet18`: Opacus's DP-SGD on torchvision's resnet18 with GroupNorm (CPU only here).

Both run on `device` ('cpu', 'cuda'); `dtype=torch.bfloat16` runs the forward and backward passes under
autocast (parameters and optimiser stay float32, PyTorch's mixed-precision recipe, as tlgan's `model.dtype`).
"""

import contextlib
import time
import types
from typing import Optional

from absl import logging
import numpy as np
import torch
import torchvision
from torch import nn


def perturbed(model, seed: int = 0):
  """`model` with BatchNorm statistics and affine parameters that are not the identity (a fresh torchvision
  model's are, which would hide a BatchNorm bug from an equivalence check)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.normal_(1, 0.2)
        m.bias.normal_(0, 0.2)
  return model


def _dcgan_init(module):
  # pytorch/examples' weights_init
  if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
    nn.init.normal_(module.weight, 0.0, 0.02)
    if module.bias is not None:  # tlgan's biases (flax's default init)
      nn.init.zeros_(module.bias)
  elif isinstance(module, nn.BatchNorm2d):
    nn.init.normal_(module.weight, 1.0, 0.02)
    nn.init.zeros_(module.bias)


def train_for(train_step, real_all, batch_size: int, *, seed: int, budget_s: float, steps: int = 0,
          log_every: int = 200):
  """Runs `train_step(batch)` on shuffled batches (a new permutation each epoch, its remainder dropped) for
  `steps` steps if `steps` > 0, else until `budget_s` seconds have passed. Returns (steps done, seconds)."""
  rng = np.random.default_rng(seed)
  step, order = 0, np.empty(0, np.int64)
  start = time.perf_counter()
  done = (lambda: step >= steps) if steps > 0 else (lambda: time.perf_counter() - start >= budget_s)
  while not done():
    if len(order) < batch_size:  # a new epoch; the remainder of the last one is dropped
      order = rng.permutation(len(real_all))
    idx, order = order[:batch_size], order[batch_size:]
    d_loss, g_loss = train_step(real_all[idx])
    step += 1
    if step % log_every == 0:
      elapsed = time.perf_counter() - start
      left = (steps - step) * elapsed / step if steps > 0 else budget_s - elapsed
      logging.info("step %d: d_loss %.3f g_loss %.3f, %.0f img/s, %.0f s left", step, d_loss, g_loss,
                   step * batch_size / elapsed, left)
  return step, time.perf_counter() - start


class TorchDCGAN:
  """One D update on (real, fake), then one G update on the same fakes, as in pytorch/examples.

  The model is tlgan's `tlgan.models.dcgan` exactly (tests/test_benchmarks.py checks a step of the two against
  each other): it has the three biases tlgan's has and pytorch/examples' lacks (D's first convolution, D's
  output layer, G's output layer), zero-initialised as there. One deviation from pytorch/examples, in PyTorch's
  favour: D's parameters are excluded from autograd during the G update, so PyTorch does not compute D's weight
  gradients there (pytorch/examples does, and discards them).
  """

  def __init__(self, batch_size: int, seed: int = 0, device: str = "cpu", dtype=None, warmup: bool = True):
    torch.manual_seed(seed)
    self.device, self.dtype = device, dtype
    self.g = nn.Sequential(
        nn.ConvTranspose2d(100, 256, 7, 1, 0, bias=False), nn.BatchNorm2d(256), nn.ReLU(True),
        nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(True),
        nn.ConvTranspose2d(128, 1, 4, 2, 1), nn.Tanh())
    self.d = nn.Sequential(
        nn.Conv2d(1, 128, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(256, 1, 7, 1, 0))
    self.g.apply(_dcgan_init)
    self.d.apply(_dcgan_init)
    self.g.to(device)
    self.d.to(device)
    self.opt_g = torch.optim.Adam(self.g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    self.opt_d = torch.optim.Adam(self.d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    self.criterion = nn.BCEWithLogitsLoss()
    self.batch_size = batch_size
    self.ones = torch.ones(batch_size, device=device)
    self.zeros = torch.zeros(batch_size, device=device)
    self.real = torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1  # the benchmark's fixed batch
    for _ in range(2 if warmup else 0):  # two steps on that batch (warmup=False: the initial weights kept)
      self.run()

  def train_step(self, real: torch.Tensor, z: Optional[torch.Tensor] = None):
    """`real`: (N, 1, 28, 28) in [-1, 1]; `z`: (N, 100, 1, 1) latents (None: drawn here). Returns (D loss,
    G loss) as floats."""
    d, g, cast = self.d, self.g, lambda: _autocast(self.device, self.dtype)
    d.zero_grad(set_to_none=True)
    with cast():
      err_real = self.criterion(d(real).view(-1).float(), self.ones)
    err_real.backward()
    with cast():
      if z is None:
        z = torch.randn(self.batch_size, 100, 1, 1, device=self.device)
      fake = g(z)
      err_fake = self.criterion(d(fake.detach()).view(-1).float(), self.zeros)
    err_fake.backward()
    self.opt_d.step()
    g.zero_grad(set_to_none=True)
    d.requires_grad_(False)
    with cast():
      err_g = self.criterion(d(fake).view(-1).float(), self.ones)
    err_g.backward()
    d.requires_grad_(True)
    self.opt_g.step()
    return float(err_real.detach() + err_fake.detach()), float(err_g.detach())

  def run(self) -> float:
    t = time.perf_counter()
    self.train_step(self.real)  # float() waits for the device (CUDA's queue), like block_until_ready
    return time.perf_counter() - t


def _autocast(device: str, dtype):
  if dtype is None or dtype == torch.float32:
    return contextlib.nullcontext()
  return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class TorchResNet18:

  def __init__(self, batch_size: int, seed: int = 0, device: str = "cpu", dtype=None, warmup: bool = True):
    torch.manual_seed(seed)
    self.device, self.dtype = device, dtype
    self.model = torchvision.models.resnet18(num_classes=10).train().to(device)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    self.criterion = nn.CrossEntropyLoss()
    self.x = torch.randn(batch_size, 3, 32, 32, device=device)
    self.y = torch.randint(0, 10, (batch_size,), device=device)
    for _ in range(2):
      self.run()

  def run(self) -> float:
    t = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    with _autocast(self.device, self.dtype):
      logits = self.model(self.x)
    loss = self.criterion(logits.float(), self.y)
    loss.backward()
    self.opt.step()
    float(loss.detach())
    return time.perf_counter() - t


def _basic_block_forward(self, x):
  """torchvision's BasicBlock.forward with `out = out + identity` instead of `out += identity` (same maths)."""
  identity = x if self.downsample is None else self.downsample(x)
  out = self.relu(self.bn1(self.conv1(x)))
  out = self.bn2(self.conv2(out))
  return self.relu(out + identity)


class TorchOpacusResNet18:
  """Opacus DP-SGD on torchvision's resnet18 with GroupNorm(32, c) (what tlgan's dp_resnet18 step trains):
  per-example gradients by Opacus's hooks, clipped to 1, noise multiplier 1.0, SGD momentum 0.9; one fixed
  batch (Opacus's Poisson sampling lives in its DataLoader, outside the timed step)."""

  def __init__(self, batch_size: int, seed: int = 0, device: str = "cpu"):
    import opacus
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10, norm_layer=lambda c: nn.GroupNorm(32, c)).train().to(device)
    for m in model.modules():  # Opacus's backward hooks forbid in-place ops on hooked modules' outputs
      if isinstance(m, nn.ReLU):
        m.inplace = False
      if isinstance(m, torchvision.models.resnet.BasicBlock):
        m.forward = types.MethodType(_basic_block_forward, m)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    self.x = torch.randn(batch_size, 3, 32, 32, device=device)
    self.y = torch.randint(0, 10, (batch_size,), device=device)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=batch_size)
    engine = opacus.PrivacyEngine(accountant="prv")
    self.model, self.opt, _ = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                                  noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    self.criterion = nn.CrossEntropyLoss()
    for _ in range(2):
      self.run()

  def run(self) -> float:
    t = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    loss = self.criterion(self.model(self.x), self.y)
    loss.backward()
    self.opt.step()
    float(loss.detach())
    return time.perf_counter() - t
