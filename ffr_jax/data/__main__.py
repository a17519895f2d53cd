"""Group counts per split of a configured dataset: ``python -m ffr_jax.data``.

Usage::

    python -m ffr_jax.data --config=configs/spuco.py \\
        --config.data.root=DIR --config.data.bias_ratio=0.99 [--json]

Prints a table (rows: groups, columns: train/val/test), the achieved bias ratio
per class and what loading skipped. With ``--json`` it prints exactly one JSON
object on stdout::

    {"dataset": str, "bias_ratio": float,
     "splits": {"train": [{"y", "b", "source", "count"}, ...],
                "val": [...], "test": [...]},
     "achieved_ratio": {"train": {class name: float}, "val": ...},
     "skipped": {reason: count}}

Logs go to stderr in both modes. A bad config or data layout is one
``error: ...`` line on stderr and exit code 2 (``ffr_jax.cli``).
"""

from __future__ import annotations

import json
import math
import sys

from absl import flags
from ml_collections import config_flags

from ffr_jax import cli
from ffr_jax.data import bias, datasets
from ffr_jax.data.types import DatasetSplits, group_table

SPLITS = ("train", "val", "test")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file (with an optional :arg).",
    lock_config=True)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def _achieved(splits: DatasetSplits) -> dict[str, dict[str, float | None]]:
  """Majority share per class for train and val (None for an empty class)."""
  out = {}
  for split in ("train", "val"):
    ratios = bias.achieved_ratio(splits.spec, splits.split(split))
    out[split] = {splits.spec.class_names[y]: (None if math.isnan(r) else r)
                  for y, r in ratios.items()}
  return out


def summary(splits: DatasetSplits, ratio: float) -> dict:
  """The JSON-ready summary of loaded splits."""
  return {
      "dataset": splits.spec.name,
      "bias_ratio": float(ratio),
      "splits": {s: group_table(splits.spec, splits.split(s)) for s in SPLITS},
      "achieved_ratio": _achieved(splits),
      "skipped": dict(splits.skipped),
  }


def format_table(splits: DatasetSplits, ratio: float) -> str:
  """A plain-text table of the group counts per split."""
  spec = splits.spec
  names = [spec.group_name(g) + ("  (majority)" if spec.is_majority(y, b) else "")
           for g, (y, b) in enumerate(spec.groups)]
  width = max(len(n) for n in names + ["group", "total"])
  head = f"{'group':<{width}} " + " ".join(f"{s:>8}" for s in SPLITS)
  lines = [f"{spec.name}, bias ratio {ratio}", head, "-" * len(head)]
  for name, (y, b) in zip(names, spec.groups):
    counts = " ".join(f"{splits.split(s).count(y, b):>8d}" for s in SPLITS)
    lines.append(f"{name:<{width}} {counts}")
  totals = " ".join(f"{len(splits.split(s)):>8d}" for s in SPLITS)
  lines += ["-" * len(head), f"{'total':<{width}} {totals}", ""]
  lines.append("achieved bias ratio (majority share of each class):")
  for split, per_class in _achieved(splits).items():
    shown = ", ".join(f"{c}: {'-' if r is None else f'{r:.4f}'}"
                      for c, r in per_class.items())
    lines.append(f"  {split}: {shown}")
  lines.append("skipped: " + (", ".join(
      f"{k}={v}" for k, v in sorted(splits.skipped.items())) or "none"))
  for reason, files in sorted(splits.skipped_files.items()):
    lines.append(f"  {reason}, e.g. {', '.join(files[:3])}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv  # cli.run rejects extra arguments.
  cfg = _CONFIG.value
  if cfg is None:
    raise cli.UserError("--config=configs/<dataset>.py is required.")
  definition = datasets.get_dataset(cfg.data.name)
  if definition.self_contained and not cfg.data.root:
    raise ValueError(
        f"{cfg.data.name} makes its own data: set --config.data.root=DIR "
        "to the folder to render it into (or that already holds it).")
  datasets.prepare_dataset(cfg)
  splits = datasets.load_dataset(cfg.data)
  if _JSON.value:
    print(json.dumps(summary(splits, cfg.data.bias_ratio)))
  else:
    print(format_table(splits, cfg.data.bias_ratio))
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main)
