"""Classifier training and evaluation steps (fine-tuning, linear probing, training from scratch): pure.

    from tlgan.steps.classifier import train_step, eval_step
    state, metrics = jax.jit(train_step, donate_argnums=0)(state, batch, rng)
    sums = jax.jit(eval_step)(state, batch)

What is trained is decided by the optimiser (`make_optimizer`): parameters labelled 'frozen' get
`optax.set_to_zero()`, so a linear probe is an optax mask, not a copy of parameters. A frozen backbone also
keeps its BatchNorm in inference mode (`bn_train=False`), so its running statistics do not move either.
"""

from typing import Any, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tlgan import param_groups
from flax import struct

MODES = ("full", "linear_probe")
OPTIMIZERS = ("sgd", "adam", "adamw")
HEAD = "fc"


class ClassifierState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  model: nn.Module = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  num_classes: int = struct.field(pytree_node=False, default=10)
  label_smoothing: float = struct.field(pytree_node=False, default=0.0)
  bn_train: bool = struct.field(pytree_node=False, default=True)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  @property
  def eval_variables(self):
    """What evaluation and export use: the EMA of the parameters when the optimiser keeps one (`optim.ema_decay`
    > 0), else the parameters."""
    params = self.opt_state.ema if isinstance(self.opt_state, ParamEMAState) else self.params
    return {"params": params, "batch_stats": self.batch_stats}


class ParamEMAState(NamedTuple):
  inner: Any  # the wrapped optimiser's state
  ema: Any  # the moving average of the parameters after each update
  count: jax.Array


def with_param_ema(tx: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
  """`tx`, plus an exponential moving average of the parameters it produces, kept in the optimiser state (so
  checkpoints hold it and resume continues it). Early on the decay is min(decay, (1 + t) / (10 + t)), as in
  tf.train.ExponentialMovingAverage(num_updates=t): a short run's average is not dominated by the initial
  weights. Under DP-SGD the average is post-processing of the noisy iterates: no privacy cost."""
  if not 0.0 < decay < 1.0:
    raise ValueError(f"the parameter EMA's decay must be in (0, 1), got {decay}")

  def init(params):
    return ParamEMAState(tx.init(params), jax.tree.map(jnp.copy, params), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("with_param_ema needs the parameters: call update(updates, state, params)")
    updates, inner = tx.update(updates, state.inner, params)
    t = state.count.astype(jnp.float32)
    rate = 1.0 - jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    ema = optax.incremental_update(optax.apply_updates(params, updates), state.ema, rate)
    return updates, ParamEMAState(inner, ema, state.count + 1)

  return optax.GradientTransformation(init, update)


def make_optimizer(*, mode: str = "full", optimizer: str = "sgd", learning_rate: float = 0.1,
                   backbone_lr_factor: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                   warmup_steps: int = 0, total_steps: int = 1000, ema_decay: float = 0.0
                   ) -> optax.GradientTransformation:
  """SGD-momentum / Adam / AdamW with a warm-up + cosine schedule, per parameter group.

  The head learns at `learning_rate`, the backbone at `learning_rate * backbone_lr_factor` (discriminative
  learning rates; 1.0 is plain fine-tuning), and in 'linear_probe' mode the backbone not at all. Weight decay
  applies to kernels (not to biases or BatchNorm), decoupled for AdamW and as an L2 gradient term for SGD.
  `ema_decay` > 0 keeps an EMA of the parameters (`with_param_ema`), which evaluation and export then use.
  """
  def schedule(peak):
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup_steps, 0), max(total_steps, warmup_steps + 1))

  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)

  def group(peak):
    if optimizer == "sgd":
      return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask),
                         optax.sgd(schedule(peak), momentum=momentum))
    if optimizer == "adam":
      return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), optax.adam(schedule(peak)))
    if optimizer == "adamw":
      return optax.adamw(schedule(peak), weight_decay=weight_decay, mask=decay_mask)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")

  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  tx = param_groups.optimizer(
      {"head": group(learning_rate), "backbone": group(learning_rate * backbone_lr_factor), "frozen": None},
      [(HEAD, "head")], default="frozen" if mode == "linear_probe" else "backbone")
  return with_param_ema(tx, ema_decay) if ema_decay > 0 else tx


