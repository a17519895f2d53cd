"""The robustness methods, looked up by name in :data:`METHODS`.

A method decides (1) the order training examples are drawn in, (2) how
per-example losses become the batch loss, and (3) whether the last layer is
refit afterwards (DFR). Everything else is shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from ffr_jax.registry import Registry
from ffr_jax.training import groupdro

SHUFFLE = "shuffle"
BALANCED = "balanced"


ERM = "erm"


def _no_settings(config) -> dict[str, Any]:
  del config
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method changes.

  Attributes:
    name: the config value.
    sampler: ``"shuffle"`` or ``"balanced"`` (group-balanced resampling).
    make_loss: builds ``(per_example_loss, group, q) -> (loss, new_q)`` from
      the method's settings and the training-set group sizes.
    settings: ``settings(config) -> dict``: what the method reads from the
      config. It is part of a stage's plan (and so of its fingerprint).
    refit_last_layer: DFR: after training, refit the head on val embeddings.
  """

  name: str
  sampler: str
  make_loss: Callable[[dict, np.ndarray], Callable]
  settings: Callable[[Any], dict[str, Any]] = _no_settings
  refit_last_layer: bool = False


def _mean_loss(settings, group_sizes):
  del settings, group_sizes

  def loss_fn(per_example, group, q):
    del group
    return jnp.mean(per_example), q

  return loss_fn


def _groupdro_settings(config) -> dict[str, Any]:
  return {"eta": float(config.groupdro.eta),
          "size_adjustment": float(config.groupdro.size_adjustment)}


def _groupdro_loss(settings, group_sizes):
  sizes = jnp.asarray(np.asarray(group_sizes), jnp.float32)
  eta = float(settings["eta"])
  c = float(settings["size_adjustment"])

  def loss_fn(per_example, group, q):
    out = groupdro.groupdro_loss(per_example, group, None, q, eta, c, sizes)
    return out.loss, out.weights

  return loss_fn


METHODS: Registry[Method] = Registry("method")
METHODS.register(ERM, Method(ERM, SHUFFLE, _mean_loss))
METHODS.register("groupdro", Method("groupdro", SHUFFLE, _groupdro_loss,
                                    settings=_groupdro_settings))
METHODS.register("resampling", Method("resampling", BALANCED, _mean_loss))
# DFR trains the backbone with ERM, then refits the last layer (its settings,
# dfr.*, act after training and are recorded in results.json).
METHODS.register("dfr", Method("dfr", SHUFFLE, _mean_loss,
                               refit_last_layer=True))


def get_method(name: str) -> Method:
  return METHODS.get(name)
