"""Flax ResNets (torchvision architecture) and torchvision weight loading.

A model never gets an option it does not declare (:class:`ModelSpec`), so a
new architecture adds its own options without touching the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ffr_jax.models.resnet import RESNET_OPTIONS, ResNet, ResNetOutput
from ffr_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model: a module class, its fixed ``architecture`` fields and
  the ``config.model`` keys it reads (``options``: never the parameters' shapes)."""

  module: type[nn.Module]
  architecture: Mapping[str, Any]
  options: tuple[str, ...] = ()


MODELS: Registry[ModelSpec] = Registry("model")
for _name, _architecture in (
    ("resnet50", {"stage_sizes": (3, 4, 6, 3), "block": "bottleneck"}),
    ("resnet18", {"stage_sizes": (2, 2, 2, 2), "block": "basic"}),
    # For tests and CPU demos at 32-64 px: ResNet18's layout at a quarter of
    # the width with one block per stage (about 0.3M parameters, 128-d embedding).
    ("tiny", {"stage_sizes": (1, 1, 1, 1), "block": "basic", "width": 0.25})):
  MODELS.register(_name, ModelSpec(ResNet, _architecture, RESNET_OPTIONS))


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32,
                 **options: Any) -> nn.Module:
  """An unbound registered model; ``dtype`` (or its name) is the compute dtype,
  parameters stay float32; ValueError for an option it does not declare."""
  spec = MODELS.get(name)
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    raise ValueError(f"Unknown model option(s) {unknown}; this model reads "
                     f"{list(spec.options) or 'none'}.")
  return spec.module(num_classes=num_classes, dtype=jnp.dtype(dtype),
                     **spec.architecture, **options)


def model_from_config(config_model: Any, num_classes: int) -> nn.Module:
  """The model ``config.model`` describes, with exactly the options it declares."""
  name = str(config_model["name"])
  options = MODELS.get(name).options
  missing = [o for o in options if o not in config_model]
  if missing:
    raise KeyError(f"config.model lacks {', '.join('model.' + o for o in missing)}, "
                   f"which model {name!r} reads.")
  return create_model(name, num_classes, config_model["dtype"],
                      **{o: config_model[o] for o in options})

