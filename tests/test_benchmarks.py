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
