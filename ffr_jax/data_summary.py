"""Group counts per split of a configured dataset: ``python -m ffr_jax.data_summary``.

Usage::

    python -m ffr_jax.data_summary --config=configs/spuco.py \\
        --config.data.root=DIR --config.data.bias_ratio=0.99 [--json]

Prints a table (rows: groups, columns: train/val/test), the achieved bias ratio
per class and what loading skipped; ``--json``: one JSON object on stdout
(dataset, bias_ratio, splits, achieved_ratio, skipped). Logs go to stderr.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from ffr_jax import cli
from ffr_jax.data import datasets, layouts

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file (with an optional :arg).",
    lock_config=True)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


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
    print(json.dumps(layouts.splits_summary(splits, cfg.data.bias_ratio)))
  else:
    print(layouts.splits_table(splits, cfg.data.bias_ratio))
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main)
