"""The built-in benchmark's pre-registered calibration (docs/benchmark.md).

Runs the protocol's steps and prints its table; every number that picks a
default comes from here, and none of them involves mixing real and synthetic
data or FFR:

* ``probe``: (c) the real-vs-synthetic linear probe for every
  ``(content_gap, strength)`` pair of the grid (no training).
* ``none``: (a) ``mode=none`` with ERM (real data only) at every bias ratio
  and seed.
* ``stage1_only``: (b) ``mode=stage1_only`` with ERM (synthetic data only)
  for every pair whose probe passed (c), in the protocol's order.
* ``table``: the table of every setting run so far, each criterion, and the
  choice the protocol's rule makes.
* ``val_recheck``: steps 2 and 4 again on fresh folders, the rule applied to
  *validation* WA (issue 24; the original criteria used test WA); kept under
  ``val_recheck``, beside whether each run's test WA came out as recorded.

Usage::

    PYTHONPATH=. python benchmarks/calibration.py probe
    PYTHONPATH=. python benchmarks/calibration.py none --workdir=/tmp/calib
    PYTHONPATH=. python benchmarks/calibration.py stage1_only --workdir=/tmp/calib
    PYTHONPATH=. python benchmarks/calibration.py table --workdir=/tmp/calib

Runs are trained by the sweep engine in this process (resumable: a rerun
skips finished runs); their numbers, not the workdir, are kept in
benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import ml_collections

import benchmark_properties as props
from ffr_jax import experiments
from ffr_jax import demo
from ffr_jax.demo import upstream
from ffr_jax.reporting import aggregate
from ffr_jax.reporting import results as results_lib

OUT = os.path.join(os.path.dirname(__file__), "results", "calibration.json")
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "demo.py")
# The protocol's fixed grid (docs/benchmark.md, "Calibration protocol").
RATIOS = (0.95, 0.97, 0.99, 0.999)
SEEDS = (0, 1, 2)
CONTENT_GAPS = (0.0, 0.25, 0.5, 0.75, 1.0)
STRENGTHS = (0.25, 0.5, 1.0)
# The paper's SpuCo Animals Table 1 (test worst-group accuracy, %): stage 2
# only (real data) and stage 1 only (synthetic data), and the band around them.
NONE_TARGET, STAGE1_TARGET, BAND = 30.6, 51.2, 8.0
PROBE_MIN = 0.95
PROBE_PER_GROUP = 250  # 2000 real vs 2000 generated images
TIE = 0.5  # WA points within which the smaller knobs win


def _load(path: str) -> dict:
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return {}


def _save(record: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  record["machine"] = {"cpu": platform.processor() or platform.machine(),
                       "python": platform.python_version()}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, sort_keys=True)


def pair_key(content_gap: float, strength: float) -> str:
  return f"gap={content_gap:g},strength={strength:g}"


def probe_accuracy(content_gap: float, strength: float, size: int = 32) -> float:
  """(c): held-out accuracy of the pixel probe, real vs generated."""
  return props.real_vs_generated(PROBE_PER_GROUP, size, strength, content_gap)[0]


def _sweep(grid: list[dict]) -> ml_collections.ConfigDict:
  # train.lr 1e-3: the demo's rate for every mode when the calibration ran.
  return ml_collections.ConfigDict({"config": DEMO_CONFIG,
                                    "fixed": (("train.lr", 1e-3),),
                                    "grid": tuple(grid)})


def _common(mode: str) -> dict:
  return {"mode": (mode,), "method": ("erm",), "data.bias_ratio": RATIOS,
          "seed": SEEDS}


def none_grid() -> list[dict]:
  return [_common("none")]


def stage1_grid(pairs: list[tuple[float, float]]) -> list[dict]:
  # The protocol's order: increasing content gap, then increasing strength.
  return [{**_common("stage1_only"), "benchmark.content_gap": (g,),
           "benchmark.strength": (s,)} for g, s in sorted(pairs)]


def run(grid: list[dict], workdir: str) -> list[experiments.Run]:
  runs = experiments.expand(_sweep(grid), workdir)
  experiments.run_sweep(runs, workdir, executor="inprocess")
  return runs


def collect(runs: list[experiments.Run]) -> dict[str, dict]:
  """Per setting (mode, class cue, gap, strength): the runs' test WA (%)."""
  out: dict[str, dict] = {}
  for r in runs:
    if not r.finished():
      continue
    res = results_lib.read_results(r.run_dir)
    b = r.config.benchmark
    # The protocol's class-cue knob was never built: (a) passed at today's
    # renderer, its 1.0.
    cue = 1.0
    mode = str(r.config.mode)
    key = (f"{mode},cue={cue:g}" if mode == "none" else
           f"{mode},cue={cue:g}," + pair_key(float(b.content_gap), float(b.strength)))
    row = out.setdefault(key, {"mode": mode, "class_cue": cue,
                               "content_gap": float(b.content_gap),
                               "strength": float(b.strength), "runs": []})
    row["runs"].append({"name": r.name, "bias_ratio": float(r.config.data.bias_ratio),
                        "seed": int(r.config.seed),
                        "val_wa": 100 * res["val"]["worst_group_acc"],
                        "test_wa": 100 * res["test"]["worst_group_acc"],
                        "test_ba": 100 * res["test"]["balanced_acc"]})
  return out


