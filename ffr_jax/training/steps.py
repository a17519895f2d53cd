"""The jitted train and eval steps.

One train step for every method: the method only changes how per-example
losses become the batch loss (``ffr_jax.training.methods``). The step is
compiled once per stage with explicit in/out shardings, the state donated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ffr_jax.data.images import IMAGENET_MEAN, IMAGENET_STD
from ffr_jax.evaluation import metrics as metrics_lib
from ffr_jax.training.mesh import Shardings
from ffr_jax.training.state import TrainState


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 NHWC -> ImageNet-normalised floats, on device.

  The input pipeline ships uint8 (4x less host-to-device traffic than float32)
  and the normalisation fuses into the first convolution here.
  """
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def model_outputs(out: Any) -> tuple[jax.Array, jax.Array]:
  """(logits, embedding) from a model's output (dict or dataclass)."""
  if isinstance(out, dict):
    return out["logits"], out["embedding"]
  return out.logits, out.embedding


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of a train step.

  Attributes:
    num_groups: groups of the stage's scheme (GroupDRO weight size).
    freeze_bn: run batch norm on its running statistics (not updated) while
      its scale and offset still train; FFR stage 2's option.
    flip: random horizontal flips on device.
  """

  num_groups: int
  freeze_bn: bool = False
  flip: bool = False


LossFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _flip(images: jax.Array, key: jax.Array) -> jax.Array:
  do = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(do, images[:, :, ::-1, :], images)


def make_train_step(model, tx: optax.GradientTransformation, loss_fn: LossFn,
                    cfg: StepConfig, shardings: Shardings, state: TrainState):
  """Compiles ``step(state, batch) -> (state, metrics)``.

  Args:
    model: the flax module.
    tx: the optimizer.
    loss_fn: ``(per_example_loss, group, group_weights) -> (loss,
      new_group_weights)`` of the method.
    cfg: static settings.
    shardings: mesh shardings; the batch is sharded on 'data', the state
      replicated.
    state: an example state, for its shardings.

  Returns:
    The jitted step. Its metrics are device scalars (loss, accuracy, whether
    the loss was finite); the caller fetches them only when it logs.
  """

  def step(state: TrainState, batch: dict):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images = batch["image"]
    if cfg.flip:
      images = _flip(images, key)
    x = normalize(images)
    labels, groups = batch["label"], batch["group"]

    def loss_of(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      if cfg.freeze_bn:
        out = model.apply(variables, x, train=False)
        new_stats = state.batch_stats
      else:
        out, updates = model.apply(variables, x, train=True,
                                   mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
      logits, _ = model_outputs(out)
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
  """Compiles ``eval(variables, batch) -> GroupCounts`` (and embeddings).

  Padded rows (``batch['mask']`` False) count nowhere, so metrics are exact.
  """

  def step(variables, batch):
    out = model.apply(variables, normalize(batch["image"]), train=False)
    logits, emb = model_outputs(out)
    pred = jnp.argmax(logits, -1)
    counts = metrics_lib.group_counts(pred, batch["label"], batch["group"],
                                      batch["mask"], num_groups)
    if with_embeddings:
      return counts, emb.astype(jnp.float32), logits.astype(jnp.float32)
    return counts

  out_shardings = shardings.replicated
  if with_embeddings:
    out_shardings = (shardings.replicated, shardings.batch, shardings.batch)
  return jax.jit(step, in_shardings=(shardings.replicated, shardings.batch),
                 out_shardings=out_shardings)
