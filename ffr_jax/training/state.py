"""The train state, created already sharded (replicated) on the mesh."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ffr_jax.mesh import Shardings


@flax.struct.dataclass
class TrainState:
  """Everything a training stage needs to resume exactly."""

  step: jax.Array  # optimizer steps taken in this stage
  params: Any
  batch_stats: Any
  opt_state: Any
  group_weights: jax.Array  # GroupDRO's q (uniform, unused by other methods)
  # Raw data of the stage's base key; each step folds in ``step``, so its
  # randomness does not depend on where a run was resumed.
  rng: jax.Array

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay (not AdamW), as the authors'
  ``torch.optim.Adam(weight_decay=1e-5)``."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def init_variables(model, image_size: int, seed: int) -> dict:
  """Fresh ``{'params', 'batch_stats'}`` of ``model`` (call under jit/eval_shape)."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init(jax.random.key(seed), x, train=False)
  return {"params": variables["params"],
          "batch_stats": variables.get("batch_stats", {})}


# Jitted with the settings static: runs alike share the compiled init.
init_on_device = jax.jit(init_variables, static_argnums=(0, 1, 2))


def state_init(model, tx: optax.GradientTransformation, image_size: int,
               num_groups: int, seed: int, shardings: Shardings):
  """Jitted ``init(variables | None) -> TrainState``: the state created
  directly on the mesh, replicated, never as a full host copy; from
  ``variables`` (pretrained or a previous stage) if given."""

  def build(variables):
    if variables is None:
      variables = init_variables(model, image_size, seed)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        group_weights=jnp.full((num_groups,), 1.0 / num_groups, jnp.float32),
        rng=jax.random.key_data(jax.random.key(seed)),
    )

  return jax.jit(build, out_shardings=shardings.replicated)


def create_state(model, tx: optax.GradientTransformation, image_size: int,
                 num_groups: int, seed: int, shardings: Shardings,
                 variables: dict | None = None) -> TrainState:
  return state_init(model, tx, image_size, num_groups, seed,
                    shardings)(variables)


def abstract_like(state: TrainState) -> TrainState:
  """Shape/dtype/sharding tree of ``state`` for Orbax restores."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
