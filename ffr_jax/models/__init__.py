"""Flax ResNets (torchvision architecture) and torchvision weight loading.

Use :func:`create_model` with a name from :data:`MODELS`; load ImageNet
weights with :func:`ffr_jax.models.weights.load_torchvision_weights`. A model
never gets an option it does not declare (:class:`ModelSpec`), so a new
architecture adds its own options (and config keys) without touching the others.
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
  """A registered model: a module class and what it is built with.

  Attributes:
    module: the flax module class; called with ``num_classes``, ``dtype``,
      the architecture and the options.
    architecture: the fixed fields of this model (ResNet50's stage sizes).
    options: the names of the ``config.model`` keys this model reads (fields
      of ``module`` that change speed or behaviour, never the parameters'
      shapes).
  """

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
  """Builds a registered model.

  Args:
    name: a name in :data:`MODELS`.
    num_classes: outputs of the linear head.
    dtype: compute dtype, a jnp dtype or its name (``"bfloat16"``); parameters
      stay float32.
    **options: options the model declares (:attr:`ModelSpec.options`), e.g.
      ``conv1x1_as_matmul=True`` for the ResNets.

  Returns:
    An unbound module; ``model.init(key, x, train=False)`` gives
    ``{"params", "batch_stats"}``.

  Raises:
    ValueError: an unknown name, or an option the model does not declare.
  """
  spec = MODELS.get(name)
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    raise ValueError(f"Unknown model option(s) {unknown}; this model reads "
                     f"{list(spec.options) or 'none'}.")
  return spec.module(num_classes=num_classes, dtype=jnp.dtype(dtype),
                     **spec.architecture, **options)


def model_from_config(config_model: Any, num_classes: int) -> nn.Module:
  """The model a run's ``config.model`` block describes (training and analysis).

  Passes exactly the options the named model declares, read from
  ``config_model`` (a ConfigDict or a mapping).

  Raises:
    ValueError: an unknown model name.
    KeyError: ``config_model`` lacks an option the model reads.
  """
  name = str(config_model["name"])
  options = MODELS.get(name).options
  missing = [o for o in options if o not in config_model]
  if missing:
    raise KeyError(f"config.model lacks {', '.join('model.' + o for o in missing)}, "
                   f"which model {name!r} reads.")
  return create_model(name, num_classes, config_model["dtype"],
                      **{o: config_model[o] for o in options})


__all__ = ["MODELS", "ModelSpec", "ResNet", "ResNetOutput", "create_model",
           "model_from_config"]
