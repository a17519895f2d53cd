"""SpuCo Animals (4 classes x 4 backgrounds), the authors' defaults.

Usage: ``--config=configs/spuco.py`` or
``--config=configs/spuco.py:smoke`` (a tiny model and one epoch, to check that
everything runs).
"""

from __future__ import annotations

import ml_collections

from ffr_jax.config import apply_arg, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config; ``arg`` is ``None`` or ``"smoke"``."""
  config = base_config()
  config.data.name = "spuco_animals"
  # DFR's C grid: the SpuCo grid is base_config's default.
  apply_arg(config, arg)
  return config.lock()
