"""``results.json`` of a run, and the summary table and chart of several runs."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from ffr_jax import config as config_lib
from ffr_jax.lifecycle import write_atomic

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2


def ratio_label(ratio: float) -> str:
  """``0.99`` -> ``99%``; the as-found setting (-1) by name, not as -100%."""
  return "as found" if ratio == config_lib.AS_FOUND else f"{100 * ratio:g}%"


def _jsonable(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if hasattr(obj, "item") and callable(obj.item):
    return obj.item()
  return obj


def run_results(*, config: ml_collections.ConfigDict, metrics: dict[str, dict],
                stage_results: dict, stage_dirs: dict[str, str],
                selection: dict, details: dict | None, synthetic_per_group: dict,
                fingerprint: str, wall_seconds: float) -> dict:
  """The ``results.json`` object of one mode x method.

  ``val`` and ``test`` hold ``{"worst_group_acc", "balanced_acc", "group_acc":
  {"y=0,b=1": acc, ...}, "acc"}`` (in [0, 1]) of the epoch val worst-group
  accuracy selects, after DFR's refit for DFR (``val_backbone``: before it).
  ``selection`` is the held-out number to select hyperparameters on; for DFR
  the backbone's, since the refit head's val score is in-sample.
  """
  last = list(stage_results)[-1]
  return _jsonable({
      "schema_version": SCHEMA_VERSION,
      "fingerprint": fingerprint,
      "dataset": config.data.name,
      "bias_ratio": float(config.data.bias_ratio),
      "mode": str(config.mode),
      "method": str(config.method),
      "seed": int(config.seed),
      **metrics,
      "selection": selection,
      "selected_epoch": stage_results[last].best_epoch,
      "stage_order": list(stage_results),  # training order (keys get sorted)
      "stages": {
          name: {"selected_epoch": r.best_epoch, **r.metrics,
                 "epoch0": r.epoch0, "dir": stage_dirs[name],
                 "fingerprint": r.fingerprint,
                 "wall_seconds": r.wall_seconds, "history": r.history}
          for name, r in stage_results.items()},
      # What the method did (DFR's C, JTT's error set, ...), under its name.
      **({str(config.method): details} if details else {}),
      "synthetic_per_group": {f"y={y},b={b}": n
                              for (y, b), n in synthetic_per_group.items()},
      "wall_seconds": wall_seconds,
      "config": config.to_dict(),
  })


def write_json_atomic(path: str, obj: Any) -> None:
  """:func:`lifecycle.write_atomic` of ``obj`` as JSON, on host 0 only."""
  if jax.process_index() == 0:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def read_results(run_dir: str) -> dict:
  path = os.path.join(run_dir, RESULTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No finished run in {run_dir} (no {RESULTS_FILE}).")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is damaged ({e}); move it aside and rerun the "
                     "training command to rebuild it.") from None


def summary_rows(runs: dict[str, dict]) -> list[dict]:
  return [{
      "run": name, "mode": r["mode"], "method": r["method"],
      "test_worst_group_acc": r["test"]["worst_group_acc"],
      "test_balanced_acc": r["test"]["balanced_acc"],
      "val_worst_group_acc": r["val"]["worst_group_acc"],
      "selected_epoch": r["selected_epoch"],
      "wall_seconds": r["wall_seconds"],
      "lr": config_lib.train_lr(ml_collections.ConfigDict(
          {"train": r["config"]["train"], "mode": r["mode"]})),
  } for name, r in runs.items()]


LEGEND = ("WA = worst-group accuracy, BA = balanced accuracy (test, %); lr = "
          "train.lr of the run (FFR: stage 2's); epoch = the one chosen by validation WA.")


def markdown_table(rows: list[dict]) -> str:
  lines = ["| mode | method | lr | test WA | test BA | val WA | epoch | time (s) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['mode']} | {r['method']} | {r['lr']:g} "
        f"| {100 * r['test_worst_group_acc']:.1f} "
        f"| {100 * r['test_balanced_acc']:.1f} "
        f"| {100 * r['val_worst_group_acc']:.1f} | {r['selected_epoch']} "
        f"| {r['wall_seconds']:.0f} |")
  return "\n".join(lines)


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (files only), imported on first use."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def bar_chart(rows: list[dict], path: str, title: str = "") -> None:
  """Test worst-group and balanced accuracy per run, as a PNG."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  plt = pyplot()

  labels = [r["run"] for r in rows]
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.8), layout="constrained")
  wa = [100 * r["test_worst_group_acc"] for r in rows]
  ba = [100 * r["test_balanced_acc"] for r in rows]
  ax.bar(x - 0.2, wa, 0.4, label="worst-group acc")
  ax.bar(x + 0.2, ba, 0.4, label="balanced acc")
  for xi, (a, b) in enumerate(zip(wa, ba)):
    ax.text(xi - 0.2, a + 1, f"{a:.0f}", ha="center", fontsize=8)
    ax.text(xi + 0.2, b + 1, f"{b:.0f}", ha="center", fontsize=8)
  ax.set_xticks(x, labels, rotation=20)
  ax.set_ylim(0, 105)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  fig.legend(loc="outside lower center", ncol=2, fontsize=8)  # off the bars
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_summary(workdir: str, runs: dict[str, dict]) -> str:
  """summary.json, summary.md and summary.png for several runs; returns the table."""
  rows = summary_rows(runs)
  table = markdown_table(rows)
  if jax.process_index() == 0:
    first = next(iter(runs.values()))
    title = f"{first['dataset']}, bias ratio {ratio_label(first['bias_ratio'])}"
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(rows, f, indent=2)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(f"# {title}\n\n{table}\n")
    bar_chart(rows, os.path.join(workdir, "summary.png"), title)
  return table
