"""Group metrics (docs/reference.md, "Metrics"): each padded, masked batch is
reduced on device to per-group counts, summed across batches; only the total
crosses to the host. Worst-group accuracy is the minimum over groups, balanced
accuracy their unweighted mean. A group with no examples has accuracy ``None``
and is left out of both, never counted as 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class GroupCounts:
  """float32[G] ``correct`` and ``total`` examples per group; a summable pytree."""

  correct: jax.Array
  total: jax.Array

  def __add__(self, other: GroupCounts) -> GroupCounts:
    return GroupCounts(correct=self.correct + other.correct,
                       total=self.total + other.total)

  @classmethod
  def zeros(cls, num_groups: int) -> GroupCounts:
    z = jnp.zeros((num_groups,), jnp.float32)
    return cls(correct=z, total=z)


def group_counts(
    pred: jax.Array,
    label: jax.Array,
    group: jax.Array,
    mask: jax.Array | None,
    num_groups: int,
) -> GroupCounts:
  """Per-group counts of one batch (jittable, shardable); group ids outside
  ``[0, num_groups)`` and rows with ``mask`` False count nowhere."""
  # A one-hot matmul rather than a scatter: it is exact for float32 counts
  # below 2**24, deterministic, and drops out-of-range ids (all-zero rows).
  onehot = jax.nn.one_hot(group, num_groups, dtype=jnp.float32)
  weight = (jnp.ones(group.shape, jnp.float32) if mask is None
            else mask.astype(jnp.float32))
  hit = (pred == label).astype(jnp.float32) * weight
  return GroupCounts(correct=hit @ onehot, total=weight @ onehot)


def group_accuracy(counts: GroupCounts) -> jax.Array:
  """float32[G] accuracy per group; NaN for groups with no examples."""
  has = counts.total > 0
  return jnp.where(has, counts.correct / jnp.where(has, counts.total, 1.0),
                   jnp.nan)


def worst_group_accuracy(counts: GroupCounts) -> jax.Array:
  """Minimum accuracy over groups that have examples; NaN (jit cannot raise) if none."""
  return jnp.nanmin(group_accuracy(counts))


def balanced_accuracy(counts: GroupCounts) -> jax.Array:
  """Unweighted mean accuracy over groups that have examples; NaN if none."""
  return jnp.nanmean(group_accuracy(counts))


def overall_accuracy(counts: GroupCounts) -> jax.Array:
  """Example-weighted accuracy over all groups; NaN with no examples."""
  total = jnp.sum(counts.total)
  return jnp.where(total > 0, jnp.sum(counts.correct) / jnp.maximum(total, 1),
                   jnp.nan)


def summarize(counts: GroupCounts, group_names: Sequence[str]) -> dict:
  """``worst_group_acc``, ``balanced_acc``, ``acc``, ``group_acc`` and
  ``group_count`` of a split's summed counts; ``group_names`` from
  ``GroupScheme.names()``."""
  correct = np.asarray(jax.device_get(counts.correct), np.float64)
  total = np.asarray(jax.device_get(counts.total), np.float64)
  names = list(group_names)
  if len(names) != total.shape[0]:
    raise ValueError(
        f"summarize: {len(names)} group names for {total.shape[0]} groups; "
        "pass GroupScheme.names() of the scheme the ids came from.")
  has = total > 0
  if not has.any():
    raise ValueError(
        "summarize: no group has any example (all totals are 0); expected at "
        f"least one example among groups {names}.")
  acc = np.where(has, correct / np.where(has, total, 1.0), np.nan)
  return {
      "worst_group_acc": float(acc[has].min()),
      "balanced_acc": float(acc[has].mean()),
      "acc": float(correct.sum() / total.sum()),
      "group_acc": {
          n: (None if math.isnan(a) else float(a)) for n, a in zip(names, acc)},
      "group_count": {n: int(round(t)) for n, t in zip(names, total)},
  }
