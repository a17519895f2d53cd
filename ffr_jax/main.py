"""Train and evaluate FFR and its baselines.

    python -m ffr_jax.main --config=configs/spuco.py --workdir=DIR \\
        [--config.mode=ffr --config.method=groupdro --config.data.root=...]

One mode and one method write ``DIR/results.json``. Comma-separated lists
(``--config.mode=none,usb,asb,ffr``) run every combination as a sweep, in this
process, in the sweep layout (``DIR/runs/mode=.../method=.../``) and print a
summary table. ``--config=configs/demo.py`` runs the whole pipeline on the
built-in, download-free benchmark. Rerunning the same command resumes; a
SIGTERM or Ctrl-C stops after the current step with a checkpoint.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from ffr_jax import cli
from ffr_jax import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file (append :arg for variants).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  config_flag = flags.FLAGS["config"]
  result = experiments.train_command(
      _CONFIG.value, _WORKDIR.value,
      config_path=config_flags.get_config_filename(config_flag),
      overrides=config_flags.get_override_values(config_flag))
  print(result.table)
  sys.stdout.flush()
  if result.failed:
    cli.fail(f"{len(result.failed)} run(s) failed ({', '.join(result.failed)});"
             " their errors are above; rerun to retry them.", code=1)


if __name__ == "__main__":
  cli.run(main)
