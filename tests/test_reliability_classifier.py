"""kill -9 at random moments, then resume: the classifier ends bit-identical too (its own file, so that the
two pytest workers share the kill tests)."""

import os

import jax
import numpy as np
import pytest

from tests.helpers import kill_then_finish, start


@pytest.mark.slow
def test_classifier_kill9_at_random_moments_then_resume_is_exact(tmp_path):
  from tlgan import pretrained
  args = ["--config=configs/transfer.py:smoke", "--config.data.name=digits", "--config.num_steps=300",
          "--config.checkpoint_every=50", "--config.log_every=50", "--config.eval_every_epochs=1000"]
  reference_dir, workdir = str(tmp_path / "reference"), str(tmp_path / "run")
  assert start(reference_dir, args).wait(timeout=300) == 0
  kill_then_finish(workdir, args, 300, seed=1)
  a, _ = pretrained.load(os.path.join(workdir, "model.msgpack"))
  b, _ = pretrained.load(os.path.join(reference_dir, "model.msgpack"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # weights and BatchNorm statistics, bit for bit
