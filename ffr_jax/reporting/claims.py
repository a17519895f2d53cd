"""The paper's claims as paired tests, labelled supported / contradicted / not resolved.

A claim says side A (a mode x method x metric) beats side B, paired over the
(dataset, bias ratio, seed) both selected cells ran; the rule is
``paper_report.CLAIMS_RULE`` (docs/experiments.md, "How a claim is judged").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ffr_jax.reporting.aggregate import Cell, Record, Selection
from ffr_jax.reporting.aggregate import candidates

ALPHA = 0.05
RESAMPLES = 10_000
SUPPORTED, CONTRADICTED, NOT_RESOLVED = "supported", "contradicted", "not resolved"


@dataclasses.dataclass(frozen=True)
class Side:
  mode: str
  method: str = "erm"
  metric: str = "test_wa"  # a Record attribute, e.g. "test_ba", "wa_ba_gap"

  def label(self) -> str:
    return f"{self.mode}/{self.method} {self.metric}"


@dataclasses.dataclass(frozen=True)
class Claim:
  """``a`` > ``b`` at the bias ratios >= ``min_ratio``."""

  text: str
  a: Side
  b: Side
  min_ratio: float = 0.0


def _sd_free(mode: str) -> list[Claim]:
  return [Claim(f"{m} improves {mode.upper()}", Side(mode, m), Side(mode))
          for m in ("groupdro", "resampling", "dfr")]


# The claims of docs/experiments.md that are paired comparisons of cells.
CLAIMS = (
    Claim("ERM on biased real data fails the minority groups (BA > WA)",
          Side("none", metric="test_ba"), Side("none")),
    Claim("FFR beats USB with ERM", Side("ffr"), Side("usb")),
    Claim("FFR beats ASB with ERM", Side("ffr"), Side("asb")),
    Claim("FFR beats USB with ERM at >= 99% bias", Side("ffr"), Side("usb"), 0.99),
    Claim("FFR beats ASB with ERM at >= 99% bias", Side("ffr"), Side("asb"), 0.99),
    Claim("Table 1: FFR beats stage 2 -> 1", Side("ffr"), Side("stage2_then_1")),
    Claim("Table 1: stage 2 -> 1 beats stage 1 only", Side("stage2_then_1"),
          Side("stage1_only")),
    Claim("Table 1: stage 1 only beats stage 2 only", Side("stage1_only"),
          Side("none")),
    Claim("Table 2: balanced pretraining beats biased", Side("ffr"),
          Side("ffr_biased")),
    Claim("Table 2: biased pretraining beats no synthetic data",
          Side("ffr_biased"), Side("none")),
    *_sd_free("usb"), *_sd_free("asb"), *_sd_free("ffr"),
    *[Claim(f"With {m}, FFR beats {other.upper()}", Side("ffr", m),
            Side(other, m))
      for m in ("groupdro", "resampling") for other in ("usb", "asb")],
    *[Claim(f"FFR with ERM beats {other.upper()} with {m}", Side("ffr"),
            Side(other, m))
      for other in ("usb", "asb") for m in ("groupdro", "resampling", "dfr")],
    *[Claim(f"Table 3: FFR's real BA - WA gap is smaller than {other.upper()}'s",
            Side(other, metric="wa_ba_gap"), Side("ffr", metric="wa_ba_gap"))
      for other in ("usb", "asb")],
    *[Claim(f"Table 3: FFR beats {other.upper()} on synthetic test data",
            Side("ffr", metric="syn_wa"), Side(other, metric="syn_wa"))
      for other in ("usb", "asb")],
)


@dataclasses.dataclass(frozen=True)
class Result:
  claim: Claim
  diffs: np.ndarray  # A - B in points, one per pair
  low: float | None = None
  high: float | None = None
  p: float | None = None
  p_holm: float | None = None
  verdict: str = NOT_RESOLVED


def signed_rank_p(diffs: Sequence[float]) -> float:
  """Exact two-sided Wilcoxon signed-rank p (zeros dropped, ties mid-ranked)."""
  d = np.round(np.asarray(diffs, float), 9)
  d = d[d != 0]
  if not d.size:
    return 1.0
  _, inverse, counts = np.unique(np.abs(d), return_inverse=True,
                                 return_counts=True)
  first = np.cumsum(counts) - counts
  ranks2 = (2 * first + counts + 1)[inverse]  # twice the mid-ranks: integers
  # The null distribution of twice the positive rank sum: each sign is a coin.
  dist = np.zeros(ranks2.sum() + 1)
  dist[0] = 1.0
  for r in ranks2:
    shifted = np.zeros_like(dist)
    shifted[r:] = dist[:-r]
    dist = 0.5 * (dist + shifted)
  t = ranks2[d > 0].sum()
  return float(min(1.0, 2 * min(dist[:t + 1].sum(), dist[t:].sum())))


def bootstrap_interval(diffs: Sequence[float]) -> tuple[float, float]:
  """The 95% percentile interval of the mean over seeded bootstrap resamples."""
  d = np.asarray(diffs, float)
  idx = np.random.default_rng(0).integers(0, len(d), (RESAMPLES, len(d)))
  low, high = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
  return float(low), float(high)


def holm(p: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values, in the input order."""
  p = np.asarray(p, float)
  order = np.argsort(p, kind="stable")
  steps = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
  out = np.empty_like(p)
  out[order] = np.maximum.accumulate(steps)
  return out


