"""Tables and figures of the paper from a sweep's results.

    python -m ffr_jax.report --workdir=DIR [--out=DIR/report] [--title=...]

Scans every ``results.json`` under ``--workdir`` (a sweep, or runs), selects hyperparameters per cell by mean
validation worst-group accuracy over seeds, and writes ``report.md`` with
Figures 3 and 4 (PNG + table) and Tables 1-3 into ``--out``. See
:mod:`ffr_jax.reporting.paper_report` for what each holds.
"""

from __future__ import annotations

import os

from absl import flags

from ffr_jax import cli
from ffr_jax.reporting import aggregate
from ffr_jax.reporting import paper_report

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Folder searched for results.json files.")
_OUT = flags.DEFINE_string("out", "", "Output folder ('': {workdir}/report).")
_TITLE = flags.DEFINE_string("title", "Results", "The report's heading.")
_PREAMBLE = flags.DEFINE_string(
    "preamble", "", "Markdown placed under the heading (e.g. the command).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  records = aggregate.load_records(workdir)
  if not records:
    raise FileNotFoundError(f"No results.json under {workdir}; train runs "
                            "with ffr_jax.main or ffr_jax.sweep first.")
  out = os.path.abspath(_OUT.value or os.path.join(workdir, "report"))
  paper_report.write_report(records, out, _TITLE.value, _PREAMBLE.value)
  print(f"{len(records)} runs -> {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  cli.run(main)
