"""The benchmark scripts' own logic (not their timings): the busy-machine note of benchmarks.steps and
profile_steps, the table benchmarks.xla_flags assembles from its runs, and profile_steps' reading of the HLO."""

from benchmarks import jax_steps, xla_flags


def test_load_note_says_when_another_job_shared_the_machine(monkeypatch):
  monkeypatch.setattr(jax_steps.os, "cpu_count", lambda: 2)
  assert jax_steps.load_note(0.1, 1.9).endswith("quiet")  # the benchmark alone raises it to ~the core count
  assert "BUSY" in jax_steps.load_note(2.6, 1.0) and "BUSY" in jax_steps.load_note(0.2, 3.1)


def test_xla_flags_table_ratios_and_failures(monkeypatch, capsys):
  fake = {"": 0.40, "--fast": 0.20, "--broken": None}

  def run_once(xla, out):
    if fake[xla] is None:
      return {"error": "error: unknown flag"}
    return {"rows": [{"step": "dcgan", "median_s": fake[xla]}], "peaks_gflops": {"XLA": 200.0},
            "load": "quiet" if xla else "BUSY: another job"}

  monkeypatch.setattr(xla_flags, "run_once", run_once)
  xla_flags.FLAGS(["xla_flags", "--flag_rounds=2", "--flag_steps=dcgan"] + [f"--flag_sets={s}" for s in fake])
  try:
    xla_flags.main(None)
  finally:
    xla_flags.FLAGS.unparse_flags()
  lines = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")}
  assert "| 400 | 1.00x | 200 | busy |" in lines["`(none)`"]
  assert "| 200 | 2.00x | 200 | quiet |" in lines["`--fast`"]
  assert "failed" in lines["`--broken`"] and "unknown flag" in lines["`--broken`"]


def test_profile_attributes_a_layers_three_products_and_their_flops():
  # A dense layer's step: the forward product, then the input and weight gradients JAX's transpose rules emit;
  # each found in the optimised HLO, named, and counted as 2*M*N*K.
  import jax
  import jax.numpy as jnp
  from benchmarks import profile_steps

  m, k, n = 48, 40, 24

  def step(x, w):
    loss = lambda x, w: jnp.sum(jnp.tanh(x @ w))
    return jax.grad(loss, argnums=(0, 1))(x, w)

  compiled = jax.jit(step).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
  table = profile_steps.parse_hlo(compiled.as_text())
  flops = {}
  for kind, f, _ in table.values():
    flops[kind] = flops.get(kind, 0.0) + f
  assert flops["GEMM forward"] == 2 * m * n * k
  assert flops["GEMM input gradient"] == 2 * m * n * k
  assert flops["GEMM weight gradient"] == 2 * m * n * k
  assert set(flops) <= set(profile_steps.KINDS)


def test_torch_dcgan_loop_runs_exact_steps_or_a_time_budget_over_shuffled_epochs(monkeypatch):
  # benchmarks.torch_dcgan's loop: --steps=N makes exactly N steps; --minutes stops at the budget; each epoch is
  # a fresh permutation from the seed's generator (so --seed=S repeats a budget run's data order), its
  # remainder dropped.
  import numpy as np
  from benchmarks import torch_reference
  data = np.arange(10)
  seen = []

  def step(batch):
    seen.append(np.asarray(batch))
    return 0.0, 0.0

  steps, _ = torch_reference.train_for(step, data, 4, seed=3, budget_s=0.0, steps=5)
  assert steps == 5 and len(seen) == 5 and all(len(b) == 4 for b in seen)
  rng = np.random.default_rng(3)
  first, second = rng.permutation(10), rng.permutation(10)
  np.testing.assert_array_equal(np.concatenate(seen[:2]), first[:8])  # epoch 1: two batches, 2 rows dropped
  np.testing.assert_array_equal(np.concatenate(seen[2:4]), second[:8])
  clock = iter(range(100))
  monkeypatch.setattr(torch_reference.time, "perf_counter", lambda: next(clock))
  seen.clear()
  steps, seconds = torch_reference.train_for(step, data, 4, seed=3, budget_s=3.5)
  assert steps == len(seen) == 3 and seconds >= 3.5  # the clock reads 0 (start), then 1, 2, 3, 4 >= 3.5: stop