def summarize(row: dict) -> dict:
  """``row`` with the mean and sample std (ddof=1, as every report) of its runs."""
  wa = aggregate.stat([x["test_wa"] for x in row["runs"]])
  ba = aggregate.stat([x["test_ba"] for x in row["runs"]])
  return {**row, "n": wa.n, "mean_wa": wa.mean, "std_wa": wa.std or 0.0,
          "mean_ba": ba.mean}


def in_band(value: float, target: float) -> bool:
  return abs(value - target) <= BAND


def choose(stage1_rows: list[dict], key: str = "mean_wa"
           ) -> tuple[dict | None, bool]:
  """The protocol's step 5: ``(row, passed)``; rows are complete settings."""
  if not stage1_rows:
    return None, False
  passing = [r for r in stage1_rows if in_band(r[key], STAGE1_TARGET)]
  pool = passing or stage1_rows
  best = min(abs(r[key] - STAGE1_TARGET) for r in pool)
  near = [r for r in pool if abs(r[key] - STAGE1_TARGET) <= best + TIE]
  return min(near, key=lambda r: (r["content_gap"], r["strength"])), bool(passing)


def upstream_rows() -> list[dict]:
  """Step 1 from the shipped record: held-out accuracy at 10 and 20 epochs.

  Training is deterministic with a constant learning rate, so epoch 10 of the
  20-epoch run is the 10-epoch run.
  """
  record = _load(upstream.metadata_path(demo.UPSTREAM_WEIGHTS))
  return [{"epochs": h["epoch"], "held_out_accuracy": h["held_out_accuracy"]}
          for h in record.get("history", []) if h["epoch"] in (10, 20, 40, 80)]


def table(record: dict) -> str:
  lines = ["| step | class_cue | content_gap | strength | (a) none WA | (b) stage1_only WA "
           "| (c) probe | passes |", "|---|---|---|---|---|---|---|---|"]
  for u in upstream_rows():
    lines.append(f"| 1 (upstream, {u['epochs']} epochs) | - | - | - | - | - | - | "
                 f"held-out {u['held_out_accuracy']:.3f} "
                 f"({'>=' if u['held_out_accuracy'] >= 0.1 else '<'} 0.10) |")
  for row in sorted(record.get("runs", {}).values(), key=lambda r: r["mode"] != "none"):
    if row["mode"] == "none":
      ok = in_band(row["mean_wa"], NONE_TARGET)
      lines.append(f"| 2 | {row['class_cue']:g} | - | - | {row['mean_wa']:.1f} +- "
                   f"{row['std_wa']:.1f} (n={row['n']}) | | | (a) {'yes' if ok else 'no'} |")
  probes = record.get("probe", {})
  stage1 = {pair_key(r["content_gap"], r["strength"]): r
            for r in record.get("runs", {}).values() if r["mode"] == "stage1_only"}
  for g in CONTENT_GAPS:
    for s in STRENGTHS:
      key = pair_key(g, s)
      p = probes.get(key)
      row = stage1.get(key)
      b = (f"{row['mean_wa']:.1f} +- {row['std_wa']:.1f} (n={row['n']})" if row else "")
      verdict = []
      if p is not None:
        verdict.append(f"(c) {'yes' if p >= PROBE_MIN else 'no'}")
      if row:
        verdict.append(f"(b) {'yes' if in_band(row['mean_wa'], STAGE1_TARGET) else 'no'}")
      lines.append(f"| 3-4 | | {g:g} | {s:g} | | {b} | "
                   f"{'' if p is None else f'{p:.3f}'} | {', '.join(verdict)} |")
  chosen = record.get("choice")
  if chosen:
    lines.append(f"| chosen | {chosen['class_cue']:g} | {chosen['content_gap']:g} | "
                 f"{chosen['strength']:g} | | {chosen['mean_wa']:.1f} | "
                 f"{probes.get(pair_key(chosen['content_gap'], chosen['strength']), float('nan')):.3f} | "
                 f"(b) {'yes' if chosen['passed'] else 'no (closest)'} |")
  return "\n".join(lines)


