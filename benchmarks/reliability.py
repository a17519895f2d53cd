"""Bad inputs and faults, tried as a user would: what each command answers.

    python benchmarks/reliability.py [--out benchmarks/results/reliability.json]

Runs each case as a subprocess from the repository root, records its exit
code, the lines it printed on stderr (whether a traceback appeared) and what
was left in the workdir, prints a markdown table and writes JSON. The cases
that train use the demo's smoke config; the whole table takes a few minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "configs/demo.py:smoke"


def _main(workdir, *overrides, config=SMOKE):
  return [sys.executable, "-m", "ffr_jax.main", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def _cases(tmp: pathlib.Path) -> list[tuple[str, list[str], pathlib.Path | None]]:
  """(what, command, workdir to inspect)."""
  a_file = tmp / "a_file"
  a_file.write_text("not a folder")
  w = lambda name: tmp / name  # noqa: E731
  return [
      ("misspelled config key", _main(w("k"), "--config.train.lrr=1"), w("k")),
      ("bias ratio 1.5", _main(w("b"), "--config.data.bias_ratio=1.5"), w("b")),
      ("unknown mode", _main(w("m"), "--config.mode=mixup"), w("m")),
      ("unknown method in a list", _main(w("l"), "--config.method=erm,jtt"),
       w("l")),
      ("value of the wrong type", _main(w("t"), "--config.train.lr=abc"), w("t")),
      ("zero epochs", _main(w("e"), "--config.train.epochs=0"), w("e")),
      ("missing config file", _main(w("c"), config="configs/nope.py"), w("c")),
      ("unknown config arg", _main(w("a"), config="configs/demo.py:smok"), w("a")),
      ("workdir is a file", _main(a_file), None),
      ("real dataset without data.root",
       _main(w("r"), config="configs/spuco.py:smoke"), w("r")),
      ("data.root that does not exist",
       _main(w("d"), f"--config.data.root={tmp / 'nowhere'}",
             config="configs/spuco.py:smoke"), w("d")),
      ("pretrained weights that do not exist",
       _main(w("p"), "--config.model.pretrained=/no/such.safetensors"), w("p")),
      ("report of an empty folder",
       [sys.executable, "-m", "ffr_jax.report", f"--workdir={tmp / 'empty'}"],
       None),
      ("analyze of a folder without runs",
       [sys.executable, "-m", "ffr_jax.analyze", "embeddings",
        f"--workdir={tmp}"], None),
      ("data summary, unknown dataset",
       [sys.executable, "-m", "ffr_jax.data_summary", "--config=configs/spuco.py",
        "--config.data.name=nope", "--config.data.root=/x"], None),
      ("generate --verify of a never generated folder",
       [sys.executable, "-m", "ffr_jax.generate", f"--config={SMOKE}",
        f"--workdir={w('g')}", "--verify"], w("g")),
      ("sweep with a bad --filter",
       [sys.executable, "-m", "ffr_jax.sweep",
        "--config=configs/sweeps/paper.py:smoke", f"--workdir={w('s')}",
        "--list", "--filter=("], None),
  ]


def _left(workdir: pathlib.Path | None) -> str:
  if workdir is None:
    return "-"
  if not workdir.exists():
    return "nothing written"
  files = [p for p in workdir.rglob("*") if p.is_file()]
  return f"{len(files)} file(s)"


def run_case(what, cmd, workdir) -> dict:
  start = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ))
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error: ")]
  return {"case": what, "exit_code": proc.returncode,
          "stderr_lines": len(lines), "traceback": "Traceback" in proc.stderr,
          "message": (errors or lines or [""])[-1][:300],
          "left": _left(workdir), "seconds": round(time.time() - start, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                           "reliability.json"))
  args = parser.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="ffr_reliability_"))
  try:
    (tmp / "empty").mkdir()
    rows = [run_case(*c) for c in _cases(tmp)]
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print("| case | exit | stderr lines | traceback | what the user sees | workdir |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    msg = r["message"].replace("|", "\\|")
    print(f"| {r['case']} | {r['exit_code']} | {r['stderr_lines']} | "
          f"{'yes' if r['traceback'] else 'no'} | {msg} | {r['left']} |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": platform.platform(), "python": sys.version.split()[0],
               "rows": rows}, f, indent=2)
  print(f"\nWrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
