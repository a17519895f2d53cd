"""Seeded splits and the authors' bias-ratio rule.

The bias ratio ``p`` is the majority bias group's share of its class; with
``r = 1 - p`` the minority keeps ``majority_count * r / (1 - r)``
(docs/reference.md, "Bias ratios"). Dropped rows are drawn with a seeded
generator over path-sorted rows, independent of file-system order.
"""

from __future__ import annotations

import math

from absl import logging
import numpy as np

from ffr_jax.config import AS_FOUND
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

BIAS_RATIOS = (0.90, 0.95, 0.97, 0.99, 0.999)
# Keeps model selection by worst-group accuracy meaningful (the authors').
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

  ``floor_keep`` floors the count to keep first, as the authors' 90% pre-bias
  of CelebA-HQ and UTKFace does (their bias-ratio step does not).
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

  A class's minority groups together keep what the authors' rule keeps for
  one (``minority_to_remove`` on their total), shared in proportion to their
  sizes (largest remainder), so a class with several minority groups reaches
  ``ratio`` too. Each minority group keeps at least ``min_per_group`` (or all
  it has). Returns the kept examples in path order.
  """
  ratio = check_ratio(ratio)
  examples = examples.sorted()
  rng = np.random.default_rng(seed)
  keep = np.ones(len(examples), bool)
  for y, b_major in enumerate(spec.majority_bias):
    idxs = [np.flatnonzero(examples.mask(gy, gb)) for gy, gb in spec.groups
            if gy == y and gb != b_major]
    sizes = np.array([len(i) for i in idxs])
    total = int(sizes.sum())
    remove = minority_to_remove(examples.count(y, b_major), total, ratio,
                                floor_keep)
    if not remove:
      continue
    share = (total - remove) * sizes / total
    kept = np.floor(share).astype(int)
    left = (total - remove) - kept.sum()
    kept[np.argsort(-(share - kept), kind="stable")[:left]] += 1
    for idx, n_keep in zip(idxs, kept):
      drop = min(len(idx) - n_keep, max(len(idx) - min_per_group, 0))
      if drop:
        keep[rng.choice(idx, size=drop, replace=False)] = False
  return examples.take(keep)


def bias_splits(splits: DatasetSplits, ratio: float, seed: int,
                bias_val: bool = True) -> DatasetSplits:
  """Applies the ratio to train, and to val when ``bias_val`` (the paper's
  protocol; val keeps >= 10 per group); test as is; logs the train ratio."""
  if ratio != AS_FOUND:
    val = splits.val
    if bias_val:
      val = apply_bias_ratio(splits.spec, val, ratio, seed + 1,
                             min_per_group=MIN_VAL_PER_GROUP)
    splits = splits.replace(
        train=apply_bias_ratio(splits.spec, splits.train, ratio, seed), val=val)
  found = achieved_ratio(splits.spec, splits.train)
  logging.info("%s: bias ratio %s; train majority share per class: %s",
               splits.spec.name, "as found" if ratio == AS_FOUND else ratio,
               ", ".join(f"{splits.spec.class_names[y]} {r:.3f}" for y, r in found.items()))
  return splits


def seeded_split(examples: Examples, seed: int
                 ) -> tuple[Examples, Examples, Examples]:
  """A train/val/test split, 80/10/10, by a seeded permutation of sorted rows
  (the authors' ``os.listdir`` order differs between machines)."""
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
