"""tlgan.shuffle (the data order without TensorFlow) equals TF's RandomIndexShuffle, the oracle, bit for bit."""

import numpy as np
import pytest

from tlgan import shuffle

tf = pytest.importorskip("tensorflow")


@pytest.mark.parametrize("n", [1, 2, 3, 100, 1797, 65536, 65537, 60000, 10**6, 2**33 + 5])
@pytest.mark.parametrize("rounds", [4, 8])
def test_index_shuffle_equals_tensorflow(n, rounds):
  rng = np.random.default_rng(n)
  idx = np.unique(np.concatenate([np.arange(min(n, 50)), rng.integers(0, n, 200)]))
  # keys as the data order uses them (seed, epoch, shard), negative and beyond 32 bits too
  for key in [(0, 0, 0), (1, 2, 3), (-5, 7, 2**40 + 3), (2**31, 2**32 - 1, 12345)]:
    ref = tf.raw_ops.RandomIndexShuffle(index=tf.constant(idx, tf.int64), seed=tf.constant(key, tf.int64),
                                        max_index=tf.constant(n - 1, tf.int64), rounds=rounds).numpy()
    np.testing.assert_array_equal(shuffle.index_shuffle(idx, key, n - 1, rounds), ref)


def test_a_whole_epoch_is_a_permutation():
  for n in (1, 7, 1797):
    out = shuffle.index_shuffle(np.arange(n), (3, 1, 4), n - 1)
    assert sorted(out) == list(range(n))
  assert not np.array_equal(shuffle.index_shuffle(np.arange(1797), (3, 1, 4), 1796), np.arange(1797))


@pytest.mark.parametrize("step", [0, 5, 937, 10**6])
@pytest.mark.parametrize("batch,n,seed,stream", [(64, 60000, 0, 0), (32, 100, 7, 3), (300, 128, 42, 1)])
def test_stream_indices_equal_the_tf_pipeline(step, batch, n, seed, stream):
  from tlgan import data
  ref = data.stream_indices(tf.constant(step, tf.int64), batch, n, seed, stream).numpy()
  np.testing.assert_array_equal(shuffle.stream_indices(step, batch, n, seed, stream), ref)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="rounds"):
    shuffle.index_shuffle([0], (0, 0, 0), 10, rounds=5)
  with pytest.raises(ValueError, match=r"\[0, 10\]"):
    shuffle.index_shuffle([11], (0, 0, 0), 10)
