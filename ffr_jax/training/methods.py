"""The robustness methods, looked up by name in :data:`METHODS`.

A method decides (1) the order training examples are drawn in, (2) how
per-example losses become the batch loss, and (3) whether the last layer is
refit afterwards (DFR). Everything else is shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from ffr_jax.training import groupdro

SHUFFLE = "shuffle"
BALANCED = "balanced"


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method changes.

  Attributes:
    name: the config value.
    sampler: ``"shuffle"`` or ``"balanced"`` (group-balanced resampling).
    make_loss: builds ``(per_example_loss, group, q) -> (loss, new_q)`` from
      the config and the training-set group sizes.
    refit_last_layer: DFR: after training, refit the head on val embeddings.
  """

  name: str
  sampler: str
  make_loss: Callable[..., Callable]
  refit_last_layer: bool = False


def _mean_loss(config, group_sizes):
  del config, group_sizes

  def loss_fn(per_example, group, q):
    del group
    return jnp.mean(per_example), q

  return loss_fn


def _groupdro_loss(config, group_sizes):
  sizes = jnp.asarray(np.asarray(group_sizes), jnp.float32)
  eta = float(config.groupdro.eta)
  c = float(config.groupdro.size_adjustment)

  def loss_fn(per_example, group, q):
    out = groupdro.groupdro_loss(per_example, group, None, q, eta, c, sizes)
    return out.loss, out.weights

  return loss_fn


METHODS: dict[str, Method] = {
    "erm": Method("erm", SHUFFLE, _mean_loss),
    "groupdro": Method("groupdro", SHUFFLE, _groupdro_loss),
    "resampling": Method("resampling", BALANCED, _mean_loss),
    # DFR trains the backbone with ERM, then refits the last layer.
    "dfr": Method("dfr", SHUFFLE, _mean_loss, refit_last_layer=True),
}


def get_method(name: str) -> Method:
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(
        f"Unknown method {name!r}; known methods: {sorted(METHODS)}") from None

