"""The jitted train and eval steps; a method only changes how per-example
losses become the batch loss (``ffr_jax.training.methods``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ffr_jax.data.pipeline import normalize
from ffr_jax.evaluation import metrics as metrics_lib
from ffr_jax.mesh import Shardings
from ffr_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of a train step."""

  num_groups: int
  # Batch norm on its running statistics (not updated) while its scale and
  # offset still train: FFR stage 2's option.
  freeze_bn: bool = False


# jax compiles once per function object: the jitted functions that the runs
# of one in-process sweep build alike are kept here, so later runs reuse them.
_SHARED: dict[Hashable, Any] = {}
_MAX_SHARED = 32


def shared(make: Callable, *args, key: Hashable = None) -> Any:
  """``make(*args)``, or what an earlier call with this ``make`` and ``key``
  (default: ``args``) returned; ``key`` must tell apart any two ``args`` for
  which ``make`` builds different functions."""
  key = (make, args if key is None else key)
  if key not in _SHARED:
    if len(_SHARED) >= _MAX_SHARED:
      del _SHARED[next(iter(_SHARED))]  # the oldest
    _SHARED[key] = make(*args)
  return _SHARED[key]


LossFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def make_train_step(model, tx: optax.GradientTransformation, loss_fn: LossFn,
                    cfg: StepConfig, shardings: Shardings, state: TrainState):
  """Compiles ``step(state, batch) -> (state, metrics)``, the state donated;
  ``state`` gives the shardings, metrics are device scalars."""

  def step(state: TrainState, batch: dict):
    # The step's own key: a function of (seed, step) only, so resuming
    # mid-stage reproduces it. Passed to the model for stochastic layers.
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    x = normalize(batch["image"])
    labels, groups = batch["label"], batch["group"]

    def loss_of(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      if cfg.freeze_bn:
        out = model.apply(variables, x, train=False, rngs={"dropout": key})
        new_stats = state.batch_stats
      else:
        out, updates = model.apply(variables, x, train=True,
                                   mutable=["batch_stats"],
                                   rngs={"dropout": key})
        new_stats = updates["batch_stats"]
      logits = out.logits
      per_example = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels)
      loss, new_q = loss_fn(per_example, groups, state.group_weights)
      return loss, (logits, new_stats, new_q)

    (loss, (logits, new_stats, new_q)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=new_stats, opt_state=opt_state,
                              group_weights=new_q)
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    metrics = {"loss": loss, "accuracy": acc,
               "finite": jnp.isfinite(loss).astype(jnp.float32)}
    return new_state, metrics

  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(
      step,
      in_shardings=(state_sharding, shardings.batch),
      out_shardings=(state_sharding, shardings.replicated),
      donate_argnums=(0,))


def make_eval_step(model, num_groups: int, shardings: Shardings,
                   with_embeddings: bool = False):
  """Compiles ``eval(variables, batch) -> GroupCounts`` (and embeddings);
  padded rows (``batch['mask']`` False) count nowhere."""

  def step(variables, batch):
    out = model.apply(variables, normalize(batch["image"]), train=False)
    pred = jnp.argmax(out.logits, -1)
    counts = metrics_lib.group_counts(pred, batch["label"], batch["group"],
                                      batch["mask"], num_groups)
    if with_embeddings:
      return counts, out.embedding.astype(jnp.float32)
    return counts

  out_shardings = shardings.replicated
  if with_embeddings:
    out_shardings = (shardings.replicated, shardings.batch)
  return jax.jit(step, in_shardings=(shardings.replicated, shardings.batch),
                 out_shardings=out_shardings)
