"""DFR: recovers the core feature from balanced val data, seeded, strict."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ffr_jax.data.types import REAL, SYNTHETIC, Examples, GroupScheme
from ffr_jax.training import dfr
from ffr_jax.training import last_layer
from ffr_jax.training.stage import StageInterrupted

SPUCO_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
BINARY_GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1))
# SpuCo Animals' 8 groups: birds (classes 0, 1) on backgrounds 0/1, dogs on 2/3.
SPUCO_GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3))


def _embeddings(rng, groups, counts, num_classes, num_bias, core_noise=0.8):
  """Toy embeddings: [core one-hot(y) + noise | spurious one-hot(b) | noise].

  The spurious block is almost noiseless, so on data where b follows y it is
  the easiest feature; the core block predicts y in every group.
  """
  xs, ys, gs = [], [], []
  for g, ((y, b), n) in enumerate(zip(groups, counts)):
    core = 2 * np.eye(num_classes)[y] - 1
    core = core + core_noise * rng.standard_normal((n, num_classes))
    spur = 2 * np.eye(num_bias)[b] - 1 + 0.05 * rng.standard_normal(
        (n, num_bias))
    xs.append(np.column_stack([core, spur, rng.standard_normal((n, 6))]))
    ys += [y] * n
    gs += [g] * n
  return np.concatenate(xs), np.array(ys), np.array(gs)


def _worst(pred, y, g):
  return min(np.mean(pred[g == k] == y[g == k]) for k in np.unique(g))


def _biased_splits(groups, num_classes, num_bias, seed=0):
  """Train 1000 vs 5 per majority/minority group, val 100 vs 10, test even."""
  rng = np.random.default_rng(seed)
  major = [y % 2 == b % 2 for y, b in groups]
  train = _embeddings(rng, groups, [1000 if m else 5 for m in major],
                      num_classes, num_bias)
  val = _embeddings(rng, groups, [100 if m else 10 for m in major],
                    num_classes, num_bias)
  test = _embeddings(rng, groups, [300] * len(groups), num_classes, num_bias)
  return train, val, test


@pytest.mark.parametrize("groups,num_classes,num_bias", [
    (BINARY_GROUPS, 2, 2), (SPUCO_GROUPS, 4, 4)])
def test_dfr_beats_biased_logistic_regression(groups, num_classes, num_bias):
  (xt, yt, _), (xv, yv, gv), (xs, ys, gs) = _biased_splits(
      groups, num_classes, num_bias)
  result = dfr.fit_dfr(xt, xv, yv, gv, len(groups), SPUCO_GRID, seed=0)

  plain = LogisticRegression(max_iter=1000).fit(xt, yt)
  plain_worst = _worst(plain.predict(xs), ys, gs)
  dfr_worst = _worst(dfr.predict(result, xs), ys, gs)
  assert plain_worst < 0.7
  assert dfr_worst > 0.85
  assert dfr_worst > plain_worst + 0.25

  assert list(result.c_scores) == list(SPUCO_GRID)
  assert result.c_scores[result.best_c] == max(result.c_scores.values())
  rows = 1 if num_classes == 2 else num_classes
  assert result.coef.shape == (rows, xt.shape[1])
  assert result.intercept.shape == (rows,)
  np.testing.assert_array_equal(result.classes, np.arange(num_classes))
  # Features are standardised with training statistics.
  np.testing.assert_allclose(result.mean, xt.mean(axis=0))
  np.testing.assert_allclose(result.std, xt.std(axis=0))
  assert dfr.logits(result, xs).shape == (len(xs), rows)


def test_deterministic_under_seed():
  (xt, _, _), (xv, yv, gv), _ = _biased_splits(BINARY_GROUPS, 2, 2)
  a = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=5, seed=3)
  b = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=5, seed=3)
  c = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=5, seed=4)
  assert a.best_c == b.best_c and a.c_scores == b.c_scores
  np.testing.assert_array_equal(a.coef, b.coef)
  np.testing.assert_array_equal(a.intercept, b.intercept)
  assert not np.array_equal(a.coef, c.coef)


def test_empty_group_error_names_the_group():
  (xt, _, _), (xv, yv, gv), _ = _biased_splits(BINARY_GROUPS, 2, 2)
  keep = gv != 2
  names = ["y=0,b=0", "y=0,b=1", "y=1,b=0", "y=1,b=1"]
  with pytest.raises(ValueError, match=r"'y=1,b=0' \(id 2\) has no examples"):
    dfr.fit_dfr(xt, xv[keep], yv[keep], gv[keep], 4, SPUCO_GRID,
                group_names=names)
  with pytest.raises(ValueError, match="group 2"):
    dfr.fit_dfr(xt, xv[keep], yv[keep], gv[keep], 4, SPUCO_GRID)


def test_single_example_group_and_bad_shapes_raise():
  (xt, _, _), (xv, yv, gv), _ = _biased_splits(BINARY_GROUPS, 2, 2)
  keep = (gv != 1) | (np.cumsum(gv == 1) == 1)
  with pytest.raises(ValueError, match="has 1 example"):
    dfr.fit_dfr(xt, xv[keep], yv[keep], gv[keep], 4, SPUCO_GRID)
  with pytest.raises(ValueError, match="must be"):
    dfr.fit_dfr(xt[:, :3], xv, yv, gv, 4, SPUCO_GRID)


def test_constant_training_feature_is_only_centred():
  mean, std = dfr.standardizer(np.array([[1.0, 2.0], [1.0, 4.0]]))
  np.testing.assert_allclose(mean, [1.0, 3.0])
  np.testing.assert_allclose(std, [1.0, 1.0])


def test_tuning_standardises_with_the_balanced_fit_half_not_train():
  # Canonical dfr_on_validation_tune fits its StandardScaler on the balanced
  # fit half of val, so the training embeddings cannot change which C wins.
  # Scaling them by 100 would shrink train-standardised val features 100-fold
  # and let the L1 penalty zero every weight at each C.
  (xt, _, _), (xv, yv, gv), _ = _biased_splits(BINARY_GROUPS, 2, 2)
  a = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=2, seed=1)
  b = dfr.fit_dfr(100 * xt + 7, xv, yv, gv, 4, SPUCO_GRID, num_refits=2,
                  seed=1)
  assert a.c_scores == b.c_scores and a.best_c == b.best_c
  assert max(a.c_scores.values()) > 0.85
  # The final refits still standardise with the training statistics.
  np.testing.assert_allclose(b.mean, 100 * xt.mean(axis=0) + 7)
  np.testing.assert_allclose(b.std, 100 * xt.std(axis=0))


def test_heldout_score_is_the_best_c_score_on_the_held_out_half():
  (xt, _, _), (xv, yv, gv), _ = _biased_splits(BINARY_GROUPS, 2, 2)
  result = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=2, seed=0)
  assert result.heldout_worst_group_acc == result.c_scores[result.best_c]
  assert result.heldout_worst_group_acc == max(result.c_scores.values())


def test_final_standardisation_uses_the_real_training_rows_only():
  train = Examples.from_lists(["r0", "s0", "r1", "s1"], [0, 0, 1, 1],
                              [0, 1, 1, 0],
                              source=[REAL, SYNTHETIC, REAL, SYNTHETIC])
  real = last_layer.real_rows(train)
  assert len(real) == 2 and (real.source == REAL).all()
  with pytest.raises(ValueError, match="no real examples"):
    last_layer.real_rows(train.take(np.array([1, 3])))


def _stop_after(n, calls):
  """A should_stop that turns True at its n-th call, recording the steps."""
  return lambda step: calls.append(step) or len(calls) >= n


@pytest.mark.parametrize("n", [3, len(SPUCO_GRID) + 2])  # tuning, refits
def test_a_stop_request_ends_dfr_after_the_current_fit(n):
  (xt, _, _), (xv, yv, gv), _ = _biased_splits(BINARY_GROUPS, 2, 2)
  calls = []
  with pytest.raises(StageInterrupted) as stopped:
    dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=5, seed=0,
                should_stop=_stop_after(n, calls))
  assert calls == list(range(1, n + 1))
  assert (stopped.value.stage, stopped.value.step,
          stopped.value.total_steps) == ("dfr", n, len(SPUCO_GRID) + 5)
  # Asked and never stopping changes nothing.
  a = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=5, seed=0,
                  should_stop=lambda step: False)
  b = dfr.fit_dfr(xt, xv, yv, gv, 4, SPUCO_GRID, num_refits=5, seed=0)
  np.testing.assert_array_equal(a.coef, b.coef)


def test_a_stop_request_ends_the_embedding_pass_after_the_current_batch(
    tmp_path):
  from ffr_jax import models  # pylint: disable=g-import-not-at-top
  from ffr_jax.mesh import make_shardings  # pylint: disable=g-import-not-at-top
  from ffr_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from ffr_jax.training.spec import LoopOptions  # pylint: disable=g-import-not-at-top
  from tests import test_stage_loop as loop  # pylint: disable=g-import-not-at-top
  examples = loop._examples(str(tmp_path), 6, "val")  # 24 images  # pylint: disable=protected-access
  model = models.create_model("tiny", 2)
  variables = state_lib.init_variables(model, 16, 0)
  calls = []
  with pytest.raises(StageInterrupted) as stopped:
    last_layer.embed(model, variables, examples, GroupScheme(loop.SPEC),
                     LoopOptions(eval_batch_size=8), 16, make_shardings(),
                     should_stop=_stop_after(2, calls))
  assert calls == [1, 2]
  assert (stopped.value.step, stopped.value.total_steps) == (2, 3)


@pytest.mark.parametrize("groups,num_classes,num_bias", [
    (BINARY_GROUPS, 2, 2), (SPUCO_GROUPS, 4, 4)])
def test_the_saved_head_predicts_what_dfr_predicts(groups, num_classes,
                                                   num_bias):
  # The head analyses use takes raw embeddings (DFR fits on L2-normalised ones).
  (xt, _, _), (xv, yv, gv), (xs, _, _) = _biased_splits(
      groups, num_classes, num_bias)
  scale = np.random.default_rng(1).uniform(0.5, 5.0, (len(xs), 1))
  l2 = last_layer.l2_normalize
  result = dfr.fit_dfr(l2(xt), l2(xv), yv, gv, len(groups), SPUCO_GRID, seed=0)
  head = last_layer.dfr_head(result, num_classes)
  pred = np.argmax(last_layer.head_logits(head, (xs * scale).astype(np.float32)),
                   axis=1)
  np.testing.assert_array_equal(pred, dfr.predict(result, l2(xs)))
