"""Real vs synthetic embeddings: a t-SNE picture and two numbers behind it.

t-SNE (the paper's Figure 5) is easy to over-read, so each run also gets:

* **probe accuracy**: a cross-validated linear real-vs-synthetic probe on a
  sample balanced per group (chance 0.5; 1.0: the embedding carries the source).
* **normalised centroid distance** per ``(y, b)`` group: real-to-synthetic
  centroid distance over the mean within-source RMS spread (about 0 for one
  distribution, above 1 for clusters further apart than they are wide); the
  same between real groups is the reference scale.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from ffr_jax.data.types import REAL, SYNTHETIC, DatasetSpec, Examples, GroupScheme
from ffr_jax.reporting import results as results_lib

PCA_DIMS = 50


def _single_threaded():
  """scikit-learn's OpenMP/BLAS pools, limited to one thread: competing with
  XLA's spinning CPU threads, they made t-SNE 50x slower on 2 cores."""
  # threadpoolctl is a dependency of scikit-learn.
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  return threadpool_limits(limits=1)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """Cross-validated real-vs-synthetic accuracy (chance 0.5)."""

  accuracy: float  # mean over the folds
  std: float  # over the folds
  folds: int
  per_source: int  # examples per source after balancing


def balanced_rows(source: np.ndarray, groups: np.ndarray, seed: int = 0
                  ) -> np.ndarray:
  """Row indices with equally many real and synthetic rows in every group."""
  rng = np.random.default_rng(seed)
  keep = []
  for g in np.unique(groups):
    real = np.flatnonzero((groups == g) & (source == REAL))
    syn = np.flatnonzero((groups == g) & (source == SYNTHETIC))
    n = min(len(real), len(syn))
    keep += [rng.permutation(real)[:n], rng.permutation(syn)[:n]]
  return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def probe_accuracy(embeddings: np.ndarray, source: np.ndarray,
                   groups: np.ndarray, folds: int = 5, seed: int = 0
                   ) -> ProbeResult:
  """Accuracy of a linear probe on ``embeddings [N, D]`` telling ``source``.

  Real and synthetic are balanced within each of ``groups``; ``folds`` shrinks
  to the smallest group-source cell.
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import StratifiedKFold, cross_val_score  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  rows = balanced_rows(source, groups, seed)
  x, s, g = embeddings[rows], source[rows], groups[rows]
  per_source = int((s == REAL).sum())
  if per_source < 2:
    raise ValueError("The probe needs at least 2 real and 2 synthetic "
                     f"embeddings in matching groups; got {per_source}.")
  # Stratify on (group, source) so every fold keeps the balance.
  strata = 2 * g + s
  folds = int(max(2, min(folds, np.bincount(strata)[np.unique(strata)].min())))
  clf = make_pipeline(StandardScaler(),
                      LogisticRegression(C=1.0, max_iter=5000))
  splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed)
                .split(x, strata))
  with _single_threaded():
    scores = cross_val_score(clf, x, s, cv=splits, scoring="accuracy")
  return ProbeResult(accuracy=float(np.mean(scores)),
                     std=float(np.std(scores)), folds=folds,
                     per_source=per_source)


def _spread(x: np.ndarray) -> float:
  """Root mean squared distance to the centroid."""
  return float(np.sqrt(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1))))


def normalized_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Centroid distance of ``a`` and ``b`` over their mean spread."""
  gap = float(np.linalg.norm(a.mean(0) - b.mean(0)))
  spread = 0.5 * (_spread(a) + _spread(b))
  if spread > 0:
    return gap / spread
  return float("inf") if gap > 0 else 0.0


def centroid_distances(embeddings: np.ndarray, source: np.ndarray,
                       groups: np.ndarray, names: list[str]) -> dict:
  """``{"per_group": {name: d}, "mean", "reference_group_distance"}``.

  The reference is the mean ``d`` between the real rows of two groups; groups
  lacking a source are left out.
  """
  per_group, real_groups = {}, []
  for g, name in enumerate(names):
    real = embeddings[(groups == g) & (source == REAL)]
    syn = embeddings[(groups == g) & (source == SYNTHETIC)]
    if len(real) >= 2:
      real_groups.append(real)
      if len(syn) >= 2:
        per_group[name] = normalized_distance(real, syn)
  ref = [normalized_distance(a, b)
         for a, b in itertools.combinations(real_groups, 2)]
  return {"per_group": per_group,
          "mean": float(np.mean(list(per_group.values()))) if per_group else None,
          "reference_group_distance": float(np.mean(ref)) if ref else None}


