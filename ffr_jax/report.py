"""Tables, figures and the claims' tests of the paper from a sweep's results.

    python -m ffr_jax.report --workdir=DIR [--sweep=configs/sweeps/X.py:arg]
    python -m ffr_jax.report --runs=DIR/runs.jsonl --out=OUT

From a workdir it reads every ``results.json``, writes ``DIR/runs.jsonl``
(one object per run) and the report; from ``--runs`` it rebuilds the same
report from that file alone (:mod:`ffr_jax.reporting.paper_report`).
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from ffr_jax import cli
from ffr_jax import config as config_lib
from ffr_jax.reporting import aggregate
from ffr_jax.reporting import paper_report

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Folder searched for results.json files.")
_RUNS = flags.DEFINE_string("runs", None, "A runs.jsonl to report on instead.")
_SWEEP = flags.DEFINE_string(
    "sweep", "", "The sweep config the workdir ran: its `planned` count of grid "
    "dicts labels runs planned or extension ('': all planned), its "
    "`controls` the control runs.")
_GRID = flags.DEFINE_enum(
    "grid", "", ["", "planned"], "'planned': report only the planned grid's "
    "runs ('': every run).")
_COMPLETE = flags.DEFINE_bool(
    "complete_seeds", False, "Report a cell only at the seeds every one of its "
    "candidate settings ran (for a sweep stopped before its end).")
_OUT = flags.DEFINE_string("out", "", "Output folder ('': {workdir}/report).")
_TITLE = flags.DEFINE_string("title", "Results", "The report's heading.")
_PREAMBLE = flags.DEFINE_string(
    "preamble", "", "Markdown placed under the heading (e.g. the command).")


def planned_runs(sweep_path: str) -> set[str] | None:
  """Names of the runs of the sweep's planned grid dicts (None: all planned)."""
  from ffr_jax import experiments  # pylint: disable=g-import-not-at-top
  sweep = config_lib.load_config_file(sweep_path)
  planned = sweep.get("planned")
  if planned is None:
    return None
  unnamed = tuple(sweep.get("unnamed", ()))
  return {experiments.run_name({k: v for k, v in a.items() if k not in unnamed})
          for a in experiments.expand_grid(sweep.grid[:planned])}


def control_of(sweep_path: str):
  """A record's control name by the sweep's ``controls`` ((name, settings))."""
  controls = config_lib.load_config_file(sweep_path).get("controls", ())
  return lambda r: next((name for name, settings in controls if all(
      r.settings.get(k) == v for k, v in settings)), "")


def main(argv: list[str]) -> None:
  del argv
  if bool(_WORKDIR.value) == bool(_RUNS.value):
    raise ValueError("Give exactly one of --workdir (a sweep's folder) and "
                     "--runs (a runs.jsonl).")
  if _RUNS.value:
    records = aggregate.load_runs(_RUNS.value)
    out = os.path.abspath(_OUT.value or os.path.join(
        os.path.dirname(os.path.abspath(_RUNS.value)), "report"))
  else:
    workdir = os.path.abspath(_WORKDIR.value)
    records = aggregate.load_records(workdir)
    if not records:
      raise FileNotFoundError(f"No results.json under {workdir}; train runs "
                              "with ffr_jax.main or ffr_jax.sweep first.")
    planned = planned_runs(_SWEEP.value) if _SWEEP.value else None
    if planned is not None:  # paths are runs/{name}
      records = [dataclasses.replace(r, grid="planned" if r.path.split(
          os.sep, 1)[-1] in planned else "extension") for r in records]
    if _SWEEP.value:
      control = control_of(_SWEEP.value)
      records = [dataclasses.replace(r, control=control(r)) for r in records]
    aggregate.write_runs(records, os.path.join(workdir, "runs.jsonl"))
    out = os.path.abspath(_OUT.value or os.path.join(workdir, "report"))
  if _GRID.value:
    records = [r for r in records if r.grid == _GRID.value]
  if _COMPLETE.value:
    records = aggregate.complete_seeds(records)
  paper_report.write_report(records, out, _TITLE.value, _PREAMBLE.value)
  print(f"{len(records)} runs -> {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  cli.run(main)
