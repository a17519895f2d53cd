"""The modes: which examples each training stage sees.

* ``none``: real training data only.
* ``usb`` (Uniform Synthetic Balancing): every ``(y, b)`` group of the real
  train split is filled with synthetic images up to the largest real group.
* ``asb`` (Additive Synthetic Balancing): real data plus a balanced synthetic
  set of the same total as USB adds, split equally over the groups.
* ``ffr`` (From Fake to Real): stage 1 trains on that balanced synthetic set
  alone; stage 2 fine-tunes on real data alone.

Ablations (the paper's Tables 1 and 2; "stage 2 only" is mode ``none``):

* ``stage1_only``: FFR's stage 1 alone (it shares FFR's stage-1 checkpoint).
* ``stage2_then_1``: FFR in reverse: real data first (the configured method;
  mode ``none``'s stage), then the balanced synthetic set (ERM, ``stage1.*``).
* ``ffr_biased``: FFR whose stage 1 has as many synthetic images as FFR's,
  split over the groups in the real train split's proportions.

Validation and test are always real. USB and ASB put real and synthetic images
in one training set, so their robust methods act on ``(y, b, source)`` groups;
``none`` and ``ffr`` use ``(y, b)`` groups (docs/reference.md, "Training").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ffr_jax.data.types import REAL, DatasetSpec, Examples
from ffr_jax.registry import Registry

STAGE1 = "stage1"  # FFR: ERM on the balanced synthetic set
STAGE2 = "stage2"  # FFR: fine-tuning on real data
STAGE1_BIASED = "stage1_biased"  # ffr_biased: pretraining on biased synthetic data
TRAIN = "train"    # the only stage of modes none, usb and asb

PRETRAIN = "pretrain"  # synthetic data, ERM, the stage1.* settings
TRAIN_KIND = "train"   # the configured method from the first stage on
FINETUNE = "finetune"  # the configured method after pretraining (freeze_bn)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage of a mode."""

  name: str
  train: Examples | None  # None from :func:`describe`
  by_source: bool  # groups are (y, b, source), not (y, b)
  kind: str = TRAIN_KIND
  source: str = "real"  # REAL_DATA, SYNTHETIC_DATA or BOTH_DATA


@dataclasses.dataclass(frozen=True)
class Composition:
  stages: tuple[Stage, ...]
  synthetic_per_group: dict[tuple[int, int], int]


def usb_needs(spec: DatasetSpec, train: Examples) -> dict[tuple[int, int], int]:
  """Synthetic images USB adds per group: up to the largest real group."""
  real = {g: train.count(*g, source=REAL) for g in spec.groups}
  largest = max(real.values())
  return {g: largest - n for g, n in real.items()}


def balanced_per_group(spec: DatasetSpec, train: Examples) -> int:
  """Synthetic images per group for ASB and FFR stage 1: USB's total split
  equally over the groups (floor)."""
  return sum(usb_needs(spec, train).values()) // len(spec.groups)


def synthetic_needs(mode: str, spec: DatasetSpec, train: Examples,
                    per_group: int = -1) -> dict[tuple[int, int], int]:
  """How many synthetic images per group ``mode`` uses.

  ``per_group`` >= 0 fixes the count per group of the balanced sets (and caps
  what usb adds per group) instead of deriving it from ``train``.
  """
  kind = synthetic_set(mode)
  if kind == "none":
    return {g: 0 for g in spec.groups}
  if kind == "usb":
    needs = usb_needs(spec, train)
    if per_group >= 0:
      needs = {g: min(n, per_group) for g, n in needs.items()}
    return needs
  n = balanced_per_group(spec, train) if per_group < 0 else per_group
  if kind == "biased":
    return biased_counts(spec, train, n * len(spec.groups))
  return {g: n for g in spec.groups}


def synthetic_set(mode: str) -> str:
  """Which synthetic set ``mode`` draws: none, usb, balanced or biased."""
  MODES.get(mode)  # an unknown mode is an error naming the known ones
  return {"none": "none", "usb": "usb", "ffr_biased": "biased"}.get(mode, "balanced")


