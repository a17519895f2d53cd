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
  """Everything a training stage needs to resume exactly.

  Attributes:
    step: optimizer steps taken in this stage.
    group_weights: GroupDRO's q over the stage's groups (uniform and unused
      for other methods). Part of the state so it is checkpointed.
    rng: raw data of the stage's base PRNG key (uint32); the step folds in
      ``step``, so the randomness of a step does not depend on where a run
      was resumed.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  group_weights: jax.Array
  rng: jax.Array

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

  The authors use ``torch.optim.Adam(weight_decay=1e-5)``, which is coupled L2
  (not AdamW): the decay term goes through Adam's normalisation.
  """
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def init_variables(model, image_size: int, seed: int) -> dict:
  """Fresh ``{'params', 'batch_stats'}`` of ``model`` (call under jit/eval_shape)."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init(jax.random.key(seed), x, train=False)
  return {"params": variables["params"],
          "batch_stats": variables.get("batch_stats", {})}


def create_state(model, tx: optax.GradientTransformation, image_size: int,
                 num_groups: int, seed: int, shardings: Shardings,
                 variables: dict | None = None) -> TrainState:
  """Creates the state directly on the mesh, replicated.

  The abstract state comes from ``jax.eval_shape`` so no full-size host copy is
  ever made; ``jax.jit(..., out_shardings=...)`` then materialises it in place.

  Args:
    model: a flax linen module taking ``(x, train)``.
    image_size: input side, for initialisation shapes.
    num_groups: size of the GroupDRO weight vector.
    seed: initialisation and step randomness seed.
    variables: start from these ``{'params', 'batch_stats'}`` (pretrained
      weights or a previous stage) instead of a fresh initialisation.
  """

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

  abstract = jax.eval_shape(build, variables)
  out = jax.tree.map(lambda _: shardings.replicated, abstract)
  return jax.jit(build, out_shardings=out)(variables)


def abstract_like(state: TrainState) -> TrainState:
  """Shape/dtype/sharding tree of ``state`` for Orbax restores."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
