"""On-device group metrics: worst-group, balanced and per-group accuracy.

Evaluation runs over padded batches with a boolean mask (the pipeline pads the
last batch), possibly sharded over several devices. Each batch is reduced on
device to two float32 vectors of per-group counts, :class:`GroupCounts`, that
are summed across batches with ``+``; only the final counts cross to the host,
where :func:`summarize` turns them into the numbers we report (docs/reference.md,
"Metrics"):

* worst-group accuracy: the minimum over groups of the group's accuracy;
* balanced accuracy: the unweighted mean of the group accuracies.

A group with no examples has no accuracy. It is reported as ``None`` and left
out of the minimum and the mean, never counted as 0 or 1: a silent 0 would make
worst-group accuracy 0, a silent 1 would hide a group that vanished.
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
  """Correct and total example counts per group; a pytree, summable.

  Attributes:
    correct: float32[G], correctly classified examples per group.
    total: float32[G], examples per group.
  """

  correct: jax.Array
  total: jax.Array

  def __add__(self, other: GroupCounts) -> GroupCounts:
    return GroupCounts(correct=self.correct + other.correct,
                       total=self.total + other.total)

  @classmethod
  def zeros(cls, num_groups: int) -> GroupCounts:
    """Empty counts, the identity of ``+``."""
    z = jnp.zeros((num_groups,), jnp.float32)
    return cls(correct=z, total=z)


def group_counts(
    pred: jax.Array,
    label: jax.Array,
    group: jax.Array,
    mask: jax.Array | None,
    num_groups: int,
) -> GroupCounts:
  """Per-group counts of one batch; jittable, works on sharded batches.

  Args:
    pred: int[B], predicted classes (take ``argmax`` of logits first).
    label: int[B], true classes.
    group: int[B], group ids in ``[0, num_groups)``. Ids outside that range
      (e.g. ``-1`` on padding rows) count nowhere.
    mask: bool[B] or None; rows where it is False (padding) are ignored.
    num_groups: G, a static Python int.

  Returns:
    The batch's :class:`GroupCounts`.
  """
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
  """Minimum accuracy over groups that have examples; NaN if none has any.

  On device NaN stands in for the error :func:`summarize` raises, because a
  jitted function cannot raise on a value.
  """
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
  """Host-side report of accumulated counts.

  Args:
    counts: the sum of :func:`group_counts` over the whole split.
    group_names: one name per group, from ``GroupScheme.names()``.

  Returns:
    ``{"worst_group_acc": float, "balanced_acc": float, "acc": float,
    "group_acc": {name: float | None}, "group_count": {name: int}}``.
    Accuracies are in ``[0, 1]``; a group with no examples has accuracy
    ``None`` and is left out of the worst-group minimum and balanced mean.

  Raises:
    ValueError: if the names do not match the number of groups, or no group
      has any example (there is nothing to report).
  """
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
