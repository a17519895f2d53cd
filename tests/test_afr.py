"""AFR: the split, the weights, the head refit."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ffr_jax.training import afr
from ffr_jax.training import spec as plan_lib
from test_plan import _config, _data, _plans


def test_afr_trains_erm_on_part_of_the_data_and_keeps_its_last_epoch(tmp_path):
  spec = plan_lib.plan_run(_config(mode="none", method="afr"), _data(tmp_path))
  (plan,) = spec.stages
  assert (plan.method, plan.selection, len(plan.examples)) == ("erm", "last", 7)
  assert spec.after["heldout"] == 0.2
  other = plan_lib.plan_run(_config(mode="none", method="afr",
                                    **{"afr.lambda_grid": (1.0,)}), _data(tmp_path))
  assert other.stages == spec.stages and other.fingerprint != spec.fingerprint



@pytest.mark.parametrize("override, message", [
    ({"afr.heldout": 1.0}, "afr.heldout"), ({"afr.gamma_grid": ()}, "gamma_grid")])
def test_afr_settings_are_checked_before_any_work(override, message):
  with pytest.raises(ValueError, match=message):
    _plans(_config(mode="none", method="afr", **override))


def test_the_split_is_a_seeded_partition():
  erm, held = afr.split(10, 0.2, seed=21)
  assert sorted([*erm, *held]) == list(range(10)) and len(held) == 2
  assert afr.split(10, 0.2, seed=21)[1].tolist() == held.tolist()


def test_weights_favour_examples_the_erm_model_finds_hard():
  p = np.array([0.9, 0.1, 0.5, 0.5])
  y = np.array([0, 0, 1, 1])
  w = afr.example_weights(p, y, gamma=2.0)
  assert w.sum() == pytest.approx(1.0) and w[1] > w[0]
  # Without reweighting (gamma 0) each example counts 1 / its class's count.
  w0 = afr.example_weights(p, np.array([0, 0, 0, 1]), gamma=0.0)
  np.testing.assert_allclose(w0 / w0[-1], [1 / 3, 1 / 3, 1 / 3, 1.0])


def test_the_refit_pulls_toward_the_erm_head_by_lambda():
  rng = np.random.default_rng(0)
  emb = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, 32))
  w = jnp.full((2, 32), 1 / 32, jnp.float32)
  k0, b0 = jnp.zeros((4, 2)), jnp.zeros(2)
  kernels, _ = afr.fit_heads(emb, y, w, jnp.asarray([0.0, 5.0]), k0, b0, 0.1, 50)
  free, pulled = (float(jnp.abs(k).sum()) for k in kernels)
  assert free > 5 * pulled > 0  # lambda holds the head near the ERM head


def test_afr_refuses_non_finite_settings():
  with pytest.raises(ValueError, match="finite"):
    _plans(_config(mode="none", method="afr", **{"afr.lr": float("inf")}))
