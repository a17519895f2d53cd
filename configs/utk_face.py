"""UTKFace (y = gender, b = age: old 20-50 vs young <= 5), the authors' defaults.

Usage: ``--config=configs/utk_face.py`` or
``--config=configs/utk_face.py:smoke`` (a tiny model and one epoch, to check that
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
  config.data.name = "utk_face"
  # DFR's C grid: none is published for UTKFace; base_config's (SpuCo) one.
  _apply_arg(config, arg)
  return config.lock()