def init_state(rng, model: nn.Module, tx: optax.GradientTransformation, *, image_shape, num_classes: int, label_smoothing: float = 0.0,
               mode: str = "full", variables: Optional[Dict[str, Any]] = None) -> ClassifierState:
  """A state from fresh variables (or given ones, e.g. merged pretrained weights) and an optimiser (e.g.
  `make_optimizer`'s)."""
  if variables is None:
    # one compiled program: op by op, each initialiser and layer would be compiled on its own
    variables = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False))(rng)
  params = variables["params"]
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                         opt_state=tx.init(params), model=model, tx=tx, num_classes=num_classes,
                         label_smoothing=label_smoothing,
                         # a model without BatchNorm (batch_stats empty, or only fixed statistics): False
                         bn_train=(mode == "full" and getattr(model, "norm", None) == "batch"
                                   and bool(variables.get("batch_stats"))))


def _mean_over(axis_name, tree):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: ClassifierState, batch: Dict[str, jax.Array], rng: jax.Array,
               axis_name: Optional[str] = None, accum_steps: int = 1
               ) -> Tuple[ClassifierState, Dict[str, jax.Array]]:
  """One optimiser step on `batch['image']` (normalised NHWC floats) and `batch['label']` (ints).

  Args:
    state: the current `ClassifierState`.
    batch: a dict with 'image' and 'label'.
    rng: unused by the ResNet (no dropout; augmentation happens in the input pipeline) but kept in the
      signature shared by all tlgan steps.
    axis_name: under `pmap`, the device axis: gradients and metrics are averaged over it.
    accum_steps: gradient accumulation: the batch is processed as this many micro-batches (rows `m`,
      `m + k`, `m + 2k`, ... form micro-batch `m`, so each device keeps its own rows) whose mean gradient
      makes one update. Equal to the whole batch except where BatchNorm in training mode sees micro-batch
      statistics (running statistics are updated once per micro-batch, as in PyTorch).
  """
  del rng

  def grads_of(batch_stats, micro):
    def loss_fn(params):
      variables = {"params": params, "batch_stats": batch_stats}
      if state.bn_train:
        logits, new_vars = state.model.apply(variables, micro["image"], train=True, mutable=["batch_stats"])
        new_stats = new_vars["batch_stats"]
      else:
        logits, new_stats = state.model.apply(variables, micro["image"], train=False), batch_stats
      loss = jnp.mean(cross_entropy(logits, micro["label"], state.num_classes, state.label_smoothing))
      return loss, (jnp.mean(jnp.argmax(logits, -1) == micro["label"]), new_stats)
    (loss, (accuracy, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, new_stats, loss, accuracy

  if accum_steps == 1:
    grads, batch_stats, loss, accuracy = grads_of(state.batch_stats, batch)
  else:
    micro_batches = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, accum_steps, *x.shape[1:]), 0, 1), batch)

    def body(carry, micro):
      grad_sum, stats = carry
      grads, stats, loss, accuracy = grads_of(stats, micro)
      return (jax.tree.map(jnp.add, grad_sum, grads), stats), (loss, accuracy)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, batch_stats), (losses, accuracies) = jax.lax.scan(body, (zeros, state.batch_stats), micro_batches)
    grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
    loss, accuracy = jnp.mean(losses), jnp.mean(accuracies)

  grads = _mean_over(axis_name, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = _mean_over(axis_name, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)})
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def eval_step(state: ClassifierState, batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
  """Sums over the real examples of a padded batch (`batch['mask']`): correct, count, loss, confusion."""
  logits = state.model.apply(state.eval_variables, batch["image"], train=False)
  mask = batch.get("mask", jnp.ones(batch["label"].shape, bool)).astype(jnp.float32)
  predicted = jnp.argmax(logits, -1)
  loss = cross_entropy(logits, batch["label"], state.num_classes)
  onehot_true = jax.nn.one_hot(batch["label"], state.num_classes) * mask[:, None]
  onehot_pred = jax.nn.one_hot(predicted, state.num_classes)
  return {
      "correct": jnp.sum((predicted == batch["label"]) * mask),
      "count": jnp.sum(mask),
      "loss_sum": jnp.sum(loss * mask),
      "confusion": onehot_true.T @ onehot_pred,  # rows: true class, columns: predicted
  }
