"""UTKFace (y = gender, b = age: old 20-50 vs young <= 5), the authors' defaults.

Usage: ``--config=configs/utk_face.py`` or
``--config=configs/utk_face.py:smoke`` (a tiny model and one epoch, to check that
everything runs).
"""

from __future__ import annotations

import ml_collections

from ffr_jax.config import apply_arg, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config; ``arg`` is ``None`` or ``"smoke"``."""
  config = base_config()
  config.data.name = "utk_face"
  config.generate.steps = 25  # the authors' steps for faces
  apply_arg(config, arg)
  return config.lock()
