"""Deep Feature Reweighting (Kirichenko et al., 2023) on frozen embeddings.

The last layer is refitted as an L1 logistic regression on group-balanced
subsets of the *validation* set, as the canonical ``dfr_on_validation_tune``
/ ``dfr_on_validation_eval`` (docs/reference.md, "Methods"):

1. tuning: balance one half of val, standardise with that set's scaler, keep
   the C with the best worst-group accuracy on the other half (first of ties);
2. final fit: standardise with the *training* embeddings' scaler and average
   ``num_refits`` fits at the best C, each on a fresh balanced subset of val.

The two scalers differ as in the canonical code (L1 strength depends on
feature scale). One change: val is halved within each group, so a small
minority group is never missing from a half. Runs on the host (liblinear).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


@dataclasses.dataclass(frozen=True)
class DFRResult:
  """The refitted last layer and how it was chosen."""

  best_c: float
  coef: np.ndarray  # float64[K, D]; K = 1 for two classes, else one-vs-rest
  intercept: np.ndarray  # float64[K]
  classes: np.ndarray  # int64, the sorted label of each class column
  mean: np.ndarray  # float64[D], of the training embeddings
  std: np.ndarray  # float64[D], 1 where it was 0
  c_scores: dict[float, float]  # C -> worst-group accuracy on val's held-out half

  @property
  def heldout_worst_group_acc(self) -> float:
    """The best C's worst-group accuracy on val's held-out half (out of sample)."""
    return self.c_scores[self.best_c]


def standardizer(embeddings: np.ndarray, what: str = "training embeddings"
                 ) -> tuple[np.ndarray, np.ndarray]:
  """``(mean, scale)`` of sklearn's ``StandardScaler`` on ``embeddings`` (scale 1
  for constant features)."""
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"DFR: expected {what} of shape [N>0, D], got {x.shape}.")
  scaler = StandardScaler().fit(x)
  return scaler.mean_, scaler.scale_


def _balanced_subset(per_group: list[np.ndarray],
                     rng: np.random.Generator) -> np.ndarray:
  """Every group subsampled (without replacement) to the smallest size."""
  m = min(len(idx) for idx in per_group)
  return np.concatenate([rng.permutation(idx)[:m] for idx in per_group])


def _split_halves(per_group: list[np.ndarray], rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Each group's rows split in two; the fit half gets the odd one out."""
  fit, score = [], []
  for idx in per_group:
    idx = rng.permutation(idx)
    k = len(idx) // 2
    score.append(idx[:k])
    fit.append(idx[k:])
  return fit, score


# As the authors' DFR scripts (sklearn's default is 100).
MAX_ITER = 10_000


def _l1_logreg(c: float, rng: np.random.Generator) -> LogisticRegression:
  """L1 logistic regression with liblinear; sklearn 1.8 replaced ``penalty``
  with ``l1_ratio=1``, which older versions read only for elastic net."""
  kwargs = dict(C=float(c), solver="liblinear", max_iter=MAX_ITER,
                random_state=int(rng.integers(2**31 - 1)))
  if LogisticRegression().get_params()["penalty"] == "deprecated":
    return LogisticRegression(l1_ratio=1.0, **kwargs)
  return LogisticRegression(penalty="l1", **kwargs)


