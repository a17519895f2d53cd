"""Helpers for notebooks/ffr_colab.ipynb, which runs in-process (its kernel owns
the TPU): what the commands' flag parsing would do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from ffr_jax import config as config_lib


def load_config(path: str, overrides: Mapping[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """``configs/x.py[:arg]`` -> its locked config, with overrides like
  ``{"train.epochs": 2}`` applied as ``--config.key=value`` would."""
  config = config_lib.load_config_file(path)
  config_lib.apply_overrides(config, list((overrides or {}).items()))
  return config


def fit_to_devices(config: ml_collections.ConfigDict, num_devices: int
                   ) -> list[str]:
  """Rounds the global batch sizes up to multiples of ``num_devices``, which
  the sharded steps need; returns one note per change."""
  notes = []
  for key in ("batch_size", "eval_batch_size"):
    value = int(config.train[key])
    fitted = -(-value // num_devices) * num_devices
    if fitted != value:
      config.train[key] = fitted
      notes.append(f"train.{key}: {value} -> {fitted} "
                   f"(a multiple of {num_devices} devices)")
  return notes