def test_torch_reference_dcgan_is_tlgans_dcgan_step_for_step():
  # The PyTorch reference of the time-to-quality comparison (benchmarks.torch_dcgan) must be the same model and
  # the same step as tlgan's default GAN: tlgan's initial weights copied into it, the same real batches and
  # latents, three steps of each (D update, then G update, Adam, BatchNorm in train mode) give the same losses
  # and the same parameters.
  import jax
  import numpy as np
  from benchmarks import torch_reference
  from configs import gan as gan_config
  from tlgan.steps import gan as gan_step
  from tlgan.trainers import gan as gan_trainer
  torch = torch_reference.torch
  n = 8
  state = gan_trainer.build_state(gan_config.get_config(), (28, 28, 1))  # the default run's model and optimisers
  ref = torch_reference.TorchDCGAN(n, warmup=False)

  def as_torch(g, d):  # tlgan's parameters (NHWC, HWIO kernels) in the reference's layout
    t = lambda a, *axes: torch.from_numpy(np.array(a).transpose(*axes).copy())
    return {
        "g.0.weight": t(g["Dense_0"]["kernel"].reshape(100, 7, 7, 256), 0, 3, 1, 2),
        "g.1.weight": t(g["BatchNorm_0"]["scale"], 0), "g.1.bias": t(g["BatchNorm_0"]["bias"], 0),
        "g.3.weight": t(g["ConvTranspose_0"]["kernel"], 2, 3, 0, 1),
        "g.4.weight": t(g["BatchNorm_1"]["scale"], 0), "g.4.bias": t(g["BatchNorm_1"]["bias"], 0),
        "g.6.weight": t(g["ConvTranspose_1"]["kernel"], 2, 3, 0, 1), "g.6.bias": t(g["ConvTranspose_1"]["bias"], 0),
        "d.0.weight": t(d["Conv_0"]["kernel"], 3, 2, 0, 1), "d.0.bias": t(d["Conv_0"]["bias"], 0),
        "d.2.weight": t(d["Conv_1"]["kernel"], 3, 2, 0, 1),
        "d.3.weight": t(d["BatchNorm_0"]["scale"], 0), "d.3.bias": t(d["BatchNorm_0"]["bias"], 0),
        "d.5.weight": t(d["Dense_0"]["kernel"].reshape(7, 7, 256, 1), 3, 2, 0, 1),
        "d.5.bias": t(d["Dense_0"]["bias"], 0),
    }

  mapped = as_torch(state.g_params, state.d_params)
  theirs = {f"{net}.{k}": v for net in "gd" for k, v in getattr(ref, net).state_dict().items()
            if "running" not in k and "num_batches" not in k}  # parameters (state_dict's tensors share memory)
  assert set(theirs) == set(mapped)  # every parameter, and no other
  with torch.no_grad():
    for name, value in mapped.items():
      theirs[name].copy_(value)
  rng, step = jax.random.key(1), jax.jit(gan_step.train_step)
  data = np.random.default_rng(0).uniform(-1, 1, (3, n, 28, 28, 1)).astype(np.float32)
  for real in data:
    z = np.asarray(gan_step.latents(state, rng, n))
    state, metrics = step(state, {"image": real}, rng)
    d_loss, g_loss = ref.train_step(torch.from_numpy(real.transpose(0, 3, 1, 2).copy()),
                                    torch.from_numpy(z.reshape(n, 100, 1, 1).copy()))
    np.testing.assert_allclose([d_loss, g_loss], [metrics["d_loss"], metrics["g_loss"]], rtol=1e-4)
  ours = as_torch(state.g_params, state.d_params)
  for name, value in ours.items():
    # Three Adam steps of 2e-4 moved each weight by ~3e-4; Adam divides by the gradients' size, which magnifies
    # float32 rounding where a gradient is near zero (up to 2 steps' size where its sign flips), so the bound is
    # on the bulk: a different model or step (a missing bias, another loss, another order) moves the median.
    diff = np.abs(theirs[name].numpy() - value.numpy())
    moved = np.median(np.abs(mapped[name].numpy() - value.numpy()))
    assert np.median(diff) < 0.02 * moved and np.quantile(diff, 0.99) < 0.15 * moved, name


def test_torch_dcgan_refuses_a_workdir_it_cannot_write_before_training(tmp_path):
  # (a run that trained for half an hour must not fail at its end writing summary.json)
  import subprocess
  import sys
  from tests.helpers import REPO
  (tmp_path / "a_file").write_text("")
  result = subprocess.run([sys.executable, "-m", "benchmarks.torch_dcgan", "--steps=1",
                           f"--workdir={tmp_path / 'a_file' / 'run'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write to --workdir="), result.stderr
  assert result.stdout == "" and not (tmp_path / "a_file" / "run").exists()
