"""Embeddings of a trained backbone, and the DFR method: refit the head on val.

The backbone is the selected model of the run's last stage (trained with
ERM); :mod:`ffr_jax.training.dfr` refits on the validation embeddings. The
refit head's val metrics are in-sample, so the run selects on the backbone's
val score; DFR's own held-out number (the chosen C on the other half of val)
is kept as ``heldout_worst_group_acc``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from ffr_jax import config as config_lib
from ffr_jax.data import pipeline
from ffr_jax.data.types import REAL, Examples, GroupScheme
from ffr_jax.evaluation import metrics as metrics_lib
from ffr_jax.mesh import Shardings, to_global
from ffr_jax.training import dfr as dfr_lib
from ffr_jax.training import steps as steps_lib
from ffr_jax.training.methods import ERM, AfterResult, Context, Method
from ffr_jax.training.stage import StageInterrupted


def embed(model, variables, examples: Examples, scheme: GroupScheme,
          options, image_size: int, shardings: Shardings,
          should_stop: Callable[[int], bool] | None = None) -> np.ndarray:
  """Pooled embeddings of every example, in row order, on every host.

  ``options``: the run's :class:`~ffr_jax.training.spec.LoopOptions`;
  ``should_stop(batches_done)`` True after a batch raises :class:`StageInterrupted`.
  """
  eval_step = steps_lib.shared(steps_lib.make_eval_step, model,
                               scheme.num_groups, shardings, True)
  loader = pipeline.make_eval_loader(examples, scheme,
                                     options.input_config(image_size),
                                     options.eval_batch_size)
  out = None
  for done, batch in enumerate(loader, 1):
    b = to_global({k: batch[k] for k in ("image", "label", "group", "mask",
                                         "index")}, shardings)
    _, emb = eval_step(variables, b)
    # Place rows by their example index rather than trusting the device
    # order of the gathered batch; padding rows have index -1.
    emb = np.asarray(multihost_utils.process_allgather(emb, tiled=True))
    index = np.asarray(multihost_utils.process_allgather(b["index"],
                                                         tiled=True))
    if out is None:
      out = np.zeros((len(examples), emb.shape[1]), np.float32)
    real = index >= 0
    out[index[real]] = emb[real]
    if should_stop is not None and should_stop(done):
      raise StageInterrupted("embedding", done, len(loader))
  return out


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm, as ``torch.nn.functional.normalize``."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


# A refit last layer beside results.json, so analyses explain the model the run
# reports: logits = ((l2 ? e / |e| : e) - mean) / std @ kernel + bias, over the
# pooled embedding e, one column per class.
HEAD_FILE = "refit_head.npz"


def linear_head(kernel, bias, *, l2=False, mean=0.0, std=1.0) -> dict:
  kernel = np.asarray(kernel, np.float32)
  dim = kernel.shape[0]
  return {"kernel": kernel, "bias": np.asarray(bias, np.float32),
          "l2": np.asarray(l2), "mean": np.broadcast_to(
              np.asarray(mean, np.float32), (dim,)).copy(),
          "std": np.broadcast_to(np.asarray(std, np.float32), (dim,)).copy()}


def dfr_head(result: dfr_lib.DFRResult, num_classes: int) -> dict:
  """DFR's decision rule as class logits: sign (binary) or one-vs-rest argmax."""
  coef, intercept = result.coef.T, result.intercept
  if coef.shape[1] == 1:  # logistic: p(classes[1]) = softmax([0, s])[1]
    coef = np.concatenate([np.zeros_like(coef), coef], axis=1)
    intercept = np.concatenate([[0.0], intercept])
  kernel = np.zeros((coef.shape[0], num_classes))
  bias = np.full(num_classes, -1e30)  # a class DFR never saw is never chosen
  kernel[:, result.classes], bias[result.classes] = coef, intercept
  return linear_head(kernel, bias, l2=True, mean=result.mean, std=result.std)


