"""Group distributionally robust optimisation (Sagawa et al., 2020).

The canonical online GroupDRO (``LossComputer.compute_robust_loss`` in
github.com/kohpangwei/group_DRO), step by step (docs/reference.md, "Methods"):

1. ``L_g = sum of the losses of group g in the batch / max(count_g, 1)``, so a
   group absent from the batch has ``L_g = 0``;
2. ``A_g = L_g + C / sqrt(n_g)``, ``n_g`` the training-set size of group g;
3. ``q <- q * exp(eta * A_g)``, then ``q <- q / sum(q)``;
4. ``loss = sum_g q_g L_g`` with the *updated* q, which is not differentiated.

``q`` is train state (checkpointed). Under ``jit`` with a sharded batch the
group sums are global, so every device sees the same q.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class GroupDROOutput:
  """What one GroupDRO step returns."""

  loss: jax.Array  # sum_g q_g L_g with the updated q
  weights: jax.Array  # float32[G], the updated q
  group_losses: jax.Array  # float32[G], L_g (0 for groups absent from the batch)
  group_counts: jax.Array  # float32[G], examples of each group in the batch


def init_weights(num_groups: int) -> jax.Array:
  """Uniform group weights, float32[num_groups]."""
  if num_groups < 1:
    raise ValueError(f"GroupDRO needs at least one group, got {num_groups}.")
  return jnp.full((num_groups,), 1.0 / num_groups, jnp.float32)


def group_mean_losses(
    per_example_loss: jax.Array,
    group: jax.Array,
    mask: jax.Array | None,
    num_groups: int,
) -> tuple[jax.Array, jax.Array]:
  """``(L, count)``, float32[G] each, ``L_g = sum / max(count_g, 1)``.

  Group ids outside ``[0, num_groups)`` and False ``mask`` rows count nowhere.
  """
  onehot = jax.nn.one_hot(group, num_groups, dtype=jnp.float32)
  if mask is not None:
    onehot = onehot * mask.astype(jnp.float32)[:, None]
  count = jnp.sum(onehot, axis=0)
  # where() rather than a product so a NaN/inf loss on a padding row cannot
  # leak into the sums (0 * inf is NaN).
  loss = jnp.where(onehot > 0, per_example_loss.astype(jnp.float32)[:, None],
                   0.0)
  return jnp.sum(loss, axis=0) / jnp.maximum(count, 1.0), count


def size_adjustments(group_sizes: jax.Array | None,
                     size_adjustment: float | jax.Array,
                     num_groups: int) -> jax.Array:
  """``C / sqrt(n_g)`` per group; 0 where ``n_g = 0`` (never in a batch)."""
  if group_sizes is None:
    return jnp.zeros((num_groups,), jnp.float32)
  n = jnp.asarray(group_sizes, jnp.float32)
  return jnp.where(n > 0, size_adjustment / jnp.sqrt(jnp.maximum(n, 1.0)), 0.0)


def update_weights(q: jax.Array, adjusted_losses: jax.Array,
                   eta: float | jax.Array) -> jax.Array:
  """``q * exp(eta * A) / sum(...)``; the exponent is shifted by its maximum
  (cancelled by the normalisation) so a large loss cannot overflow."""
  step = eta * adjusted_losses
  q = q * jnp.exp(step - jnp.max(step))
  return q / jnp.sum(q)


def groupdro_loss(
    per_example_loss: jax.Array,
    group: jax.Array,
    mask: jax.Array | None,
    q: jax.Array,
    eta: float | jax.Array = 0.01,
    size_adjustment: float | jax.Array = 0.0,
    group_sizes: jax.Array | None = None,
) -> GroupDROOutput:
  """One canonical GroupDRO step: ``group_losses @ q_new`` with the unadjusted
  ``L_g`` (Sagawa's code aliases it in place, so its logged loss carries a
  constant more; the gradient is the same)."""
  num_groups = q.shape[0]
  group_losses, counts = group_mean_losses(per_example_loss, group, mask,
                                           num_groups)
  adjusted = group_losses + size_adjustments(group_sizes, size_adjustment,
                                             num_groups)
  # The canonical update uses ``adjusted_loss.data``: q is a constant to the
  # model's gradient, both through the old q and through the losses.
  new_q = jax.lax.stop_gradient(
      update_weights(q.astype(jnp.float32), adjusted, eta))
  return GroupDROOutput(
      loss=jnp.dot(group_losses, new_q),
      weights=new_q,
      group_losses=jax.lax.stop_gradient(group_losses),
      group_counts=counts,
  )
