"""How many synthetic images to generate per ``(y, b)`` group.

By default we generate what ASB and FFR stage 1 use at the configured bias
ratio: the total USB would add (every group filled up to the largest real
group), split equally over the groups (docs/reference.md, "Synthetic data"; e.g.
SpuCo Animals at 95%: 38000 in total, 4750 per group). The rule itself lives in
:mod:`ffr_jax.data.compose`, which also takes the images back out, so both ends
agree by construction. A folder meant to serve USB too needs, per group, the
larger of the USB and ASB needs: pass ``modes=("usb", "asb", "ffr")``.
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
  """Images per group that cover every mode in ``modes``.

  The same rule as the training run's synthetic pool
  (:func:`ffr_jax.data.compose.synthetic_needs`, maximum over modes), so a
  folder generated with the same config is exactly what training takes.

  Args:
    train: the real train split after the bias ratio (its group counts decide).
    modes: compositions the folder must serve (``usb``, ``asb``, ``ffr``).
    per_group: if >= 0, the explicit count per group for asb/ffr (and the cap
      on what usb adds), instead of counts derived from ``train``.

  Returns:
    ``{(y, b): count}`` for every group of ``spec``, in ``spec.groups`` order.
  """
  if not modes:
    raise ValueError("needed_per_group: name at least one mode.")
  needs = {g: 0 for g in spec.groups}
  for mode in modes:
    for g, n in compose.synthetic_needs(mode, spec, train, per_group).items():
      needs[g] = max(needs[g], int(n))
  return needs


def configured_per_group(config: ml_collections.ConfigDict) -> int:
  """The explicit per-group count a config asks for, or -1 (derive from data).

  ``config.generate.per_group`` when set (>= 0), else
  ``config.data.synthetic_per_group``: what the training run reads.
  """
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
