"""The paper's Figures 3-4, Tables 1-3 and claims' tests as markdown and PNG.

Mean ± sample std over seeds; missing is ``—``, never zero.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ffr_jax.reporting import aggregate as agg
from ffr_jax.reporting import claims as claims_lib
from ffr_jax.reporting import results as results_lib
from ffr_jax.reporting.aggregate import Cell, Selection, Stat

MODES = ("none", "usb", "asb", "ffr")  # Figures 3 and 4
FIG4_METHODS = ("erm", "groupdro", "resampling", "dfr")
TABLE1_ROWS = (("stage1_only", "Stage 1 only"), ("none", "Stage 2 only"),
               ("stage2_then_1", "Stage 2 → Stage 1"),
               ("ffr", "Stage 1 → Stage 2 (FFR)"))
TABLE2_ROWS = (("none", "No synthetic data"),
               ("ffr_biased", "FFR, biased pretraining"),
               ("ffr", "FFR, balanced pretraining"))
TABLE3_ROWS = (("usb", "USB"), ("asb", "ASB"), ("ffr", "FFR"))
NAMES = {"none": "None", "usb": "USB", "asb": "ASB", "ffr": "FFR",
         "erm": "ERM", "groupdro": "GroupDRO", "resampling": "Resampling",
         "dfr": "DFR"}
MISSING = "—"
CLAIMS_RULE = (
    "p: exact two-sided Wilcoxon signed-rank test, Holm-adjusted over the "
    "claims with pairs; interval: 95% bootstrap of the mean difference "
    "(10,000 resamples, seed 0). **supported**: Holm p < 0.05 and the interval "
    "above 0; **contradicted**: Holm p < 0.05 and the interval below 0; "
    "else **not resolved**.")
SELECTION_NOTE = (
    "the selection score is the validation worst-group accuracy of the "
    "selected epoch (`val`), for DFR the backbone's validation WA before the "
    "last-layer refit (`backbone_val`), since DFR's own val WA is measured on "
    "the data the refit head was fitted on")


def _cells(condition: tuple, dataset_ratios: dict[str, list[float]],
           mode: str, method: str) -> list[Cell]:
  return [Cell(condition, d, r, mode, method)
          for d, ratios in dataset_ratios.items() for r in ratios]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A markdown table; a note instead when every row holds only ``—``."""
  if all(all(v == MISSING for v in row[1:]) for row in rows):
    return "_No runs for this table._"
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _save(plt, fig, title: str, path: str) -> None:
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def figure3_table(sel: dict[Cell, Selection], condition: tuple) -> str:
  """Per dataset and ratio: WA and BA of each mode with ERM."""
  dr = agg.datasets_and_ratios(sel, condition)
  header = ["dataset", "bias ratio"] + [
      f"{NAMES[m]} {k}" for m in MODES for k in ("WA", "BA")]
  rows = []
  for d, ratios in dr.items():
    for r in ratios:
      rows.append([d, results_lib.ratio_label(r)] + [
          agg.fmt(agg.average(sel, [Cell(condition, d, r, m, "erm")], k))
          for m in MODES for k in ("test_wa", "test_ba")])
  return _table(header, rows)


def figure3(sel: dict[Cell, Selection], condition: tuple, path: str) -> bool:
  """Draws Figure 3; returns False (and draws nothing) without any data."""
  dr = agg.datasets_and_ratios(sel, condition)
  if not any(Cell(condition, d, r, m, "erm") in sel
             for d, rs in dr.items() for r in rs for m in MODES):
    return False
  plt = results_lib.pyplot()
  fig, axes = plt.subplots(len(dr), 2, figsize=(9, 3.2 * len(dr) + 0.4),
                           squeeze=False, layout="constrained")
  for row, (d, ratios) in enumerate(dr.items()):
    x = list(range(len(ratios)))  # even spacing: 95%, 99%, 99.9% are close
    for col, (metric, label) in enumerate((("test_wa", "worst-group acc"),
                                           ("test_ba", "balanced acc"))):
      ax = axes[row][col]
      for i, m in enumerate(MODES):
        xs, ys, es = [], [], []
        for xi, r in zip(x, ratios):
          st = agg.average(sel, [Cell(condition, d, r, m, "erm")], metric)
          if st is not None:
            xs.append(xi + (i - 1.5) * 0.04)
            ys.append(100 * st.mean)
            es.append(100 * (st.std or 0.0))
        if xs:
          ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                      label=NAMES[m])
      ax.set_xticks(x, [results_lib.ratio_label(r) for r in ratios])
      ax.set_ylim(-3, 103)
      ax.set_xlabel("bias ratio")
      ax.set_ylabel(f"test {label} (%)")
      ax.set_title(f"{d}: {label}")
      ax.grid(alpha=0.3)
  fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center",
             ncol=len(MODES), fontsize=8)
  _save(plt, fig, "Figure 3: modes with ERM (mean ± sample std over seeds)",
        path)
  return True