def _fit(x: np.ndarray, y: np.ndarray, classes: np.ndarray, c: float,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """``(coef [K, D], intercept [K])``: one binary fit (positive ``classes[1]``),
  or one-vs-rest done here (sklearn >= 1.8 refuses multiclass liblinear)."""
  positives = classes[1:] if len(classes) == 2 else classes
  coefs, intercepts = [], []
  for k in positives:
    target = (y == k).astype(np.int64)
    if target.min() == target.max():
      raise ValueError(f"DFR: class {k} is all or nothing of a fit subset.")
    model = _l1_logreg(c, rng).fit(x, target)
    coefs.append(model.coef_[0])
    intercepts.append(model.intercept_[0])
  return np.stack(coefs), np.asarray(intercepts)


def _labels(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
  if scores.shape[1] == 1:
    return classes[(scores[:, 0] > 0).astype(np.int64)]
  return classes[np.argmax(scores, axis=1)]


def _validated(
    val_embeddings: np.ndarray, val_labels: np.ndarray,
    val_groups: np.ndarray, num_groups: int,
    group_names: Sequence[str] | None, dims: int,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
  """Val arrays as float64/int64, rows per group and the sorted classes."""
  x = np.asarray(val_embeddings, np.float64)
  y = np.asarray(val_labels).astype(np.int64)
  g = np.asarray(val_groups).astype(np.int64)
  if x.ndim != 2 or x.shape[1] != dims or len(y) != len(x) or len(g) != len(x):
    raise ValueError(
        f"DFR: val embeddings {x.shape}, labels {y.shape} and groups "
        f"{g.shape} must be [N, {dims}], [N], [N] ({dims} = the training "
        "embeddings' width).")
  per_group = [np.flatnonzero(g == k) for k in range(num_groups)]
  for k, idx in enumerate(per_group):
    name = group_names[k] if group_names is not None else f"group {k}"
    if idx.size == 0:
      raise ValueError(
          f"DFR: validation group {name!r} (id {k}) has no examples; DFR "
          "balances the validation set over all groups and cannot balance on "
          "an empty group. Use a split with every group present, or the "
          "(y, b) scheme if synthetic-source groups are empty.")
    if idx.size < 2:
      raise ValueError(
          f"DFR: validation group {name!r} has {len(idx)} example; tuning C "
          "needs at least 2 (one in each half of val).")
  classes = np.unique(y)
  if len(classes) < 2:
    raise ValueError(f"DFR: val has a single class {classes}; need two or more.")
  return x, y, per_group, classes


def fit_dfr(
    train_embeddings: np.ndarray,
    val_embeddings: np.ndarray,
    val_labels: np.ndarray,
    val_groups: np.ndarray,
    num_groups: int,
    c_grid: Sequence[float],
    num_refits: int = 20,
    seed: int = 0,
    group_names: Sequence[str] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> DFRResult:
  """Tunes C on val halves, then averages ``num_refits`` balanced fits.

  Only the mean and std of ``train_embeddings`` are used. Every group needs
  two val examples (one per half); ``group_names`` name them in errors.
  ``should_stop(fits_done)`` True raises ``StageInterrupted`` after a fit
  (the rerun redoes DFR, which is deterministic).
  """
  mean, std = standardizer(train_embeddings)
  x, y, per_group, classes = _validated(
      val_embeddings, val_labels, val_groups, num_groups, group_names,
      mean.shape[0])
  if not c_grid or num_refits < 1:
    raise ValueError(
        f"DFR: need a non-empty c_grid and num_refits >= 1, got {c_grid!r} "
        f"and {num_refits}.")
  total = len(c_grid) + num_refits
  done = iter(range(1, total + 1))

  def check() -> None:
    step = next(done)
    if should_stop is not None and should_stop(step):
      from ffr_jax.training.stage import StageInterrupted  # pylint: disable=g-import-not-at-top  # jax-free module
      raise StageInterrupted("dfr", step, total)

  rng = np.random.default_rng(seed)
  c_scores = _tune_c(x, y, classes, per_group, c_grid, rng, check)
  best_c = max(c_scores, key=c_scores.get)  # first maximum in grid order

  x = (x - mean) / std
  # Every balanced subset holds every group and so every class: the coef rows
  # line up across refits and can be averaged.
  fits = []
  for _ in range(num_refits):
    rows = _balanced_subset(per_group, rng)
    fits.append(_fit(x[rows], y[rows], classes, best_c, rng))
    check()
  coefs, intercepts = zip(*fits)
  return DFRResult(
      best_c=float(best_c),
      coef=np.mean(coefs, axis=0),
      intercept=np.mean(intercepts, axis=0),
      classes=classes,
      mean=mean,
      std=std,
      c_scores=c_scores,
  )


def _tune_c(x: np.ndarray, y: np.ndarray, classes: np.ndarray,
            per_group: list[np.ndarray], c_grid: Sequence[float],
            rng: np.random.Generator,
            check: Callable[[], None] = lambda: None) -> dict[float, float]:
  """Worst-group accuracy on the score half for each C (fit half balanced).

  ``x`` is the raw val embeddings: as the canonical ``dfr_on_validation_tune``,
  the scaler is fitted on the balanced fit rows and applied to both halves.
  """
  fit_groups, score_groups = _split_halves(per_group, rng)
  rows = _balanced_subset(fit_groups, rng)
  mean, std = standardizer(x[rows], "the balanced fit half of val")
  x = (x - mean) / std
  scores = {}
  for c in c_grid:
    coef, intercept = _fit(x[rows], y[rows], classes, c, rng)
    pred = _labels(x @ coef.T + intercept, classes)
    scores[float(c)] = float(min(np.mean(pred[idx] == y[idx])
                                 for idx in score_groups))
    check()
  return scores


def logits(result: DFRResult, embeddings: np.ndarray) -> np.ndarray:
  """Decision scores ``[N, K]`` of the averaged classifier on raw embeddings."""
  x = (np.asarray(embeddings, np.float64) - result.mean) / result.std
  return x @ result.coef.T + result.intercept


def predict(result: DFRResult, embeddings: np.ndarray) -> np.ndarray:
  """Predicted class labels, int64[N]: sign (binary) or argmax (OvR)."""
  return _labels(logits(result, embeddings), result.classes)