def verdict(p_holm: float, low: float, high: float) -> str:
  if p_holm < ALPHA and low > 0:
    return SUPPORTED
  if p_holm < ALPHA and high < 0:
    return CONTRADICTED
  return NOT_RESOLVED


def paired_diffs(sel: dict[Cell, Selection], condition: tuple, claim: Claim
                 ) -> np.ndarray:
  """A - B in points over the (dataset, ratio, seed) both cells have."""
  out = []
  for cell in sorted(sel):
    if (cell.condition != condition or cell.bias_ratio < claim.min_ratio or
        (cell.mode, cell.method) != (claim.a.mode, claim.a.method)):
      continue
    other = sel.get(dataclasses.replace(cell, mode=claim.b.mode,
                                        method=claim.b.method))
    if other is None:
      continue
    runs_a = sel[cell].runs
    for seed in sorted(set(runs_a) & set(other.runs)):
      a = getattr(runs_a[seed], claim.a.metric)
      b = getattr(other.runs[seed], claim.b.metric)
      if a is not None and b is not None:
        out.append(100 * (a - b))
  return np.asarray(out, float)


def evaluate(sel: dict[Cell, Selection], condition: tuple) -> list[Result]:
  """Every claim's test; claims without pairs stay unjudged (no p)."""
  results = [Result(c, paired_diffs(sel, condition, c)) for c in CLAIMS]
  tested = [i for i, r in enumerate(results) if r.diffs.size]
  p = [signed_rank_p(results[i].diffs) for i in tested]
  for i, pi, ph in zip(tested, p, holm(p) if p else []):
    low, high = bootstrap_interval(results[i].diffs)
    results[i] = dataclasses.replace(results[i], low=low, high=high, p=pi,
                                     p_holm=float(ph),
                                     verdict=verdict(ph, low, high))
  return results


def _tested(claim: Claim, pairs: dict, other: dict) -> Result | None:
  """``claim`` over the keys both dicts of test WA have; its own p, no Holm."""
  keys = sorted(set(pairs) & set(other))
  if not keys:
    return None
  diffs = np.asarray([100 * (pairs[k] - other[k]) for k in keys], float)
  p = signed_rank_p(diffs)
  low, high = bootstrap_interval(diffs)
  return Result(claim, diffs, low, high, p, p, verdict(p, low, high))


def controls(records: Sequence[Record], sel: dict[Cell, Selection],
             condition: tuple) -> list[Result]:
  """FFR-ERM against each control under ``condition``, paired over (dataset,
  ratio, seed): selected against selected, then at each of FFR's lrs (a
  control with one lr pairs it with all of them). Not in the Holm family."""
  by: dict[tuple, dict] = {}  # (control, lr) -> {(dataset, ratio, seed): wa}
  for cell, options in candidates(records).items():
    if ((cell.mode, cell.method) != ("ffr", "erm") or
        cell.condition[:len(condition)] != condition):
      continue
    for r in (r for runs in options.values() for r in runs.values()):
      by.setdefault((r.control, r.lr), {})[
          (r.dataset, r.bias_ratio, r.seed)] = r.test_wa
  out = []
  for name in sorted({c for c, _ in by if c}):

    def chosen(control: tuple) -> dict:
      return {(c.dataset, c.bias_ratio, seed): run.test_wa
              for c, s in sel.items() if c.condition == condition + control
              and (c.mode, c.method) == ("ffr", "erm")
              for seed, run in s.runs.items()}

    own = (("control", name),)
    results = [_tested(Claim(f"FFR (selected) against {name} (selected)",
                             Side("ffr"), Side(f"ffr [{name}]")),
                       chosen(()), chosen(own))]
    lrs = sorted(lr for c, lr in by if c == name)
    for lr in sorted(lr for c, lr in by if not c):
      if len(lrs) > 1 and lr not in lrs:
        continue
      at = f" at lr {lr:g}" if len(lrs) > 1 else ""
      results.append(_tested(
          Claim(f"FFR at lr {lr:g} against {name}{at}", Side("ffr"),
                Side(f"ffr [{name}]")),
          by[("", lr)], by[(name, lr if at else lrs[0])]))
    out += [r for r in results if r is not None]
  return out


def table(results: Sequence[Result]) -> str:
  """The claims as a markdown table (untested claims are listed as such)."""
  lines = ["| claim | A | B | pairs | mean A - B | 95% interval | p | Holm p "
           "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    c = r.claim
    head = f"| {c.text} | {c.a.label()} | {c.b.label()} | {r.diffs.size} |"
    if not r.diffs.size:
      lines.append(head + " — | — | — | — | no runs |")
      continue
    lines.append(
        f"{head} {r.diffs.mean():+.1f} | [{r.low:+.1f}, {r.high:+.1f}] | "
        f"{r.p:.2g} | {r.p_holm:.2g} | **{r.verdict}** |")
  return "\n".join(lines)
