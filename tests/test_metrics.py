"""Group metrics: masks, known answers, empty groups, accumulation, jit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffr_jax.evaluation import metrics

NAMES = ["y=0,b=0", "y=0,b=1", "y=1,b=0", "y=1,b=1"]


def _batch():
  # group 0: 2/3 correct; group 1: 1/1; group 2: 0/2; group 3: none.
  # The last two rows are padding (mask False) and would change every group.
  pred = jnp.array([0, 0, 1, 0, 0, 0, 1, 1])
  label = jnp.array([0, 0, 0, 0, 1, 1, 0, 1])
  group = jnp.array([0, 0, 0, 1, 2, 2, 2, 3])
  mask = jnp.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
  return pred, label, group, mask


def test_known_counts_and_mask_ignored():
  c = metrics.group_counts(*_batch(), num_groups=4)
  np.testing.assert_array_equal(c.correct, [2, 1, 0, 0])
  np.testing.assert_array_equal(c.total, [3, 1, 2, 0])
  assert c.correct.dtype == jnp.float32


def test_no_mask_counts_every_row():
  pred, label, group, _ = _batch()
  c = metrics.group_counts(pred, label, group, None, 4)
  np.testing.assert_array_equal(c.total, [3, 1, 3, 1])
  np.testing.assert_array_equal(c.correct, [2, 1, 0, 1])


def test_out_of_range_group_ids_count_nowhere():
  c = metrics.group_counts(jnp.array([0, 1]), jnp.array([0, 1]),
                           jnp.array([-1, 5]), None, 4)
  np.testing.assert_array_equal(c.total, [0, 0, 0, 0])


def test_summarize_known_answers_and_empty_group():
  s = metrics.summarize(metrics.group_counts(*_batch(), num_groups=4), NAMES)
  assert s["group_acc"] == {
      "y=0,b=0": pytest.approx(2 / 3), "y=0,b=1": 1.0, "y=1,b=0": 0.0,
      "y=1,b=1": None}
  assert s["worst_group_acc"] == 0.0
  assert s["balanced_acc"] == pytest.approx((2 / 3 + 1 + 0) / 3)
  assert s["acc"] == pytest.approx(3 / 6)
  assert s["group_count"] == {"y=0,b=0": 3, "y=0,b=1": 1, "y=1,b=0": 2,
                              "y=1,b=1": 0}


def test_empty_group_is_not_counted_as_zero_or_one():
  # Only group 1 has examples, all correct: worst = balanced = 1, not 0.
  c = metrics.GroupCounts(correct=jnp.array([0., 4., 0.]),
                          total=jnp.array([0., 4., 0.]))
  s = metrics.summarize(c, ["a", "b", "c"])
  assert s["worst_group_acc"] == 1.0 and s["balanced_acc"] == 1.0
  assert s["group_acc"]["a"] is None and s["group_acc"]["c"] is None
  assert float(metrics.worst_group_accuracy(c)) == 1.0
  assert float(metrics.balanced_accuracy(c)) == 1.0
  assert np.isnan(np.asarray(metrics.group_accuracy(c))[[0, 2]]).all()


def test_no_examples_raises_and_device_gives_nan():
  c = metrics.GroupCounts.zeros(2)
  with pytest.raises(ValueError, match="no group has any example"):
    metrics.summarize(c, ["a", "b"])
  assert math.isnan(float(metrics.worst_group_accuracy(c)))
  assert math.isnan(float(metrics.balanced_accuracy(c)))
  assert math.isnan(float(metrics.overall_accuracy(c)))


def test_wrong_number_of_names_raises():
  with pytest.raises(ValueError, match="3 group names for 4 groups"):
    metrics.summarize(metrics.group_counts(*_batch(), num_groups=4), NAMES[:3])


def test_accumulation_over_batches_equals_one_batch():
  rng = np.random.default_rng(0)
  n, g = 103, 5
  pred = rng.integers(0, 3, n)
  label = rng.integers(0, 3, n)
  group = rng.integers(0, g, n)
  mask = rng.random(n) < 0.8
  whole = metrics.group_counts(pred, label, group, mask, g)
  acc = metrics.GroupCounts.zeros(g)
  for s in range(0, n, 16):
    sl = slice(s, s + 16)
    acc = acc + metrics.group_counts(pred[sl], label[sl], group[sl], mask[sl], g)
  np.testing.assert_array_equal(acc.correct, whole.correct)
  np.testing.assert_array_equal(acc.total, whole.total)
  names = [str(i) for i in range(g)]
  assert metrics.summarize(acc, names) == metrics.summarize(whole, names)


def test_jit_matches_eager():
  @jax.jit
  def step(counts, pred, label, group, mask):
    new = counts + metrics.group_counts(pred, label, group, mask, 4)
    return (new, metrics.worst_group_accuracy(new),
            metrics.balanced_accuracy(new))

  batch = _batch()
  counts, worst, balanced = step(metrics.GroupCounts.zeros(4), *batch)
  eager = metrics.group_counts(*batch, num_groups=4)
  np.testing.assert_array_equal(counts.total, eager.total)
  np.testing.assert_array_equal(counts.correct, eager.correct)
  s = metrics.summarize(eager, NAMES)
  assert float(worst) == pytest.approx(s["worst_group_acc"])
  assert float(balanced) == pytest.approx(s["balanced_acc"])
