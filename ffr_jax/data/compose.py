"""The modes: which examples each training stage sees.

* ``none``: real training data only.
* ``usb`` (Uniform Synthetic Balancing): every ``(y, b)`` group of the real
  train split is filled with synthetic images up to the largest real group.
* ``asb`` (Additive Synthetic Balancing): real data plus a balanced synthetic
  set of the same total as USB adds, split equally over the groups.
* ``ffr`` (From Fake to Real): stage 1 trains on that balanced synthetic set
  alone; stage 2 fine-tunes on real data alone.

Validation and test are always real. USB and ASB put real and synthetic images
in one training set, so their robust methods act on ``(y, b, source)`` groups;
``none`` and ``ffr`` use ``(y, b)`` groups (REFERENCE.md, "Training").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ffr_jax.data.types import REAL, DatasetSpec, Examples

STAGE1 = "stage1"  # FFR: ERM on the balanced synthetic set
STAGE2 = "stage2"  # FFR: fine-tuning on real data
TRAIN = "train"    # the only stage of modes none, usb and asb


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage.

  Attributes:
    name: ``"stage1"`` / ``"stage2"`` for FFR, ``"train"`` for the
      single-stage modes.
    train: the examples it trains on.
    by_source: whether groups are ``(y, b, source)`` rather than ``(y, b)``.
    erm_only: stage 1 of FFR is plain ERM whatever the configured method.
  """

  name: str
  train: Examples
  by_source: bool
  erm_only: bool = False


@dataclasses.dataclass(frozen=True)
class Composition:
  mode: str
  stages: tuple[Stage, ...]
  synthetic_per_group: dict[tuple[int, int], int]


def usb_needs(spec: DatasetSpec, train: Examples) -> dict[tuple[int, int], int]:
  """Synthetic images USB adds per group: up to the largest real group."""
  real = {g: train.count(*g, source=REAL) for g in spec.groups}
  largest = max(real.values())
  return {g: largest - n for g, n in real.items()}


def balanced_per_group(spec: DatasetSpec, train: Examples) -> int:
  """Synthetic images per group for ASB and FFR stage 1.

  The same total as USB adds, split equally over the groups (floor), e.g.
  SpuCo Animals at 95%: 38000 in total, 4750 per group.
  """
  return sum(usb_needs(spec, train).values()) // len(spec.groups)


def synthetic_needs(mode: str, spec: DatasetSpec, train: Examples,
                    per_group: int = -1) -> dict[tuple[int, int], int]:
  """How many synthetic images per group ``mode`` uses.

  Args:
    mode: one of :data:`MODES`.
    spec: the dataset.
    train: the real train split after the bias ratio.
    per_group: if >= 0, a fixed count per group for asb and ffr (and the cap
      on what usb adds per group), instead of the counts derived from the data.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; known modes: {sorted(MODES)}")
  if mode == "none":
    return {g: 0 for g in spec.groups}
  if mode == "usb":
    needs = usb_needs(spec, train)
    if per_group >= 0:
      needs = {g: min(n, per_group) for g, n in needs.items()}
    return needs
  n = balanced_per_group(spec, train) if per_group < 0 else per_group
  return {g: n for g in spec.groups}


def take_synthetic(spec: DatasetSpec, pool: Examples,
                   needs: dict[tuple[int, int], int]) -> Examples:
  """The first ``needs[g]`` synthetic images of every group, in index order.

  Raises:
    ValueError: the pool lacks images for some group; the message says how
      many are missing per group and in total.
  """
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


def _none(spec, train, pool, per_group):
  del spec, pool, per_group
  return (Stage(TRAIN, train, by_source=False),)


def _usb(spec, train, pool, per_group):
  syn = take_synthetic(spec, pool, synthetic_needs("usb", spec, train, per_group))
  return (Stage(TRAIN, Examples.concat([train, syn]), by_source=True),)


def _asb(spec, train, pool, per_group):
  syn = take_synthetic(spec, pool, synthetic_needs("asb", spec, train, per_group))
  return (Stage(TRAIN, Examples.concat([train, syn]), by_source=True),)


def _ffr(spec, train, pool, per_group):
  syn = take_synthetic(spec, pool, synthetic_needs("ffr", spec, train, per_group))
  return (Stage(STAGE1, syn, by_source=False, erm_only=True),
          Stage(STAGE2, train, by_source=False))


ComposeFn = Callable[[DatasetSpec, Examples, Examples, int], tuple[Stage, ...]]
MODES: dict[str, ComposeFn] = {
    "none": _none,
    "usb": _usb,
    "asb": _asb,
    "ffr": _ffr,
}


def compose(mode: str, spec: DatasetSpec, train: Examples,
            synthetic: Examples | None, per_group: int = -1) -> Composition:
  """Builds the training stages of ``mode``.

  Args:
    mode: a key of :data:`MODES`.
    spec: the dataset.
    train: the real train split (after the bias ratio).
    synthetic: the generated pool (``data.synthetic.load_synthetic``); may be
      None for mode ``none``.
    per_group: see :func:`synthetic_needs`.

  Returns:
    The stages in training order.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; known modes: {sorted(MODES)}")
  needs = synthetic_needs(mode, spec, train, per_group)
  if synthetic is None:
    if any(needs.values()):
      raise ValueError(f"Mode {mode!r} needs synthetic images; set "
                       "data.synthetic_root or generate them first.")
    synthetic = Examples.empty()
  stages = MODES[mode](spec, train, synthetic, per_group)
  for s in stages:
    if len(s.train) == 0:
      raise ValueError(f"Mode {mode!r}: {s.name} has no training examples.")
  return Composition(mode=mode, stages=stages, synthetic_per_group=needs)
