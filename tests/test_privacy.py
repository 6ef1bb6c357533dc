"""DP-SGD: the sampling, the accounting (against dp_accounting's own computations), and the step (against an
explicit per-example loop, a statistical test of the noise, padding rows, frozen parameters)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from tlgan import privacy
from tlgan.errors import ConfigError
from tlgan.models.resnet import ResNet
from tlgan.steps import classifier as clf
from tlgan.steps import private

dp_accounting = pytest.importorskip("dp_accounting")

# Abadi et al. (2016)'s MNIST setting as TF Privacy's tutorial states it: N = 60,000, batch 256, sigma 1.1,
# 60 epochs, delta 1e-5.
ABADI = dict(dataset_size=60000, expected_batch=256, noise_multiplier=1.1, delta=1e-5)
ABADI_STEPS = 60 * 60000 // 256


def test_epsilon_of_a_published_setting_equals_dp_accountings_own():
  dp = privacy.DpSgd(max_batch=60000, **ABADI)  # no truncation: plain Poisson subsampling
  ours = dp.epsilon(ABADI_STEPS)
  q = 256 / 60000
  pld = dp_accounting.pld.PLDAccountant()  # its default, finer discretisation
  pld.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.1)), ABADI_STEPS)
  rdp = dp_accounting.rdp.RdpAccountant()
  rdp.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.1)), ABADI_STEPS)
  reference = pld.get_epsilon(1e-5)
  assert reference <= ours <= reference * 1.01  # an upper bound, within 1% (the coarser grid)
  assert ours <= rdp.get_epsilon(1e-5) <= ours * 1.15  # RDP: looser, the same regime (~2.6)
  # Truncating 4 standard deviations above the expected batch costs ~1%; truncating at it costs a lot.
  truncated = privacy.DpSgd(max_batch=privacy.default_max_batch(256, 60000), **ABADI)
  assert truncated.max_batch == 320
  assert ours < truncated.epsilon(ABADI_STEPS) < ours * 1.02
  assert privacy.DpSgd(max_batch=256, **ABADI).epsilon(ABADI_STEPS) > 3 * ours
  # a peer library's independent implementations (Opacus's PRV and RDP accountants) agree
  opacus = pytest.importorskip("opacus.accountants")
  prv, rdp_opacus = opacus.PRVAccountant(), opacus.RDPAccountant()
  for acc in (prv, rdp_opacus):
    acc.history = [(1.1, q, ABADI_STEPS)]
  assert prv.get_epsilon(1e-5) == pytest.approx(ours, rel=0.01)
  assert rdp_opacus.get_epsilon(1e-5) == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-6)
  # the accountant's own event gives the same number
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=privacy.DISCRETISATION)
  acc.compose(truncated.dp_event(ABADI_STEPS))
  assert acc.get_epsilon(1e-5) == pytest.approx(truncated.epsilon(ABADI_STEPS), rel=1e-9)
  # epsilon continues with the steps, and is inf without noise
  assert 0 == dp.epsilon(0) < dp.epsilon(100) < dp.epsilon(1000) < ours
  assert math.isinf(privacy.DpSgd(max_batch=320, **{**ABADI, "noise_multiplier": 0.0}).epsilon(1))


def test_calibrated_noise_is_the_smallest_that_meets_the_target():
  params = dict(steps=2000, dataset_size=60000, expected_batch=256, max_batch=320, delta=1e-5)
  sigma = privacy.calibrate_noise(3.0, **params)
  eps = lambda s: privacy.DpSgd(noise_multiplier=s, **{k: v for k, v in params.items() if k != "steps"}
                                ).epsilon(params["steps"])
  assert eps(sigma) <= 3.0 < eps(sigma * 0.995)
  with pytest.raises(ConfigError, match="target_epsilon=0 must be a finite number > 0"):
    privacy.calibrate_noise(0, **params)


def _analytic_gaussian_epsilon(sigma, delta):
  """Balle & Wang (2018), Theorem 8: the exact epsilon of one Gaussian mechanism (sensitivity 1, std sigma), in
  float64 with SciPy: delta(eps) = Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma)."""
  from scipy import optimize, stats
  d = lambda e: (stats.norm.cdf(0.5 / sigma - e * sigma) - math.exp(e) * stats.norm.cdf(-0.5 / sigma - e * sigma)
                 - delta)
  return optimize.brentq(d, 0.0, 50.0, xtol=1e-12)


def test_releases_before_training_compose_with_the_steps():
  """A statistic released once with the Gaussian mechanism (e.g. a feature covariance) is composed with the
  DP-SGD steps: alone it costs the Gaussian mechanism's exact epsilon; with the steps, what dp_accounting's PLD
  accountant gives for the composed event; calibration leaves the steps the rest of the budget."""
  base = dict(max_batch=320, **ABADI)
  one = privacy.DpSgd(releases=(2.0,), **base)
  assert one.epsilon(0) == pytest.approx(_analytic_gaussian_epsilon(2.0, 1e-5), rel=0.01)
  assert one.epsilon(0) >= _analytic_gaussian_epsilon(2.0, 1e-5)  # an upper bound (pessimistic PLD)
  two = privacy.DpSgd(releases=(5.0, 20.0), **base)
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=privacy.DISCRETISATION)
  acc.compose(two.dp_event(1000))
  assert two.epsilon(1000) == pytest.approx(acc.get_epsilon(1e-5), rel=2e-3)
  plain = privacy.DpSgd(**base)
  assert plain.epsilon(1000) < two.epsilon(1000) < plain.epsilon(1000) + two.epsilon(0)  # composition is sub-additive
  assert 0 < two.epsilon(0) < two.epsilon(1) < two.epsilon(1000)
  params = dict(steps=1000, dataset_size=60000, expected_batch=256, max_batch=320, delta=1e-5)
  sigma = privacy.calibrate_noise(3.0, releases=(5.0,), **params)
  eps = lambda s: privacy.DpSgd(noise_multiplier=s, releases=(5.0,), **{k: v for k, v in params.items()
                                                                       if k != "steps"}).epsilon(1000)
  assert eps(sigma) <= 3.0 < eps(sigma * 0.995)
  assert sigma > privacy.calibrate_noise(3.0, **params)  # the release's share of the budget costs the steps noise
  with pytest.raises(ConfigError, match=r"the releases before training alone spend epsilon .* of the target 1"):
    privacy.calibrate_noise(1.0, releases=(1.0,), **params)


@pytest.mark.parametrize("release", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_release_is_refused_in_one_line(release):
  with pytest.raises(ConfigError, match=r"a release's noise multiplier \(.*\) must be a finite number > 0"):
    privacy.DpSgd(max_batch=320, releases=(release,), **ABADI)


@pytest.mark.parametrize("bad,message", [
    (dict(dataset_size=0), "at least one example"),
    (dict(expected_batch=70000), "expected batch .* must be in"),
    (dict(delta=1.0), "delta=1.0 must be in"),
    (dict(noise_multiplier=float("nan")), "noise_multiplier=nan must be"),
    (dict(max_batch=0), "max_batch=0 must be at least 1"),
    # noise the accountant cannot take: its PLD would not fit in memory (4 GB at 1e-3), or would overflow
    (dict(noise_multiplier=1e-3), r"dp.noise_multiplier=0.001 is outside \[0.1, 10000\]: below, epsilon is in the "
                                  r"hundreds .* \(or 0: no noise, not private\)"),
    (dict(noise_multiplier=1e300), r"dp.noise_multiplier=1e\+300 is outside \[0.1, 10000\]"),
    (dict(releases=(1e-3,)), r"a release's noise multiplier=0.001 is outside \[0.1, 10000\]"),
    (dict(releases=(1.0, 1e5)), r"a release's noise multiplier=100000 is outside"),
])
def test_bad_privacy_parameters_are_refused_in_one_line(bad, message):
  with pytest.raises(ConfigError, match=message) as e:
    privacy.DpSgd(**{**ABADI, "max_batch": 320, **bad})
  assert "\n" not in str(e.value)


def test_a_large_target_calibrates_to_the_least_noise_the_accountant_takes():
  """epsilon 1,000 is reached with less noise than 0.1: the calibration stops there (more noise than needed,
  epsilon below the target) instead of building PLDs that do not fit in memory."""
  params = dict(dataset_size=1258, expected_batch=16.0, max_batch=40, delta=1e-4)
  sigma = privacy.calibrate_noise(1000.0, steps=40, **params)
  assert privacy.NOISE_RANGE[0] <= sigma <= 2 * privacy.NOISE_RANGE[0]
  assert privacy.DpSgd(noise_multiplier=sigma, **params).epsilon(40) <= 1000.0


def test_poisson_batches_include_each_example_with_probability_q_and_depend_on_seed_and_step_only():
  n, expected, steps = 500, 20.0, 2000
  counts, sizes = np.zeros(n), []
  for step in range(steps):
    idx, mask = privacy.poisson_batch(seed=3, step=step, dataset_size=n, expected_batch=expected, max_batch=40)
    assert idx.shape == mask.shape == (40,)
    chosen = idx[mask]
    assert len(np.unique(chosen)) == len(chosen) and np.all(idx[~mask] == 0)
    counts[chosen] += 1
    sizes.append(mask.sum())
  q = expected / n
  # every example's inclusion count is Binomial(steps, q): pooled, a chi-square test of uniformity
  assert stats.chisquare(counts).pvalue > 1e-3
  assert abs(counts.mean() / steps - q) < 3 * math.sqrt(q * (1 - q) / (steps * n))
  # batch sizes are Binomial(n, q) (truncation at 40 is ~4 sd away: never reached here)
  assert abs(np.mean(sizes) - expected) < 4 * math.sqrt(expected / steps)
  assert abs(np.var(sizes) / (expected * (1 - q)) - 1) < 0.15
  # random access: the same (seed, step) gives the same batch, another seed another batch
  a = privacy.poisson_batch(seed=3, step=77, dataset_size=n, expected_batch=expected, max_batch=40)
  b = privacy.poisson_batch(seed=3, step=77, dataset_size=n, expected_batch=expected, max_batch=40)
  c = privacy.poisson_batch(seed=4, step=77, dataset_size=n, expected_batch=expected, max_batch=40)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0][a[1]], c[0][c[1]])
  # truncation keeps max_batch distinct examples
  idx, mask = privacy.poisson_batch(seed=0, step=0, dataset_size=n, expected_batch=100, max_batch=10)
  assert mask.all() and len(np.unique(idx)) == 10


# --- the step -------------------------------------------------------------------------------------------------

def _state(norm="group", mode="full", lr=0.1, momentum=0.0):
  model = ResNet(stage_sizes=(1, 1), num_classes=3, width=4, norm=norm, norm_groups=2, stem="cifar")
  tx = clf.make_optimizer(mode=mode, optimizer="sgd", learning_rate=lr, momentum=momentum, warmup_steps=0,
                          total_steps=10**6)
  return clf.init_state(jax.random.key(0), model, tx, image_shape=(8, 8, 1), num_classes=3, mode=mode)


def _batch(n=6, real=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(n, 8, 8, 1)).astype(np.float32)),
          "label": jnp.asarray(rng.integers(0, 3, n).astype(np.int32)),
          "mask": jnp.asarray(np.arange(n) < real)}


def test_clipped_gradient_sum_equals_an_explicit_per_example_loop():
  state = _state()
  batch = _batch()
  mask_tree = private.trainable_mask(state.params, "full")

  @jax.jit
  def example_grad(params, image, label):  # one example, a batch of one: the definition
    def loss(params):
      logits = state.model.apply({"params": params, "batch_stats": state.batch_stats}, image[None])
      return clf.cross_entropy(logits, label[None], 3).mean()
    return jax.grad(loss)(params)

  real = np.flatnonzero(np.asarray(batch["mask"]))
  per_example = [example_grad(state.params, batch["image"][i], batch["label"][i]) for i in real]
  clipped = jax.jit(lambda state, batch, clip, impl, micro: private.clipped_grad_sum(
      state, batch, clip_norm=clip, impl=impl, microbatch_size=micro), static_argnums=(3, 4))
  for clip, impl, micro in ((1e-3, "ghost", None), (0.5, "ghost", 2), (1e6, "ghost", 3), (0.5, "reweight", 2),
                            (0.5, "materialize", None), (1e6, "materialize", 2)):  # all / some / none clipped
    grads, losses, correct, norms = clipped(state, batch, clip, impl, micro)
    expected = jax.tree.map(jnp.zeros_like, state.params)
    for i, g in zip(real, per_example):
      norm = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(g)))
      assert norms[i] == pytest.approx(norm, rel=1e-4)
      expected = jax.tree.map(lambda e, x: e + x * min(1.0, clip / norm), expected, g)
    flat = private.split(expected, mask_tree)[0]
    assert set(flat) == set(grads)
    for k in flat:
      np.testing.assert_allclose(grads[k], flat[k], rtol=2e-4, atol=1e-7 * max(clip, 1e-3))


@pytest.mark.parametrize("impl", private.IMPLS)
def test_a_row_whose_gradient_is_not_finite_contributes_nothing(impl):
  state = _state()
  batch = _batch()
  clipped = jax.jit(lambda state, batch: private.clipped_grad_sum(state, batch, clip_norm=0.5, impl=impl))
  nan_row = {**batch, "image": batch["image"].at[2].set(jnp.nan)}
  without = {**batch, "mask": batch["mask"].at[2].set(False)}
  a, b = clipped(state, nan_row)[0], clipped(state, without)[0]
  for k in a:
    assert np.all(np.isfinite(a[k]))
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_noise_has_the_stated_std_and_is_a_function_of_rng_and_step():
  """No real example in the batch: the update is the noise alone (sgd, lr 1), N(0, (sigma C / B)^2)."""
  state = _state(lr=1.0)
  sigma, clip, expected = 1.3, 0.7, 5.0
  step = jax.jit(functools.partial(private.train_step, clip_norm=clip, noise_multiplier=sigma,
                                   expected_batch=expected))
  empty = {**_batch(), "mask": jnp.zeros(6, bool)}
  after, metrics = step(state, empty, jax.random.key(1))
  assert float(metrics["batch"]) == 0
  delta = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(after.params),
                                                           jax.tree.leaves(state.params))])
  z = -delta * expected / (sigma * clip)  # should be N(0, 1), iid
  assert len(z) > 1000
  assert stats.kstest(z, "norm").pvalue > 1e-3
  assert abs(np.std(z) - 1) < 4 / math.sqrt(2 * len(z))
  again, _ = step(state, empty, jax.random.key(1))
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  later, _ = step(state.replace(step=state.step + 1), empty, jax.random.key(1))
  d2 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(later.params), jax.tree.leaves(state.params))])
  assert abs(np.corrcoef(delta, d2)[0, 1]) < 0.1  # another step, independent noise


def test_padding_rows_change_nothing_and_the_metrics_count_real_rows_only():
  state = _state()
  step = jax.jit(functools.partial(private.train_step, clip_norm=1.0, noise_multiplier=0.5, expected_batch=4.0))
  batch = _batch()
  other = {**batch, "image": batch["image"].at[4:].set(99.0), "label": batch["label"].at[4:].set(2)}
  a, ma = step(state, batch, jax.random.key(2))
  b, mb = step(state, other, jax.random.key(2))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert float(ma["batch"]) == 4 and float(ma["loss"]) == float(mb["loss"])
  # and a real row does change the update
  c, _ = step(state, {**batch, "image": batch["image"].at[0].set(5.0)}, jax.random.key(2))
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_a_linear_probe_changes_the_head_only_and_batchnorm_in_training_mode_is_refused():
  state = _state(norm="batch", mode="linear_probe")
  assert not state.bn_train  # a linear probe's BatchNorm stays in inference mode: allowed
  step = jax.jit(functools.partial(private.train_step, clip_norm=1.0, noise_multiplier=1.0, expected_batch=4.0,
                                   mode="linear_probe"))
  after, _ = step(state, _batch(), jax.random.key(0))
  for path, a in jax.tree_util.tree_leaves_with_path(after.params):
    b = functools.reduce(lambda t, k: t[k.key], path, state.params)
    assert np.array_equal(a, b) != (path[0].key == "fc"), path
  with pytest.raises(ValueError, match="BatchNorm in training mode mixes examples.*model.norm=group or frozen"):
    private.train_step(_state(norm="batch"), _batch(), jax.random.key(0), clip_norm=1.0, noise_multiplier=1.0,
                       expected_batch=4.0)


# --- the private GAN step -----------------------------------------------------------------------------------

def _gan_state(d_norm="group", d="dcgan"):
  from tlgan import param_groups, pretrained
  from tlgan.models.dcgan import Discriminator, Generator
  from tlgan.models.projected import ProjectedDiscriminator
  from tlgan.steps import gan as gan_step
  kwargs = dict(image_shape=(28, 28, 1), features=4)
  d_tx = optax.sgd(0.1)
  if d == "dcgan":
    discriminator = Discriminator(norm=d_norm, **kwargs)
  else:  # heads on a (randomly initialised, here) width-8 ResNet18 trunk, frozen as the trainer freezes it
    trunk = pretrained.WeightsMeta("resnet18", width=8, num_classes=10, image_size=32, channels=1, stem="cifar")
    discriminator = ProjectedDiscriminator(norm=d_norm, trunk=trunk, stages=("layer1", "layer2"), **kwargs)
    d_tx = param_groups.freeze(d_tx, ["trunk"])
  return gan_step.init_state(jax.random.key(0), Generator(**kwargs), discriminator, optax.sgd(0.1), d_tx,
                             image_shape=(28, 28, 1), latent_dim=8)


@pytest.mark.parametrize("d", ["dcgan", "projected"])
def test_private_gan_step_without_noise_or_clipping_equals_the_gan_step(d):
  """sigma 0, C huge, every row real, the divisor = the batch: the DP-SGD machinery must give the ordinary
  step's update (the real term's mean gradient + the fakes' term), for D and, through D, for G. A projected D:
  its heads learn, its trunk (parameters and BatchNorm statistics) stays as it was."""
  from tlgan.steps import gan as gan_step
  from tlgan.steps import private_gan
  state = _gan_state(d=d)
  images = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (6, 28, 28, 1)).astype(np.float32))
  plain, _ = jax.jit(gan_step.train_step)(state, {"image": images}, jax.random.key(3))
  step = jax.jit(functools.partial(private_gan.train_step, clip_norm=1e9, noise_multiplier=0.0, expected_batch=6.0,
                                   microbatch_size=3))
  private, metrics = step(state, {"image": images, "mask": jnp.ones(6, bool)}, jax.random.key(3))
  for a, b in zip(jax.tree.leaves((plain.d_params, plain.g_params)), jax.tree.leaves((private.d_params,
                                                                                         private.g_params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(metrics["clipped_fraction"]) == 0 and float(metrics["batch"]) == 6
  if d == "projected":
    for a, b in zip(jax.tree.leaves((state.d_params["trunk"], state.d_batch_stats)),
                    jax.tree.leaves((private.d_params["trunk"], private.d_batch_stats)), strict=True):
      np.testing.assert_array_equal(a, b)
    heads = [k for k in state.d_params if k != "trunk"]
    assert heads and all(not np.array_equal(a, b) for k in heads for a, b in
                         zip(jax.tree.leaves(state.d_params[k]), jax.tree.leaves(private.d_params[k])))


def test_private_gan_step_clips_the_real_rows_only_ignores_padding_and_refuses_batchnorm():
  from tlgan.steps import private_gan
  state = _gan_state()
  images = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (6, 28, 28, 1)).astype(np.float32))
  mask = jnp.arange(6) < 4
  step = jax.jit(functools.partial(private_gan.train_step, clip_norm=1e-4, noise_multiplier=0.0, expected_batch=4.0))
  a, metrics = step(state, {"image": images, "mask": mask}, jax.random.key(3))
  b, _ = step(state, {"image": images.at[4:].set(0.5), "mask": mask}, jax.random.key(3))
  for x, y in zip(jax.tree.leaves(a.d_params), jax.tree.leaves(b.d_params)):
    np.testing.assert_array_equal(x, y)
  assert float(metrics["clipped_fraction"]) == 1.0
  # the real rows' contribution is bounded by C per row: with C tiny, D's update is the fakes' term alone
  no_real, _ = step(state, {"image": images, "mask": jnp.zeros(6, bool)}, jax.random.key(3))
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a.d_params), jax.tree.leaves(no_real.d_params)))
  assert diff <= 0.1 * 4 * 1e-4 / 4.0 + 1e-7  # lr x (rows x C) / expected batch
  for d in ("dcgan", "projected"):  # a BatchNorm D, or BatchNorm heads on a projected D
    with pytest.raises(ValueError, match="BatchNorm statistics of private images are refused"):
      private_gan.train_step(_gan_state("batch", d), {"image": images, "mask": mask}, jax.random.key(0),
                             clip_norm=1.0, noise_multiplier=1.0, expected_batch=4.0)


def test_private_gan_step_clip_fake_clips_each_fake_rows_gradient_as_an_explicit_loop_does():
  """clip_fake: D's fake term is the mean over fakes of per-example gradients clipped to C (C between the
  smallest and largest norm: some rows clipped, some not), no noise; with C huge it is the exact term."""
  from tlgan.losses import D_TERMS
  from tlgan.steps import gan as gan_step
  from tlgan.steps import private_gan
  state = _gan_state()
  images = jnp.asarray(np.random.default_rng(7).uniform(-1, 1, (6, 28, 28, 1)).astype(np.float32))
  rng, no_real = jax.random.key(4), jnp.zeros(6, bool)  # no real rows: D's update is the fake term alone
  fake, _, _ = gan_step.generate_with_vjp(state, gan_step.latents(state, rng, 6, None))
  fake_term = D_TERMS[state.loss][1]
  row_grad = jax.jit(jax.vmap(jax.grad(lambda p, x: fake_term(state.discriminator.apply(
      {"params": p}, x[None], train=True))[0]), in_axes=(None, 0)))
  grads = row_grad(state.d_params, fake)
  norms = np.sqrt(sum(np.sum(np.reshape(g, (6, -1)).astype(np.float64) ** 2, axis=1) for g in jax.tree.leaves(grads)))
  clip = float(np.median(norms))
  assert (norms > clip).any() and (norms < clip).any()
  scale = np.minimum(1.0, clip / norms)
  # clip_norm traced: one compiled program for both values (C huge: the exact term, the loop without clipping)
  step = jax.jit(lambda state, batch, rng, c: private_gan.train_step(
      state, batch, rng, clip_norm=c, noise_multiplier=0.0, expected_batch=4.0, clip_fake=True))
  for c, factors in ((clip, scale), (1e9, np.ones(6))):
    new, metrics = step(state, {"image": images, "mask": no_real}, rng, jnp.float32(c))
    expected = jax.tree.map(lambda p, g: p - 0.1 * np.tensordot(factors, np.asarray(g, np.float64), 1) / 6,
                            state.d_params, grads)
    for a, b in zip(jax.tree.leaves(new.d_params), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_private_gan_step_d_steps_moves_g_only_every_d_steps_th_step():
  """d_steps=2: step 0 updates D exactly as d_steps=1 does and leaves G, its optimiser, EMA and BatchNorm
  statistics as they were; step 1 moves G."""
  from tlgan.steps import private_gan
  state = _gan_state()
  images = jnp.asarray(np.random.default_rng(8).uniform(-1, 1, (6, 28, 28, 1)).astype(np.float32))
  batch, rng = {"image": images, "mask": jnp.arange(6) < 5}, jax.random.key(5)
  kw = dict(clip_norm=1.0, noise_multiplier=0.5, expected_batch=5.0)
  one, _ = jax.jit(functools.partial(private_gan.train_step, **kw))(state, batch, rng)
  step = jax.jit(functools.partial(private_gan.train_step, d_steps=2, **kw))
  first, metrics = step(state, batch, rng)
  for a, b in zip(jax.tree.leaves(first.d_params), jax.tree.leaves(one.d_params), strict=True):
    np.testing.assert_array_equal(a, b)
  kept = lambda s: (s.g_params, s.g_opt_state, s.ema_params, s.g_batch_stats)
  for a, b in zip(jax.tree.leaves(kept(first)), jax.tree.leaves(kept(state)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert float(metrics["g_grad_norm"]) > 0  # computed, then discarded
  second, _ = step(first, batch, rng)
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(second.g_params),
                                                      jax.tree.leaves(first.g_params)))


def test_dp_configs_refuse_what_cannot_be_private_in_one_line():
  """In process (the CLI's one-line form of the same errors is in tests/test_bad_input.py)."""
  from configs import private as private_config
  from tlgan.trainers import private as private_trainer
  config = private_config.get_config("digits,smoke")
  config.dp.noise_multiplier = 1.0
  with pytest.raises(ConfigError, match="dp.target_epsilon=3.0 and dp.noise_multiplier=1.0 both set the noise"):
    private_trainer.check_config(config)
  config = private_config.get_config("digits,smoke")
  config.dp.delta = 0.01
  with pytest.raises(ConfigError, match=r"dp.delta=0.01 is not below 1/N = 0.000795 \(N = 1258 training examples\)"):
    private_trainer.plan(config, dataset_size=1258, total_steps=6, largest_trainable=1000)
  config = private_config.get_config("digits,smoke")
  config.batch_size = 2000  # more than the training set (a recipe for 60,000 examples on 1,258)
  with pytest.raises(ConfigError, match=r"batch_size=2000 \(the expected Poisson batch\) exceeds the 1258 training "
                                        r"examples: set batch_size to at most 1258"):
    private_trainer.plan(config, dataset_size=1258, total_steps=6, largest_trainable=1000)
  config = private_config.get_config("digits,smoke")
  config.dp.target_epsilon, config.dp.noise_multiplier, config.dp.max_epsilon = 0.0, 0.5, 0.5
  with pytest.raises(ConfigError, match=r"6 steps reach epsilon .* > dp.max_epsilon=0.5 .*: train at most \d+ steps"):
    private_trainer.plan(config, dataset_size=1258, total_steps=6, largest_trainable=1000)
  # a private GAN: BatchNorm heads on a projected D, and a trunk trained on the private data itself
  from configs import gan as gan_config
  from tlgan import pretrained
  config = gan_config.get_config("private,projected,smoke")
  config.model.d_norm = "batch"
  with pytest.raises(ConfigError, match=r"D's BatchNorm \(the projected D's heads\) mixes private examples"):
    private_trainer.check_config(config)
  config.model.d_norm = "group"
  private_trainer.check_config(config)  # group heads on a frozen trunk: accepted
  trained_here = pretrained.WeightsMeta("resnet18", dataset=config.data.name)
  with pytest.raises(ConfigError, match=f"a trunk trained on {config.data.name}, the private data itself"):
    private_trainer.check_trunk(config, trained_here)
  private_trainer.check_trunk(config, pretrained.WeightsMeta("resnet18", dataset="digits28"))  # public data
  # several D steps per G step: the private D step has them, the ordinary one does not
  from tlgan.trainers import gan as gan_trainer
  config = gan_config.get_config("smoke")
  config.d_steps = 3
  with pytest.raises(ConfigError, match=r"d_steps=3: .* set d_steps=1 or dp.enabled=True"):
    gan_trainer.check_model_config(config)
  config.d_steps = 0
  with pytest.raises(ConfigError, match="d_steps"):
    gan_trainer.check_model_config(config)
  config = gan_config.get_config("private,smoke")
  config.d_steps = 3
  gan_trainer.check_model_config(config)


def test_a_stop_asked_while_the_accounting_is_computed_ends_there(monkeypatch):
  """Calibrating the noise can take a while: a stop signal that lands then ends the run before anything is
  compiled or trained (the CLI turns `Stopped` into one `stopped:` line and status 3)."""
  from configs import private as private_config
  from tlgan import stopping
  from tlgan.trainers import private as private_trainer
  config = private_config.get_config("digits,smoke")
  monkeypatch.setattr(stopping, "_requested", "SIGTERM")
  with pytest.raises(stopping.Stopped, match="SIGTERM received while computing the privacy accounting"):
    private_trainer.plan(config, dataset_size=1258, total_steps=6, largest_trainable=1000)