def biased_counts(spec: DatasetSpec, train: Examples, total: int
                  ) -> dict[tuple[int, int], int]:
  """``total`` split over the groups in proportion to the real train counts;
  largest-remainder rounding (ties to the earlier group) keeps the sum exact."""
  real = np.array([train.count(*g, source=REAL) for g in spec.groups],
                  dtype=np.float64)
  if real.sum() == 0:
    raise ValueError("biased_counts: the real train split is empty.")
  exact = total * real / real.sum()
  counts = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:total - int(counts.sum())]] += 1
  return {g: int(n) for g, n in zip(spec.groups, counts)}


def take_synthetic(spec: DatasetSpec, pool: Examples,
                   needs: dict[tuple[int, int], int]) -> Examples:
  """The first ``needs[g]`` synthetic images of every group, in index order."""
  parts, short = [], []
  for g, n in needs.items():
    idx = np.flatnonzero(pool.mask(*g))
    if len(idx) < n:
      short.append((g, n, len(idx)))
    parts.append(pool.take(idx[:n]))
  if short:
    lines = [
        f"  {spec.group_name(spec.group_index(*g))} (y={g[0]}, b={g[1]}): "
        f"need {n}, have {have}, missing {n - have}" for g, n, have in short]
    missing = sum(n - have for _, n, have in short)
    raise ValueError(
        f"Not enough synthetic images for this composition ({missing} missing):"
        "\n" + "\n".join(lines) +
        "\nGenerate them with `python -m ffr_jax.generate` (it resumes), or "
        "lower data.synthetic_per_group.")
  return Examples.concat(parts)


# What a stage trains on: the real train split, the mode's synthetic set, or
# both in one set (whose robust methods then act on (y, b, source) groups).
REAL_DATA, SYNTHETIC_DATA, BOTH_DATA = "real", "synthetic", "both"

# Each mode's stages in training order: (name, data, kind).
MODES: Registry[tuple[tuple[str, str, str], ...]] = Registry("mode")
for _name, _layout in (
    ("none", ((TRAIN, REAL_DATA, TRAIN_KIND),)),
    ("usb", ((TRAIN, BOTH_DATA, TRAIN_KIND),)),
    ("asb", ((TRAIN, BOTH_DATA, TRAIN_KIND),)),
    ("ffr", ((STAGE1, SYNTHETIC_DATA, PRETRAIN), (STAGE2, REAL_DATA, FINETUNE))),
    ("stage1_only", ((STAGE1, SYNTHETIC_DATA, PRETRAIN),)),
    # stage2_then_1 starts with none's only stage, named alike so it is trained once.
    ("stage2_then_1", ((TRAIN, REAL_DATA, TRAIN_KIND), (STAGE1, SYNTHETIC_DATA, PRETRAIN))),
    ("ffr_biased", ((STAGE1_BIASED, SYNTHETIC_DATA, PRETRAIN), (STAGE2, REAL_DATA, FINETUNE)))):
  MODES.register(_name, _layout)


def _stages(mode: str, train: Examples | None, synthetic: Examples | None
            ) -> tuple[Stage, ...]:
  """The stages of ``mode`` on ``train`` and its synthetic set (None: no data)."""
  data = {REAL_DATA: train, SYNTHETIC_DATA: synthetic,
          BOTH_DATA: None if train is None else Examples.concat([train, synthetic])}
  return tuple(Stage(name, data[source], by_source=source == BOTH_DATA,
                     kind=kind, source=source)
               for name, source, kind in MODES.get(mode))


def describe(mode: str) -> tuple[Stage, ...]:
  """The stages of ``mode`` without data (names, kinds, groups)."""
  return _stages(mode, None, None)


def compose(mode: str, spec: DatasetSpec, train: Examples,
            synthetic: Examples | None, per_group: int = -1) -> Composition:
  """The training stages of ``mode``; ``synthetic`` (the generated pool) may
  be None for mode ``none``."""
  needs = synthetic_needs(mode, spec, train, per_group)
  if synthetic is None:
    if any(needs.values()):
      raise ValueError(f"Mode {mode!r} needs synthetic images; set "
                       "data.synthetic_root or generate them first.")
    synthetic = Examples.empty()
  stages = _stages(mode, train, take_synthetic(spec, synthetic, needs))
  for s in stages:
    if len(s.train) == 0:
      raise ValueError(f"Mode {mode!r}: {s.name} has no training examples.")
  return Composition(stages=stages, synthetic_per_group=needs)
