"""CelebA-HQ (y = Smiling, b = Male), the authors' defaults.

Usage: ``--config=configs/celeba_hq.py`` or
``--config=configs/celeba_hq.py:smoke`` (a tiny model and one epoch, to check that
everything runs).
"""

from __future__ import annotations

import ml_collections

from ffr_jax.config import base_config

ARGS = ("smoke",)


def _apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> None:
  """Applies the ``:arg`` of the config path; unknown args are an error."""
  if arg in (None, ""):
    return
  if arg not in ARGS:
    raise ValueError(f"Unknown config arg {arg!r}; known args: {ARGS}.")
  config.data.image_size = 32
  config.model.name = "tiny"
  config.train.epochs = 1
  config.stage1.epochs = 1
  config.train.batch_size = 16
  config.train.eval_batch_size = 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config; ``arg`` is ``None`` or ``"smoke"``."""
  config = base_config()
  config.data.name = "celeba_hq"
  # DFR's C grid for CelebA (REFERENCE.md, "Methods").
  config.dfr.c_grid = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
  _apply_arg(config, arg)
  return config.lock()
