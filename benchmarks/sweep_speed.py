"""Seconds per run of a block of a sweep, one pinned shard per core, numbers checked.

    python benchmarks/sweep_speed.py [--cores=0,1] [--repo=DIR] [--label=L]
    python benchmarks/sweep_speed.py --step=prepare --workdir=W  # then --step=time

Prepares the block's data in a fresh workdir (untimed), then runs the sweep as
one in-process shard per listed core (``taskset -c``, so XLA runs one thread
per shard) and times the whole. Every finished run is compared with the
recorded run of the same name in ``--runs`` (val WA, test WA, BA, selected
epoch): a speed change must leave all of them equal. ``--repo`` times another
checkout's code (for a baseline beside the current code, one core each).
Prints a table and appends a record to benchmarks/results/sweep_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The second verdict's runs at bias 99%, seed 101 but JTT and AFR (78 runs:
# the ERM part at both benchmark conditions, the controls, GroupDRO,
# Resampling and DFR).
BLOCK = r"data.bias_ratio=0.99/mode=[^/]*/method=(erm|groupdro|resampling|dfr)/.*seed=101$"


def _sweep(args, *extra: str) -> list[str]:
  return [sys.executable, "-m", "ffr_jax.sweep", f"--config={args.sweep}",
          f"--workdir={args.workdir}", "--executor=inprocess",
          f"--filter={args.filter}", *extra]


def _cpu() -> dict:
  """The CPU's model and vector flags: a number holds beside its baseline only."""
  info = {}
  if os.path.exists("/proc/cpuinfo"):
    for line in open("/proc/cpuinfo", encoding="utf-8"):
      key, _, value = (part.strip() for part in line.partition(":"))
      if key in ("model name", "flags") and key not in info:
        info[key] = value
  flags = [f for f in info.get("flags", "").split() if f.startswith(("avx", "amx", "fma"))]
  return {"model": info.get("model name", platform.processor()),
          "flags": " ".join(flags), "cores": os.cpu_count()}


def _shard_runs(workdir: str, i: int) -> int:
  """How many runs shard ``i`` trained (its summary line)."""
  for line in open(f"{workdir}.shard{i}.log", encoding="utf-8"):
    match = re.match(r"(\d+) run, ", line)
    if match:
      return int(match.group(1))
  return 0


def _compare(workdir: str, runs_file: str) -> dict:
  """How many finished runs equal their recorded numbers; the others by name."""
  recorded = {}
  if os.path.exists(runs_file):
    for line in open(runs_file, encoding="utf-8"):
      r = json.loads(line)
      recorded[r["run"]] = (r["val_wa"], r["test_wa"], r["test_ba"], r["selected_epoch"])
  out = {"finished": 0, "identical": 0, "differ": [], "not_recorded": [], "seconds": 0.0}
  for path in sorted(pathlib.Path(workdir, "runs").rglob("results.json")):
    name = str(path.parent.relative_to(workdir))
    r = json.loads(path.read_text())
    out["finished"] += 1
    out["seconds"] += r["wall_seconds"]
    got = (r["val"]["worst_group_acc"], r["test"]["worst_group_acc"],
           r["test"]["balanced_acc"], r["selected_epoch"])
    if name not in recorded:
      out["not_recorded"].append(name)
    elif got == recorded[name]:
      out["identical"] += 1
    else:
      out["differ"].append(name)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sweep", default="configs/sweeps/paper.py:verdict2")
  p.add_argument("--filter", default=BLOCK)
  p.add_argument("--cores", default="0", help="one pinned shard per core, e.g. 0,1")
  p.add_argument("--repo", default=str(ROOT), help="the checkout whose code runs")
  p.add_argument("--workdir", default="/tmp/sweep_speed")
  p.add_argument("--runs", default=str(ROOT / "docs/results/runs.jsonl"))
  p.add_argument("--label", default="")
  p.add_argument("--auto", action="store_true",
                 help="--shard=auto (units taken as shards get free), not i/n")
  p.add_argument("--step", choices=("all", "prepare", "time"), default="all",
                 help="prepare alone, or time a workdir prepared before (so two "
                      "timings side by side never overlap a preparation)")
  p.add_argument("--out", default=str(ROOT / "benchmarks/results/sweep_speed.json"))
  args = p.parse_args()
  args.workdir = os.path.abspath(args.workdir)
  repo = os.path.abspath(args.repo)
  cores = [c for c in args.cores.split(",") if c]
  if args.step != "time":
    shutil.rmtree(args.workdir, ignore_errors=True)
    # Data prepared first, untimed: rendering is the same for any code change.
    subprocess.run(_sweep(args, "--prepare"), cwd=repo, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.step == "prepare":
      return
  start = time.perf_counter()
  shards = []
  for i, core in enumerate(cores):
    which = "auto" if args.auto else f"{i}/{len(cores)}"
    cmd = ["taskset", "-c", core, *_sweep(args, f"--shard={which}")]
    log = open(f"{args.workdir}.shard{i}.log", "w", encoding="utf-8")
    shards.append((subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=log), log))
  ends = [None] * len(shards)
  while None in ends:  # each shard's own end: an idle core shows as a gap
    for i, (proc, log) in enumerate(shards):
      if ends[i] is None and proc.poll() is not None:
        log.close()
        ends[i] = round(time.perf_counter() - start, 1)
    time.sleep(0.2)
  wall = time.perf_counter() - start
  check = _compare(args.workdir, args.runs)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                          capture_output=True, text=True).stdout.strip()
  n = max(check["finished"], 1)
  record = {
      "label": args.label, "commit": commit, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "cpu": _cpu(), "cores": cores, "sweep": args.sweep, "filter": args.filter,
      "shard": "auto" if args.auto else "i/n", "wall_s": round(wall, 1), "shard_wall_s": ends, "runs": check["finished"],
      "shard_runs": [_shard_runs(args.workdir, i) for i in range(len(cores))],
      "s_per_run": round(wall / n, 2),
      "s_per_run_per_core": round(wall * len(cores) / n, 2),
      "run_seconds_mean": round(check["seconds"] / n, 2),
      "identical_to_record": check["identical"], "differ": check["differ"],
      "not_recorded": check["not_recorded"],
      "exit_codes": [proc.returncode for proc, _ in shards]}
  print("| label | commit | cores | runs | wall s | s/run | s/run per core | identical |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.label} | {commit} | {','.join(cores)} | {check['finished']} | "
        f"{record['wall_s']} | {record['s_per_run']} | {record['s_per_run_per_core']} | "
        f"{check['identical']} of {check['finished']} |")
  history = json.loads(pathlib.Path(args.out).read_text()) if os.path.exists(args.out) else []
  history.append(record)
  pathlib.Path(args.out).write_text(json.dumps(history, indent=1) + "\n")
  if any(record["exit_codes"]) or check["differ"]:
    sys.exit(1)


if __name__ == "__main__":
  main()
