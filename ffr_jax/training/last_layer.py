"""DFR in a run: embed with the trained backbone, refit the head, evaluate.

The backbone is the best epoch of the run's last stage (trained with ERM);
:mod:`ffr_jax.training.dfr` does the refit on the validation embeddings.

Model selection must not use the refit head's val metrics (DFR was fitted on
all of val); the run's selection score is the backbone's val WA before the
refit, and DFR's own out-of-sample number, the chosen C's worst-group accuracy
on the held-out half of val, is kept as ``heldout_worst_group_acc``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from ffr_jax.data import pipeline
from ffr_jax.data.types import REAL, Examples, GroupScheme
from ffr_jax.evaluation import metrics as metrics_lib
from ffr_jax.mesh import Shardings, to_global
from ffr_jax.training import dfr as dfr_lib
from ffr_jax.training import steps as steps_lib
from ffr_jax.training.stage import StageInterrupted


def embed(model, variables, examples: Examples, scheme: GroupScheme, cfg,
          shardings: Shardings,
          should_stop: Callable[[int], bool] | None = None) -> np.ndarray:
  """Pooled embeddings of every example, in row order, on every host.

  ``should_stop(batches_done)`` is asked after every batch; True raises
  :class:`StageInterrupted`.
  """
  eval_step = steps_lib.make_eval_step(model, scheme.num_groups, shardings,
                                       with_embeddings=True)
  loader = pipeline.make_eval_loader(examples, scheme, cfg.data,
                                     cfg.train.eval_batch_size)
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
      raise StageInterrupted("dfr", done, len(loader))
  return out


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm, as ``torch.nn.functional.normalize``."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


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


def _metrics(result: dfr_lib.DFRResult, emb: np.ndarray, examples: Examples,
             scheme: GroupScheme) -> dict:
  pred = dfr_lib.predict(result, emb)
  counts = metrics_lib.group_counts(pred, examples.y, scheme.ids(examples),
                                    None, scheme.num_groups)
  return metrics_lib.summarize(jax.device_get(counts), scheme.names())


def refit_and_evaluate(model, variables, train: Examples, evals, cfg,
                       shardings: Shardings,
                       should_stop: Callable[[int], bool] | None = None
                       ) -> tuple[dict, dict]:
  """Fits DFR on val embeddings; returns (metrics per split, DFR details).

  Val metrics are on the data DFR was fitted on (all of val), so they are
  optimistic: never select on them. The details hold
  ``heldout_worst_group_acc``, the tuned C's worst-group accuracy on the
  held-out half of val (fitted on the other half); the test metrics are the
  ones to report.

  ``should_stop(step)`` is asked after every embedding batch and every fit,
  with step ids that only grow (JAX's preemption sync point wants that);
  True raises :class:`StageInterrupted`.
  """
  ids = itertools.count(1)
  stop = None if should_stop is None else (
      lambda _: should_stop(next(ids)))
  val = {e.name: e for e in evals}["val"]
  scheme = val.scheme
  # The authors' DFR works on L2-normalised pooled features (their ResNet
  # returns F.normalize(features)); standardisation comes after.
  train_emb = l2_normalize(embed(model, variables, real_rows(train),
                                 GroupScheme(scheme.spec, True), cfg,
                                 shardings, stop))
  val_emb = l2_normalize(embed(model, variables, val.examples, scheme, cfg,
                               shardings, stop))
  result = dfr_lib.fit_dfr(
      train_emb, val_emb, val.examples.y, scheme.ids(val.examples),
      scheme.num_groups, tuple(cfg.dfr.c_grid), cfg.dfr.num_refits, cfg.seed,
      group_names=scheme.names(), should_stop=stop)
  metrics = {}
  for e in evals:
    emb = val_emb if e is val else l2_normalize(
        embed(model, variables, e.examples, e.scheme, cfg, shardings, stop))
    metrics[e.name] = _metrics(result, emb, e.examples, e.scheme)
  info = {"best_c": result.best_c,
          "c_scores": {str(c): s for c, s in result.c_scores.items()},
          "heldout_worst_group_acc": result.heldout_worst_group_acc,
          "num_refits": int(cfg.dfr.num_refits)}
  return metrics, info
