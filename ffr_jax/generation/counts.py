"""How many synthetic images to generate per ``(y, b)`` group.

The rule is :mod:`ffr_jax.data.compose`'s, which also takes the images back
out, so both ends agree by construction (docs/reference.md, "Synthetic data").
A folder meant to serve USB too needs ``modes=("usb", "asb", "ffr")``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from ffr_jax.data import compose
from ffr_jax.data.types import DatasetSpec, Examples

DEFAULT_MODES = ("asb", "ffr")


def needed_per_group(spec: DatasetSpec, train: Examples,
                     modes: Sequence[str] = DEFAULT_MODES, per_group: int = -1
                     ) -> dict[tuple[int, int], int]:
  """``{(y, b): count}``: the maximum over modes of ``compose.synthetic_needs``
  on the biased ``train``; ``per_group >= 0`` is an explicit count (usb's cap)."""
  if not modes:
    raise ValueError("needed_per_group: name at least one mode.")
  needs = {g: 0 for g in spec.groups}
  for mode in modes:
    for g, n in compose.synthetic_needs(mode, spec, train, per_group).items():
      needs[g] = max(needs[g], int(n))
  return needs


def configured_per_group(config: ml_collections.ConfigDict) -> int:
  """The explicit per-group count a config asks for, or -1 (derive from data)."""
  if config.generate.per_group >= 0:
    return int(config.generate.per_group)
  return int(config.data.synthetic_per_group)


def describe(spec: DatasetSpec, train: Examples,
             needs: dict[tuple[int, int], int]) -> str:
  """A table of real train counts and planned synthetic counts per group."""
  lines = [f"{'group':<28}{'real train':>11}{'synthetic':>11}"]
  for g, (y, b) in enumerate(spec.groups):
    lines.append(f"{spec.group_name(g):<28}{train.count(y, b):>11}"
                 f"{needs[(y, b)]:>11}")
  lines.append(f"{'total':<28}{len(train):>11}{sum(needs.values()):>11}")
  return "\n".join(lines)