def figure4_values(sel: dict[Cell, Selection], condition: tuple, metric: str
                   ) -> dict[tuple[str, str], Stat | None]:
  """``{(method, mode): average over datasets and ratios}``."""
  dr = agg.datasets_and_ratios(sel, condition)
  return {(meth, m): agg.average(sel, _cells(condition, dr, m, meth), metric)
          for meth in FIG4_METHODS for m in MODES}


def figure4_table(sel: dict[Cell, Selection], condition: tuple) -> str:
  parts = []
  for metric, label in (("test_wa", "worst-group accuracy"),
                        ("test_ba", "balanced accuracy")):
    values = figure4_values(sel, condition, metric)
    rows = [[NAMES[meth]] + [agg.fmt(values[(meth, m)]) for m in MODES]
            for meth in FIG4_METHODS]
    parts.append(f"Test {label}:\n\n" + _table(
        ["SD-Free \\ SD-Aug"] + [NAMES[m] for m in MODES], rows))
  return "\n\n".join(parts)


def figure4(sel: dict[Cell, Selection], condition: tuple, path: str) -> bool:
  values = {k: figure4_values(sel, condition, k) for k in ("test_wa",
                                                           "test_ba")}
  if all(v is None for vs in values.values() for v in vs.values()):
    return False
  plt = results_lib.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, (metric, label) in zip(axes, (("test_wa", "worst-group acc"),
                                        ("test_ba", "balanced acc"))):
    grid = np.full((len(FIG4_METHODS), len(MODES)), np.nan)
    for i, meth in enumerate(FIG4_METHODS):
      for j, m in enumerate(MODES):
        st = values[metric][(meth, m)]
        if st is not None:
          grid[i, j] = 100 * st.mean
        text = MISSING if st is None else (
            f"{100 * st.mean:.1f}" + ("" if st.std is None
                                      else f"\n±{100 * st.std:.1f}"))
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="black" if st is None or st.mean > 0.6 else "white")
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100)
    ax.set_xticks(range(len(MODES)), [NAMES[m] for m in MODES])
    ax.set_yticks(range(len(FIG4_METHODS)), [NAMES[m] for m in FIG4_METHODS])
    ax.set_xlabel("SD-Aug")
    ax.set_ylabel("SD-Free")
    ax.set_title(f"test {label} (%)")
  _save(plt, fig, "Figure 4: averaged over datasets and bias ratios "
        "(mean ± sample std over seeds)", path)
  return True


def rows_table(sel: dict[Cell, Selection], condition: tuple,
               rows: Sequence[tuple[str, str]],
               metrics: Sequence[tuple[str, str]]) -> str:
  """One row per mode (ERM), one column block per dataset (ratios averaged)."""
  dr = agg.datasets_and_ratios(sel, condition)
  header = ["mode"] + [f"{d} {label}" for d in dr for _, label in metrics]
  out = []
  for mode, label in rows:
    row = [f"{label} (`{mode}`)"]
    for d, ratios in dr.items():
      cells = _cells(condition, {d: ratios}, mode, "erm")
      row += [agg.fmt(agg.average(sel, cells, m)) for m, _ in metrics]
    out.append(row)
  return _table(header, out)


WA_BA = (("test_wa", "WA"), ("test_ba", "BA"))
REAL_SYN = (("test_wa", "real WA"), ("test_ba", "real BA"),
            ("syn_wa", "synthetic WA"), ("syn_ba", "synthetic BA"))


def conditions_table(sel: dict[Cell, Selection]) -> str:
  """Cells run under several conditions, one column pair per condition."""
  conds = agg.conditions(sel)
  base: dict[tuple, set] = {}
  for c in sel:
    base.setdefault((c.dataset, c.bias_ratio, c.mode, c.method),
                    set()).add(c.condition)
  keys = sorted(k for k, v in base.items() if len(v) > 1)
  if len(conds) < 2 or not keys:
    return ""
  header = ["dataset", "ratio", "mode", "method"] + [
      f"{_condition_label(c)} {m}" for c in conds for m in ("WA", "BA")]
  rows = []
  for d, r, mode, method in keys:
    rows.append([d, results_lib.ratio_label(r), mode, method] + [
        agg.fmt(agg.average(sel, [Cell(c, d, r, mode, method)], k))
        for c in conds for k in ("test_wa", "test_ba")])
  return _table(header, rows)


def cells_table(sel: dict[Cell, Selection]) -> str:
  """Every cell: its condition, chosen hyperparameters, seeds and numbers."""
  header = ["condition", "dataset", "ratio", "mode", "method", "chosen",
            "seeds", "selected on", "selection WA", "val WA", "test WA",
            "test BA", "syn. WA", "syn. BA"]
  rows = []
  for cell in sorted(sel, key=lambda c: (repr(c.condition), c.dataset,
                                         c.bias_ratio, c.mode, c.method)):
    s = sel[cell]
    sources = ",".join(sorted({r.selection_source for r in s.runs.values()}))
    chosen = ", ".join(f"{k}={v}" for k, v in s.hparams) or "(only one)"
    if len(s.candidates) > 1:
      chosen += " of " + "; ".join(
          f"{', '.join(str(v) for _, v in h)}: {100 * score:.1f}"
          for h, score, _ in s.candidates)
    rows.append([_condition_label(cell.condition), cell.dataset,
                 results_lib.ratio_label(cell.bias_ratio), cell.mode,
                 cell.method, chosen,
                 ",".join(str(k) for k in s.runs),
                 f"`{sources}`"] +
                [agg.fmt(s.metric(m)) for m in agg.METRICS])
  return _table(header, rows)


