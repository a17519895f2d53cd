"""JTT, "Just Train Twice" (Liu et al., ICML 2021): no group labels in training.

ERM for ``jtt.epochs_id`` epochs gives an identification model (its last
epoch, not the best on val); the training examples it misclassifies, the
error set, are added ``jtt.upsample`` more times to the training set (each
appears ``1 + upsample`` times, as in the authors' code); the final model
trains with ERM on that set from the same starting point as the
identification model (for FFR, stage 1's model). Val's group labels only
select epochs and settings. docs/reference.md, "JTT".
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from ffr_jax import lifecycle
from ffr_jax.data.types import Examples, GroupScheme
from ffr_jax.training import last_layer
from ffr_jax.training import spec as spec_lib
from ffr_jax.training.methods import ERM, Context, Method

ID_SUFFIX = "_id"  # the identification stage is named {stage}_id
ERROR_SET_FILE = "jtt_error_set.json"  # in the identification stage's folder


def _settings(config) -> dict:
  return {"epochs_id": int(config.jtt.epochs_id),
          "upsample": int(config.jtt.upsample)}


def _check(config) -> None:
  s = _settings(config)
  if s["epochs_id"] < 1 or s["upsample"] < 1:
    raise ValueError(f"config.jtt.epochs_id={s['epochs_id']} and config.jtt."
                     f"upsample={s['upsample']} must both be >= 1.")


def _plan(plans: tuple, config) -> tuple:
  """The mode's last stage becomes identification, then the final training."""
  last = method_stage(plans, "jtt")
  identify = dataclasses.replace(
      last, name=last.name + ID_SUFFIX, method=ERM, method_settings=(),
      epochs=_settings(config)["epochs_id"], selection=spec_lib.SELECT_LAST,
      epoch0_candidate=False)
  final = dataclasses.replace(
      last, examples=None, init=identify.init,  # the same starting point
      data=spec_lib.json_digest({"error_set_of": identify.fingerprint,
                                 "upsample": _settings(config)["upsample"]}))
  return (*plans[:-1], identify, final)


def method_stage(plans: tuple, method: str):
  """The last stage, which the method trains (not a synthetic pretraining)."""
  if plans[-1].method != method:
    raise ValueError(f"method {method} acts on the stage trained on real data; "
                     f"this mode ends with {plans[-1].name}, a synthetic "
                     "pretraining: use mode none, usb, asb, ffr or ffr_biased.")
  return plans[-1]


def error_set(pred: np.ndarray, train: Examples) -> np.ndarray:
  """Indices of the training examples the identification model gets wrong."""
  return np.flatnonzero(np.asarray(pred) != np.asarray(train.y))


def _derive(plan, ctx: Context) -> Examples:
  """The final stage's training set: the error set upsampled; recorded."""
  identify = next(p for p in ctx.spec.stages if p.name == plan.name + ID_SUFFIX)
  train = identify.examples
  # Kept beside the identification stage: a resume on another machine, where
  # a near-tie could flip, trains on the same set.
  path = os.path.join(ctx.spec.stage_dir(identify), ERROR_SET_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      errors = np.asarray(json.load(f), np.int64)
  else:
    variables = ctx.variables[f"stage:{identify.fingerprint}"]
    kernel, bias = last_layer.head(variables)
    emb = last_layer.context_embed(ctx, variables, train)
    errors = error_set(np.argmax(emb @ kernel + bias, axis=1), train)
    if lifecycle.process_index() == 0:
      lifecycle.write_atomic(path, json.dumps(errors.tolist()))
  if not len(errors):
    raise ValueError(
        f"JTT: the identification model ({identify.epochs} epoch(s)) "
        "classifies every training example correctly, so the error set is "
        "empty; lower config.jtt.epochs_id.")
  upsample = _settings(ctx.config)["upsample"]
  scheme = GroupScheme(ctx.spec.evals[0].scheme.spec, by_source=plan.by_source)
  ids = scheme.ids(train)
  ctx.details.update({
      **_settings(ctx.config), "train_size": len(train),
      "error_set_size": len(errors),
      "error_set_per_group": dict(zip(scheme.names(), np.bincount(
          ids[errors], minlength=scheme.num_groups).tolist())),
      "train_per_group": dict(zip(scheme.names(), np.bincount(
          ids, minlength=scheme.num_groups).tolist()))})
  return Examples.concat([train] + [train.take(errors)] * upsample)


JTT = Method("jtt", settings=_settings, plan=_plan, derive=_derive,
             check=_check)