def val_recheck(record: dict, workdir: str) -> dict:
  """Steps 2 and 4 rerun; the rule on mean val WA; reproduction of test WA."""
  probes = record.get("probe", {})
  pairs = [(g, s) for g in CONTENT_GAPS for s in STRENGTHS
           if probes.get(pair_key(g, s), 0.0) >= PROBE_MIN]
  rows = collect(run(none_grid() + stage1_grid(pairs),
                     os.path.join(workdir, "val_recheck")))
  for row in rows.values():
    row["mean_val_wa"] = aggregate.stat([x["val_wa"] for x in row["runs"]]).mean
  recorded = {x["name"]: x["test_wa"] for r in record.get("runs", {}).values()
              for x in r["runs"]}
  same = [recorded[x["name"]] == x["test_wa"] for r in rows.values()
          for x in r["runs"] if x["name"] in recorded]
  rows = {k: summarize(r) for k, r in rows.items()}
  stage1 = [r for r in rows.values() if r["mode"] == "stage1_only"]
  on_val, passed = choose(stage1, "mean_val_wa")
  on_test, _ = choose(stage1)
  none = next(r for r in rows.values() if r["mode"] == "none")
  return {
      "runs": rows, "test_wa_as_recorded": f"{sum(same)} of {len(same)}",
      "none_mean_val_wa": none["mean_val_wa"],
      "none_passes_on_val": in_band(none["mean_val_wa"], NONE_TARGET),
      "choice_on_val": {k: on_val[k] for k in ("content_gap", "strength",
                                               "mean_val_wa")} | {"passed": passed},
      "choice_on_test_of_rerun": {k: on_test[k] for k in ("content_gap",
                                                          "strength", "mean_wa")},
      "machine": {"cpu": platform.processor() or platform.machine(),
                  "python": platform.python_version()},
  }


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("step", choices=("probe", "none", "stage1_only", "table",
                                  "val_recheck"))
  p.add_argument("--workdir", default="/tmp/ffr_calibration")
  p.add_argument("--out", default=OUT)
  args = p.parse_args(argv)
  record = _load(args.out)
  record.setdefault("protocol", {
      "ratios": RATIOS, "seeds": SEEDS, "content_gaps": CONTENT_GAPS,
      "strengths": STRENGTHS, "none_target": NONE_TARGET,
      "stage1_target": STAGE1_TARGET, "band": BAND, "probe_min": PROBE_MIN,
      "config": "configs/demo.py", "tie": TIE})
  record["upstream"] = upstream_rows()
  runs = record.setdefault("runs", {})
  if args.step == "probe":
    probes = record.setdefault("probe", {})
    for g in CONTENT_GAPS:
      for s in STRENGTHS:
        probes[pair_key(g, s)] = probe_accuracy(g, s)
        print(f"probe {pair_key(g, s)}: {probes[pair_key(g, s)]:.3f}", flush=True)
  elif args.step == "none":
    runs.update(collect(run(none_grid(), os.path.join(args.workdir, "none"))))
  elif args.step == "stage1_only":
    probes = record.get("probe", {})
    if len(probes) < len(CONTENT_GAPS) * len(STRENGTHS):
      sys.exit("error: run the probe step first (step 3 before step 4).")
    pairs = [(g, s) for g in CONTENT_GAPS for s in STRENGTHS
             if probes[pair_key(g, s)] >= PROBE_MIN]
    runs.update(collect(run(stage1_grid(pairs), os.path.join(args.workdir, "stage1_only"))))
  elif args.step == "val_recheck":
    record["val_recheck"] = val_recheck(record, args.workdir)
    print(json.dumps({k: v for k, v in record["val_recheck"].items()
                      if k != "runs"}, indent=1))
  # Means and stds are derived from the runs every time, never edited.
  record["runs"] = runs = {k: summarize(r) for k, r in runs.items()}
  stage1 = [r for r in runs.values()
            if r["mode"] == "stage1_only" and r["n"] == len(RATIOS) * len(SEEDS)]
  chosen, passed = choose(stage1)
  record["choice"] = None if chosen is None else {
      k: chosen[k] for k in ("class_cue", "content_gap", "strength", "mean_wa")} | {"passed": passed}
  _save(record, args.out)
  print(table(record))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