def tsne_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
  """2-D t-SNE of standardised ``embeddings`` (PCA to 50 dimensions first)."""
  from sklearn import decomposition, manifold  # pylint: disable=g-import-not-at-top
  x = np.asarray(embeddings, np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-8)
  perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
  with _single_threaded():
    if x.shape[1] > PCA_DIMS and x.shape[0] > PCA_DIMS:
      # The usual t-SNE practice: PCA removes noise dimensions and makes the
      # neighbour search cheap for ResNet50's 2048-d embeddings.
      x = decomposition.PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    return manifold.TSNE(2, perplexity=perplexity, init="pca",
                         random_state=seed).fit_transform(x)


@dataclasses.dataclass(frozen=True)
class RunEmbeddings:
  """One run's embeddings of a sample and what was measured on them."""

  name: str
  source: np.ndarray
  groups: np.ndarray
  tsne: np.ndarray
  probe: ProbeResult
  distances: dict


def measure(name: str, embeddings: np.ndarray, examples: Examples,
            spec: DatasetSpec, seed: int = 0) -> RunEmbeddings:
  """Probe, centroid distances and t-SNE of one run's embeddings."""
  groups = GroupScheme(spec, by_source=False).ids(examples)
  names = [spec.group_name(g) for g in range(len(spec.groups))]
  return RunEmbeddings(
      name=name, source=examples.source, groups=groups,
      tsne=tsne_2d(embeddings, seed),
      probe=probe_accuracy(embeddings, examples.source, groups, seed=seed),
      distances=centroid_distances(embeddings, examples.source, groups, names))


def to_json(r: RunEmbeddings) -> dict:
  return {"probe_accuracy": r.probe.accuracy, "probe_std": r.probe.std,
          "probe_folds": r.probe.folds, "probe_per_source": r.probe.per_source,
          "centroid_distance": r.distances["per_group"],
          "mean_centroid_distance": r.distances["mean"],
          "reference_group_distance": r.distances["reference_group_distance"]}


def plot(results: list[RunEmbeddings], spec: DatasetSpec, path: str,
         title: str = "") -> None:
  """t-SNE per run side by side: by source (top) and by group (bottom)."""
  plt = results_lib.pyplot()
  n = len(results)
  fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 7.6), squeeze=False,
                           layout="constrained")
  cmap = plt.get_cmap("tab10")
  for col, r in enumerate(results):
    top, bottom = axes[0, col], axes[1, col]
    for s, (label, colour) in enumerate((("real", "tab:blue"),
                                         ("synthetic", "tab:orange"))):
      m = r.source == s
      top.scatter(*r.tsne[m].T, s=6, alpha=0.6, c=colour, label=label,
                  linewidths=0)
    for g in range(len(spec.groups)):
      for s, marker in ((REAL, "o"), (SYNTHETIC, "x")):
        m = (r.groups == g) & (r.source == s)
        bottom.scatter(*r.tsne[m].T, s=8 if s == REAL else 10, alpha=0.7,
                       marker=marker, color=cmap(g % 10), linewidths=0.8,
                       label=spec.group_name(g) if s == REAL else None)
    d = r.distances["mean"]
    top.set_title(f"{r.name}\nprobe {r.probe.accuracy:.2f}, "
                  f"dist {d:.2f}" if d is not None else r.name, fontsize=9)
    for ax in (top, bottom):
      ax.set_xticks([])
      ax.set_yticks([])
  axes[1, 0].set_ylabel("by group (o real, x synthetic)", fontsize=8)
  axes[0, 0].set_ylabel("by source", fontsize=8)
  handles, labels = [], []
  for ax in axes[:, 0]:
    h, l = ax.get_legend_handles_labels()
    handles, labels = handles + h, labels + l
  # Below the panels, in as many columns as the figure is wide.
  fig.legend(handles, labels, loc="outside lower center", ncol=2 * n,
             fontsize=7, markerscale=2)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=120)
  plt.close(fig)
