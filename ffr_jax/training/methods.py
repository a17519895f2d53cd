"""The robustness methods, looked up by name in :data:`METHODS`.

A method decides the order training examples are drawn in, how per-example
losses become the batch loss, and its programme: it may rewrite the mode's
stage plans (JTT trains twice, AFR holds part of the data back), build a
stage's examples from an earlier stage (JTT's error set), and act after the
last stage (DFR's and AFR's last-layer refits). A method with its own
programme lives in its own module, listed lazily below.
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


def _no_check(config) -> None:
  del config


def _same_plans(plans, config):
  del config
  return plans


def mean_loss(settings, group_sizes):
  del settings, group_sizes

  def loss_fn(per_example, group, q):
    del group
    return jnp.mean(per_example), q

  return loss_fn


@dataclasses.dataclass(frozen=True)
class AfterResult:
  """What an after-stage step gives the run.

  ``selection_source`` is ``"val"`` when ``metrics["val"]`` is held out from
  what the step fitted, else ``"backbone_val"``: the run then selects on the
  last stage's val score (DFR fits on val).
  """

  metrics: dict[str, dict]
  details: dict[str, Any]
  selection_source: str = "val"
  head: dict[str, Any] | None = None  # a refit head (last_layer.HEAD_FILE)


@dataclasses.dataclass
class Context:
  """What a method's steps see of a run (built by training.run)."""

  config: Any
  spec: Any                       # the RunSpec
  model: Any
  shardings: Any
  options: Any                    # LoopOptions
  should_stop: Callable[[int], bool]
  variables: dict[str, Any]       # a plan's ``init`` -> those variables
  results: dict[str, Any]         # stage name -> StageResult
  details: dict[str, Any] = dataclasses.field(default_factory=dict)  # -> results.json
  step: int = 0  # the next free step id (JAX's multi-host preemption sync
  # point wants ids that only grow, across stages and the steps between them)

  def stop_check(self, done: int = 0) -> bool:
    """The run's stop check for work outside a stage's steps."""
    del done
    self.step += 1
    return self.should_stop(self.step - 1)


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method changes; everything else is shared."""

  name: str
  sampler: str = SHUFFLE  # or BALANCED (group-balanced resampling)
  # (settings, group_sizes) -> (per_example_loss, group, q) -> (loss, new_q)
  make_loss: Callable[[dict, np.ndarray], Callable] = mean_loss
  # What the stages it trains read from the config (hashed into their plans).
  settings: Callable[[Any], dict[str, Any]] = _no_settings
  plan: Callable[[tuple, Any], tuple] = _same_plans  # the mode's plans, rewritten
  # Examples of a plan that come from an earlier stage (its data names it).
  derive: Callable[[Any, Context], Any] | None = None
  after: Callable[[Context], AfterResult] | None = None  # after the last stage
  after_settings: Callable[[Any], dict[str, Any]] = _no_settings  # hashed too
  check: Callable[[Any], None] = _no_check  # ValueError for a bad setting


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
METHODS.register(ERM, Method(ERM))
METHODS.register("groupdro", Method("groupdro", make_loss=_groupdro_loss,
                                    settings=_groupdro_settings))
METHODS.register("resampling", Method("resampling", sampler=BALANCED))
METHODS.register_lazy("dfr", "ffr_jax.training.last_layer:DFR")
METHODS.register_lazy("jtt", "ffr_jax.training.jtt:JTT")
METHODS.register_lazy("afr", "ffr_jax.training.afr:AFR")


def get_method(name: str) -> Method:
  return METHODS.get(name)
