"""Flax ResNets (torchvision architecture) and torchvision weight loading.

Use :func:`create_model` with a name from :data:`MODELS`; load ImageNet
weights with :func:`ffr_jax.models.weights.load_torchvision_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from ffr_jax.models.resnet import ResNet, ResNet18, ResNet50, ResNetOutput, TinyResNet

MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet50": ResNet50,
    "resnet18": ResNet18,
    "tiny": TinyResNet,
}


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32, **kwargs: Any) -> ResNet:
  """Builds a registered model.

  Args:
    name: a key of :data:`MODELS`.
    num_classes: outputs of the linear head.
    dtype: compute dtype, a jnp dtype or its name (``"bfloat16"``); parameters
      stay float32.
    **kwargs: further :class:`ResNet` fields, e.g. ``conv1x1_as_matmul=True``
      or ``width=0.5``.

  Returns:
    An unbound :class:`ResNet`; ``model.init(key, x, train=False)`` gives
    ``{"params", "batch_stats"}``.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
  return MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype), **kwargs)


def model_from_config(config_model: Any, num_classes: int) -> ResNet:
  """The model a run's ``config.model`` block describes (training and analysis).

  The two matmul options change speed only (same parameters and outputs), so
  configs written before an option existed get its default.
  """
  return create_model(
      config_model.name, num_classes, dtype=config_model.dtype,
      conv1x1_as_matmul=bool(config_model.get("conv1x1_as_matmul", True)),
      small_convs_as_matmul=bool(config_model.get("small_convs_as_matmul", True)))


__all__ = ["MODELS", "ResNet", "ResNetOutput", "create_model", "model_from_config"]
