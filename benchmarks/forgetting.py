"""FFR's stage 2 against its starting point, from a finished demo sweep.

For every FFR run with ERM, the stage-1 model on the real test split (stage
2's epoch 0, recorded before any stage-2 step) beside the stage-2 epoch that
validation chose and the last stage-2 epoch, per stage-2 learning rate and
bias ratio: does fine-tuning on the biased real data add to what synthetic
pretraining learned, or erase it? Also the same numbers for a fixed setting
(lr 1e-3, no freeze-BN) under each condition of the generated images, so the
fingerprint and content-gap ablations compare like with like.

Usage::

    PYTHONPATH=. python benchmarks/forgetting.py --workdir=DIR

Prints tables (test worst-group accuracy, %, mean +- sample std over seeds)
and writes benchmarks/results/forgetting.json.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

from ffr_jax.reporting import aggregate
from ffr_jax.reporting import results as results_lib


OUT = os.path.join(os.path.dirname(__file__), "results", "forgetting.json")


def _runs(workdir: str) -> list[dict]:
  return [results_lib.read_results(os.path.dirname(path))
          for path in aggregate.results_paths(workdir)]


def _condition(r: dict) -> str:
  b = r["config"]["benchmark"]
  return f"gap={b['content_gap']:g},strength={b['strength']:g}"


def _stat(values: list[float]) -> str:
  """Mean +- sample std (ddof=1, as every report), with the count (one value
  already says ``(n=1)``)."""
  s = aggregate.stat(values)
  return aggregate.fmt(s) + (f" (n={s.n})" if s is not None and s.n > 1 else "")


def stage2_rows(runs: list[dict]) -> list[dict]:
  """FFR + ERM: epoch 0 (the stage-1 model), the selected and the last epoch."""
  cells = defaultdict(lambda: defaultdict(list))
  for r in runs:
    if r["mode"] != "ffr" or r["method"] != "erm":
      continue
    s2 = r["stages"]["stage2"]
    key = (_condition(r), r["bias_ratio"], r["config"]["train"]["lr"],
           r["config"]["train"]["freeze_bn"])
    cells[key]["epoch0"].append(s2["epoch0"]["test"]["worst_group_acc"])
    cells[key]["selected"].append(r["test"]["worst_group_acc"])
    cells[key]["last"].append(s2["history"][-1]["test"]["worst_group_acc"])
    cells[key]["selected_epoch"].append(s2["selected_epoch"])
  rows = []
  for (cond, ratio, lr, freeze), c in sorted(cells.items()):
    rows.append({"condition": cond, "bias_ratio": ratio, "lr": lr, "freeze_bn": freeze,
                 "epoch0_test_wa": c["epoch0"], "selected_test_wa": c["selected"],
                 "last_test_wa": c["last"], "selected_epoch": c["selected_epoch"]})
  return rows


def fixed_setting_rows(runs: list[dict], lr: float = 1e-3) -> list[dict]:
  """Test WA at 99% bias per mode and condition, at one setting (no selection)."""
  cells = defaultdict(list)
  for r in runs:
    t = r["config"]["train"]
    if (r["method"] != "erm" or r["bias_ratio"] != 0.99 or t["lr"] != lr
        or t["freeze_bn"] or r["mode"] not in ("usb", "asb", "ffr", "stage1_only")):
      continue
    cells[(r["mode"], _condition(r))].append(r["test"]["worst_group_acc"])
  return [{"mode": m, "condition": c, "lr": lr, "test_wa": v}
          for (m, c), v in sorted(cells.items())]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a finished paper.py:demo sweep")
  p.add_argument("--out", default=OUT)
  args = p.parse_args()
  runs = _runs(args.workdir)
  stage2 = stage2_rows(runs)
  fixed = fixed_setting_rows(runs)
  print("FFR + ERM, stage 2 (test WA %): epoch 0 = the stage-1 model")
  print("| condition | bias ratio | stage-2 lr | freeze-BN | epoch 0 | selected epoch | last epoch | epochs chosen |")
  print("|---|---|---|---|---|---|---|---|")
  for r in stage2:
    print(f"| {r['condition']} | {r['bias_ratio']:g} | {r['lr']:g} | {r['freeze_bn']} | "
          f"{_stat(r['epoch0_test_wa'])} | {_stat(r['selected_test_wa'])} | "
          f"{_stat(r['last_test_wa'])} | {r['selected_epoch']} |")
  print("\nERM at 99% bias, lr 1e-3, no freeze-BN (test WA %), per condition")
  print("| mode | condition | test WA |")
  print("|---|---|---|")
  for r in fixed:
    print(f"| {r['mode']} | {r['condition']} | {_stat(r['test_wa'])} |")
  results_lib.write_json_atomic(args.out, {
      "workdir": os.path.abspath(args.workdir), "runs": len(runs),
      "ffr_stage2": stage2, "fixed_setting_99": fixed})
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
