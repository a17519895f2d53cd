"""CelebA-HQ (y = Smiling, b = Male), the authors' defaults.

Usage: ``--config=configs/celeba_hq.py`` or
``--config=configs/celeba_hq.py:smoke`` (a tiny model and one epoch, to check that
everything runs).
"""

from __future__ import annotations

import ml_collections

from ffr_jax.config import apply_arg, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config; ``arg`` is ``None`` or ``"smoke"``."""
  config = base_config()
  config.data.name = "celeba_hq"
  # DFR's C grid for CelebA (docs/reference.md, "Methods").
  config.dfr.c_grid = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
  apply_arg(config, arg)
  return config.lock()