def _condition_label(condition: tuple) -> str:
  return ", ".join(f"{k}={v}" for k, v in condition) or "(main)"


def _slug(condition: tuple) -> str:
  if not condition:
    return ""
  return "_" + "_".join(f"{k.split('.')[-1]}{v}" for k, v in condition)


def write_report(records: Sequence[agg.Record], out_dir: str,
                 title: str = "Results", preamble: str = "") -> str:
  """Writes ``report.md`` and the figures into ``out_dir``; returns the text."""
  os.makedirs(out_dir, exist_ok=True)
  sel = agg.select(records)
  hkeys, ckeys = agg.split_keys(records)
  lines = [f"# {title}", ""]
  if preamble:
    lines += [preamble, ""]
  lines += [
      f"{len(records)} finished runs, {len(sel)} cells. Numbers are test "
      "accuracies in %, **mean ± sample standard deviation (ddof=1) over "
      "seeds**; `(n=1)` marks a single seed, `—` a missing result. Per cell "
      "(dataset, bias ratio, mode, method"
      + (", " + ", ".join(ckeys) if ckeys else "") + ") the hyperparameters "
      + ("(" + ", ".join(hkeys) + ") " if hkeys else "")
      + "with the best mean selection score over seeds are kept; "
      + SELECTION_NOTE + ". Averages over bias ratios (and datasets) are "
      "taken per seed over cells that all have that seed, then summarised "
      "over seeds.", ""]
  conds = [c for c in agg.conditions(sel) if "control" not in dict(c)]
  main = max(conds, key=lambda c: sum(cell.condition == c for cell in sel))
  lines += ["## The paper's claims, tested", "",
            "Paired over (dataset, bias ratio, seed)"
            + (f" under {_condition_label(main)}" if len(conds) > 1 else "")
            + ", A - B in points. " + CLAIMS_RULE, "",
            claims_lib.table(claims_lib.evaluate(sel, main)), ""]
  controls = claims_lib.controls(records, sel, main)
  if controls:
    lines += ["## Controls", "", "FFR with ERM against each control run "
              "beside it (cells of their own, never candidates of FFR's "
              "selection), paired over (dataset, bias ratio, seed), A - B in "
              "points; each comparison has its own p (not in the claims' "
              "Holm family).", "", claims_lib.table(controls), ""]
  for condition in conds:
    slug = _slug(condition)
    if condition:
      lines += [f"## Condition: {_condition_label(condition)}", ""]
    h = "##" if not condition else "###"
    if condition != main:
      tested = [r for r in claims_lib.evaluate(sel, condition) if r.diffs.size]
      lines += [f"{h} The paper's claims under this condition", "",
                "As above, with a Holm family of its own; claims without "
                "pairs under this condition are left out.", "",
                claims_lib.table(tested) if tested else "No claim has pairs.",
                ""]
    lines += [f"{h} Figure 3: modes with ERM against the bias ratio", ""]
    if figure3(sel, condition, os.path.join(out_dir, f"figure3{slug}.png")):
      lines += [f"![Figure 3](figure3{slug}.png)", ""]
    lines += [figure3_table(sel, condition), ""]
    lines += [f"{h} Figure 4: SD-Free methods x SD-Aug modes, averaged over "
              "datasets and bias ratios", ""]
    if figure4(sel, condition, os.path.join(out_dir, f"figure4{slug}.png")):
      lines += [f"![Figure 4](figure4{slug}.png)", ""]
    lines += [figure4_table(sel, condition), ""]
    lines += [f"{h} Table 1: FFR stages (ERM, averaged over bias ratios)", "",
              rows_table(sel, condition, TABLE1_ROWS, WA_BA), ""]
    lines += [f"{h} Table 2: pretraining distribution (ERM, averaged over "
              "bias ratios)", "",
              rows_table(sel, condition, TABLE2_ROWS, WA_BA), ""]
    lines += [f"{h} Table 3: real vs held-out synthetic test data (ERM, "
              "averaged over bias ratios)", "",
              rows_table(sel, condition, TABLE3_ROWS, REAL_SYN), ""]
  by_condition = conditions_table(sel)
  if by_condition:
    lines += ["## Cells run under several conditions", "",
              "Test WA / BA of the same dataset, ratio, mode and method under "
              "each condition (" + ", ".join(ckeys) + ").", "", by_condition,
              ""]
  lines += ["## All cells", "", "`chosen`: the kept hyperparameters, then "
            "every candidate with its mean selection WA (%) over the seeds "
            "all candidates share; `seeds`: the kept setting's seeds; "
            "`selected on`: what the selection WA is (`val`, or "
            "`backbone_val` for DFR); `val WA`: the reported model's, for DFR "
            "the refit head's on the val data it was fitted on "
            "(optimistic).", "",
            cells_table(sel), ""]
  text = "\n".join(lines)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(text)
  return text
