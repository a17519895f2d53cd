"""Seeded splits and the authors' bias-ratio rule.

The bias ratio ``p`` is the fraction of a class held by its majority bias group.
The authors reach it by dropping random minority samples class by class
(docs/reference.md, "Bias ratios"): with ``r = 1 - p`` the minority count to keep is
``majority_count * r / (1 - r)``, the number removed is
``int(minority_count - to_keep)``, and a group already below ``to_keep`` is left
alone. We follow that rule exactly so our group counts equal theirs, but draw
the dropped samples with a seeded generator over path-sorted rows, so the result
does not depend on file-system order.
"""

from __future__ import annotations

import math

from absl import logging
import numpy as np

from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

BIAS_RATIOS = (0.90, 0.95, 0.97, 0.99, 0.999)
# data.bias_ratio that keeps the data as found (the folder dataset's default).
AS_FOUND = -1.0
# The authors keep at least this many validation examples per group so that
# model selection by worst-group accuracy stays meaningful.
MIN_VAL_PER_GROUP = 10


def check_ratio(ratio: float) -> float:
  """Returns ``ratio`` as a float, or raises if no dataset can have it."""
  ratio = float(ratio)
  if ratio != AS_FOUND and (not 0.5 < ratio < 1.0 or math.isnan(ratio)):
    raise ValueError(
        f"bias_ratio={ratio} is impossible: it is the majority group's share of "
        "its class and must lie strictly between 0.5 and 1 (e.g. 0.9, 0.95, "
        f"0.97, 0.99, 0.999), or {AS_FOUND} to keep the data as found.")
  return ratio


def minority_to_remove(majority_count: int, minority_count: int,
                       ratio: float, floor_keep: bool = False) -> int:
  """How many minority examples the authors' rule removes (0 if none).

  Args:
    floor_keep: floor the count to keep before subtracting. The authors'
      90% pre-bias of CelebA-HQ and UTKFace does this
      (``int(r * maj / (1 - r))``); their bias-ratio step does not.
  """
  r = 1.0 - ratio
  to_keep = majority_count * r / (1.0 - r)
  if floor_keep:
    # Truncated as the authors' int(): their float error is kept too (144 *
    # (1 - 0.9) / 0.9 is 15.999999999999998 -> 15), so the counts are theirs.
    to_keep = math.floor(to_keep)
  if minority_count <= to_keep:
    return 0
  return int(minority_count - to_keep)


def apply_bias_ratio(spec: DatasetSpec, examples: Examples, ratio: float,
                     seed: int, min_per_group: int = 0,
                     floor_keep: bool = False) -> Examples:
  """Drops random minority examples so each class reaches ``ratio``.

  Only real examples are considered. Each minority group keeps at least
  ``min_per_group`` examples (or all it has, if fewer).

  Args:
    spec: the dataset's groups and majority biases.
    ratio: target bias ratio in (0.5, 1).
    seed: seeds which minority examples are dropped.
    floor_keep: see :func:`minority_to_remove`.

  Returns:
    The kept examples, in path order.
  """
  ratio = check_ratio(ratio)
  examples = examples.sorted()
  rng = np.random.default_rng(seed)
  keep = np.ones(len(examples), bool)
  for y, b_major in enumerate(spec.majority_bias):
    n_major = examples.count(y, b_major)
    for (gy, gb) in spec.groups:
      if gy != y or gb == b_major:
        continue
      idx = np.flatnonzero(examples.mask(gy, gb))
      remove = minority_to_remove(n_major, len(idx), ratio, floor_keep)
      remove = min(remove, max(len(idx) - min_per_group, 0))
      if remove:
        keep[rng.choice(idx, size=remove, replace=False)] = False
  return examples.take(keep)


def bias_splits(splits: DatasetSplits, ratio: float, seed: int) -> DatasetSplits:
  """Applies the ratio to train and val (val keeps >= 10 per group); test as is.

  :data:`AS_FOUND` keeps every split; the train ratio is logged either way.
  """
  if ratio != AS_FOUND:
    splits = splits.replace(
        train=apply_bias_ratio(splits.spec, splits.train, ratio, seed),
        val=apply_bias_ratio(splits.spec, splits.val, ratio, seed + 1,
                             min_per_group=MIN_VAL_PER_GROUP))
  found = achieved_ratio(splits.spec, splits.train)
  logging.info("%s: bias ratio %s; train majority share per class: %s",
               splits.spec.name, "as found" if ratio == AS_FOUND else ratio,
               ", ".join(f"{splits.spec.class_names[y]} {r:.3f}" for y, r in found.items()))
  return splits


def seeded_split(examples: Examples, seed: int
                 ) -> tuple[Examples, Examples, Examples]:
  """A train/val/test split, 80/10/10, by a seeded permutation of sorted rows.

  The authors split by ``os.listdir`` order, which differs between machines;
  sorting first makes the split a function of the file names and the seed only.
  """
  examples = examples.sorted()
  n = len(examples)
  perm = np.random.default_rng(seed).permutation(n)
  n_train = int(round(n * 0.8))
  n_val = int(round(n * 0.1))
  parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
  return tuple(examples.take(np.sort(p)) for p in parts)


def achieved_ratio(spec: DatasetSpec, examples: Examples) -> dict[int, float]:
  """The majority share of each class (NaN for an empty class)."""
  out = {}
  for y, b_major in enumerate(spec.majority_bias):
    n_class = int((examples.y == y).sum())
    out[y] = examples.count(y, b_major) / n_class if n_class else float("nan")
  return out
