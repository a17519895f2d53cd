"""The train step's options: frozen batch-norm statistics, method losses."""

from __future__ import annotations

import jax
import numpy as np
import optax

from ffr_jax import config as config_lib
from ffr_jax import models
from ffr_jax.data.pipeline import normalize
from ffr_jax.mesh import make_shardings
from ffr_jax.training import state as state_lib
from ffr_jax.training import steps as steps_lib
from ffr_jax.training.methods import get_method


def _setup(freeze_bn: bool):
  shardings = make_shardings()
  model = models.create_model("tiny", 2)
  tx = state_lib.make_optimizer(1e-2, 0.0)
  state = state_lib.create_state(model, tx, 16, 4, 0, shardings)
  erm = get_method("erm")
  loss = erm.make_loss(erm.settings(config_lib.base_config()), np.ones(4))
  step = steps_lib.make_train_step(
      model, tx, loss, steps_lib.StepConfig(num_groups=4, freeze_bn=freeze_bn),
      shardings, state)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 2, 8).astype(np.int32),
           "group": rng.integers(0, 4, 8).astype(np.int32)}
  return state, step, batch, model


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def test_freeze_bn_keeps_statistics_but_trains_scale_and_offset():
  state, step, batch, _ = _setup(freeze_bn=True)
  before = _copy(state.variables())
  state, _ = step(state, batch)
  after = _copy(state.variables())
  jax.tree.map(np.testing.assert_array_equal, before["batch_stats"],
               after["batch_stats"])
  bn_before, bn_after = before["params"]["bn1"], after["params"]["bn1"]
  assert np.abs(bn_after["scale"] - bn_before["scale"]).max() > 0
  assert np.abs(bn_after["bias"] - bn_before["bias"]).max() > 0


def _mean_loss(model, variables, batch, train: bool) -> float:
  apply = lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"])[0]
  out = apply(variables, normalize(batch["image"]))
  return float(optax.softmax_cross_entropy_with_integer_labels(
      out.logits, batch["label"]).mean())


def test_freeze_bn_normalises_with_the_running_statistics():
  state, step, batch, model = _setup(freeze_bn=True)
  # Running statistics far from any batch's: normalising with the batch's
  # statistics instead gives a clearly different loss.
  far = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 3.0 if path[-1].key == "mean" else x * 50.0,
      state.batch_stats)
  state = state.replace(batch_stats=far)
  variables = _copy(state.variables())
  eval_loss = _mean_loss(model, variables, batch, train=False)
  batch_stats_loss = _mean_loss(model, variables, batch, train=True)
  assert abs(eval_loss - batch_stats_loss) > 1e-2
  _, metrics = step(state, batch)  # the loss is of the forward before the update
  np.testing.assert_allclose(float(metrics["loss"]), eval_loss, rtol=1e-5)


def test_unfrozen_bn_updates_statistics():
  state, step, batch, _ = _setup(freeze_bn=False)
  before = _copy(state.batch_stats)
  state, metrics = step(state, batch)
  after = _copy(state.batch_stats)
  diff = jax.tree.map(lambda a, b: np.abs(a - b).max(), before, after)
  assert max(jax.tree.leaves(diff)) > 0
  assert int(state.step) == 1 and bool(metrics["finite"])
  # ERM leaves the GroupDRO weights alone.
  np.testing.assert_allclose(np.asarray(state.group_weights), 0.25)