def head_logits(head: dict, emb, xp=np):
  """Class logits ``[N, C]`` of ``head`` on pooled embeddings (numpy or jnp)."""
  if bool(head["l2"]):
    emb = emb / xp.maximum(xp.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  return (emb - head["mean"]) / head["std"] @ head["kernel"] + head["bias"]


def real_rows(train: Examples) -> Examples:
  """The real examples of a training set (usb/asb mix in synthetic ones).

  The final refits standardise with training-embedding statistics; the
  authors' DFR scripts take them from the real training split, also for USB
  and ASB.
  """
  real = train.take(np.flatnonzero(train.source == REAL))
  if not len(real):
    raise ValueError("DFR: the training set has no real examples to take "
                     "the standardisation statistics from.")
  return real


def metrics_of(pred: np.ndarray, examples: Examples, scheme: GroupScheme) -> dict:
  """Group metrics of predicted classes ``pred`` (one per example)."""
  counts = metrics_lib.group_counts(pred, examples.y, scheme.ids(examples),
                                    None, scheme.num_groups)
  return metrics_lib.summarize(jax.device_get(counts), scheme.names())


def context_embed(ctx: Context, variables, examples: Examples) -> np.ndarray:
  """:func:`embed` with a run's model, options and shardings."""
  scheme = GroupScheme(ctx.spec.evals[0].scheme.spec, by_source=True)
  return embed(ctx.model, variables, examples, scheme, ctx.options,
               int(ctx.config.data.image_size), ctx.shardings, ctx.stop_check)


def head(variables) -> tuple[np.ndarray, np.ndarray]:
  """The linear head's kernel ``[dim, classes]`` and bias, on the host."""
  fc = jax.device_get(variables["params"]["fc"])
  return np.asarray(fc["kernel"], np.float32), np.asarray(fc["bias"], np.float32)


def last_variables(ctx: Context):
  """The selected model of the run's last stage."""
  return ctx.variables[f"stage:{ctx.spec.stages[-1].fingerprint}"]


def refit_and_evaluate(ctx: Context) -> AfterResult:
  """Fits DFR on val embeddings and evaluates every split with the new head.

  Val metrics are on the data DFR was fitted on (all of val): never select on
  them (``selection_source`` says so). The details hold
  ``heldout_worst_group_acc``, the tuned C's worst-group accuracy on the
  held-out half of val (fitted on the other half).
  """
  variables, cfg = last_variables(ctx), ctx.config
  evals = ctx.spec.evals
  val = evals[0]
  scheme = val.scheme
  # The authors' DFR works on L2-normalised pooled features (their ResNet
  # returns F.normalize(features)); standardisation comes after.
  train_emb = l2_normalize(context_embed(
      ctx, variables, real_rows(ctx.spec.stages[-1].examples)))
  val_emb = l2_normalize(context_embed(ctx, variables, val.examples))
  result = dfr_lib.fit_dfr(
      train_emb, val_emb, val.examples.y, scheme.ids(val.examples),
      scheme.num_groups, tuple(cfg.dfr.c_grid), cfg.dfr.num_refits, cfg.seed,
      group_names=scheme.names(), should_stop=ctx.stop_check)
  metrics = {}
  for e in evals:
    emb = val_emb if e is val else l2_normalize(
        context_embed(ctx, variables, e.examples))
    metrics[e.name] = metrics_of(dfr_lib.predict(result, emb), e.examples,
                                 e.scheme)
  info = {"best_c": result.best_c,
          "c_scores": {str(c): s for c, s in result.c_scores.items()},
          "heldout_worst_group_acc": result.heldout_worst_group_acc,
          "num_refits": int(cfg.dfr.num_refits)}
  return AfterResult(metrics, info, selection_source="backbone_val",
                     head=dfr_head(result, scheme.spec.num_classes))


def _check(config) -> None:
  grid = tuple(config.dfr.c_grid)
  if not grid or not all(isinstance(c, (int, float)) and c > 0 for c in grid):
    raise ValueError(f"config.dfr.c_grid={grid!r}: give one or more positive "
                     "inverse regularisation strengths C.")
  if int(config.dfr.num_refits) < 1:
    raise ValueError(f"config.dfr.num_refits={config.dfr.num_refits} must be >= 1.")


def _erm_backbone(plans: tuple, config) -> tuple:
  """DFR's backbone is ERM's stage itself, so the two runs train it once."""
  del config
  return (*plans[:-1], dataclasses.replace(plans[-1], method=ERM))


# DFR trains the backbone with ERM, then refits the last layer on val.
DFR = Method("dfr", plan=_erm_backbone, after=refit_and_evaluate, check=_check,
             after_settings=lambda config: config_lib.flatten(config.dfr))
